"""One training run's configuration: ``spec.training`` plus where to read and write.

A leaf of its own so that the loop (``loop.py``), the setup (``session.py``) and the latent cache
(``latent_cache.py``) all import it without importing each other."""

from __future__ import annotations

from pathlib import Path

from zthumb_contract.spec import TrainingSpec
from zthumb_contract.steps import LOGS_DIR


class TrainConfig(TrainingSpec):
    """One training run: the options of the LoRAFinetune's ``spec.training`` (declared once, in
    ``zthumb_contract.spec``), plus where to read and write."""

    run_dir: Path
    base_model: Path
    model_config_dir: Path | None = None  # diffusers configs beside a single-file checkpoint
    export_dir: Path | None = None
    run_name: str = "lora"
    base_model_sha256: str = ""
    trigger_word: str = ""
    # Not step arguments: knobs for tests and the benchmark.
    cache_latents: bool = True
    stop_after_step: int | None = None  # simulate a killed pod right after this step
    progress_bar: bool = True
    report_interval_seconds: float = 10.0
    # The loss is read back to the host (and progress.jsonl written) every N steps, at each
    # checkpoint and at the end; None: every step on a CPU (it costs nothing there), 10 on a GPU.
    log_every_steps: int | None = None
    compile_backend: str = "inductor"  # "aot_eager" exercises the compile path quickly on a CPU

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / LOGS_DIR
