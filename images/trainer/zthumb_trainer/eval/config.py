"""What the eval's modules share: one evaluation's configuration and one image it received.

A leaf of its own so that the eval's parts (``run.py``, ``clip.py``) import it without
importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zthumb_contract.eval_spec import EvalSpec
from zthumb_contract.scale_sweep import IN_DISTRIBUTION
from zthumb_contract.tracking_spec import TrackingSpec


class EvalConfig(EvalSpec):
    """One evaluation: the options of the LoRAFinetune's ``spec.eval`` (declared once, in
    ``zthumb_contract.eval_spec``), plus the server to ask and where to write."""

    server_url: str
    output: Path
    run_name: str
    lora_path: str
    trigger_word: str = ""
    train_summary: Path | None = None  # the train step's summary.json (its ``training`` block)
    # The scale the deploy stage serves (spec.deploy.loraScale): compared with the reference (the
    # first scale) by the CLIP numbers and the gate, and added to the scales when missing.
    served_scale: float | None = None
    # Where spec.eval.clip's weights and config files live (fetched here when missing).
    clip_model: Path | None = None
    clip_config: Path | None = None
    # spec.eval.dino's weights and config files, spec.eval.aesthetic's head (fetched when missing).
    dino_model: Path | None = None
    dino_config: Path | None = None
    aesthetic_model: Path | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    ready_timeout: float = 600.0
    request_timeout: float = 600.0
    api_key: str | None = None
    # spec.training.tracking: the report goes to the train step's MLflow run too (tracking_report.py).
    tracking: TrackingSpec = TrackingSpec()


@dataclass
class Sample:
    prompt_index: int
    prompt: str
    seed: int
    scale: float
    image: Any  # PIL.Image.Image
    latency_s: float
    response: dict[str, Any]
    group: str = IN_DISTRIBUTION  # zthumb_contract.scale_sweep: the prompt group it belongs to
    # Its per-image metrics ("clip_t", "clip_i", ...): the sweep averages every key per group and
    # scale, so a metric that writes one here shows in the report's tables and chart.
    scores: dict[str, float] = field(default_factory=dict)
