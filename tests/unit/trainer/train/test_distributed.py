"""Multi-process training on the CPU (gloo).

Two processes with batch 1 each against one process with batch 2, from the same seed: the same
data order (each global batch of 2 is split between the ranks), the same noise (every rank draws
the global batch's noise from one generator state and keeps its rows), gradients averaged by DDP
where one process averages in its loss. Only rank 0 writes, and a run killed after a checkpoint
resumes with the same world size (one TensorBoard event file per launch: rank 0's).

Tolerance: the two runs do the same arithmetic in a different order (a batch-2 forward against two
batch-1 forwards, DDP's all-reduce against the loss's mean), so fp32 results differ by rounding.
Measured on the tiny model: losses agree to 1e-7 relative and the exported adapters to 9e-7 absolute
(weights up to 1.15) after 4 AdamW steps. The test allows 1e-5 for both, ten times that. A wrong data
order, wrong noise or a missing gradient average changes the losses in the first or second digit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from zthumb_trainer.dataset.prepare import prepare_dataset
from zthumb_trainer.export.adapter import DIFFUSERS_WEIGHTS
from zthumb_trainer.train.config import TrainConfig
from zthumb_trainer.train.loop import list_checkpoints, run_training

WORKER = """
import json, os, sys
from pathlib import Path

import zthumb_trainer.export.adapter as export
import zthumb_trainer.reporting as reporting
import zthumb_trainer.train.loop as train
import zthumb_trainer.train.config as train_config

rank = int(os.environ["RANK"])
calls = []


def recorded(name, function):
    def wrapper(*args, **kwargs):
        calls.append(name)
        return function(*args, **kwargs)

    return wrapper


train.save_checkpoint = recorded("checkpoint", train.save_checkpoint)
train.write_termination_message = recorded("termination", train.write_termination_message)
export.export_adapter = recorded("export", export.export_adapter)
reporting.ProgressLog.append = recorded("progress", reporting.ProgressLog.append)

values = json.loads(sys.argv[1])
for key in ("run_dir", "base_model", "model_config_dir", "export_dir"):
    values[key] = Path(values[key])
try:
    summary = train.run_training(train_config.TrainConfig(**values))
    code = 0
except train.TrainingInterrupted:
    summary, code = None, 3
Path(values["run_dir"], f"calls-{rank}.json").write_text(json.dumps({"calls": calls, "summary": summary}))
sys.exit(code)
"""


def _config_values(run_dir: Path, tiny_model, **overrides) -> dict:
    values = {
        "run_dir": str(run_dir),
        "base_model": str(tiny_model.single_file),
        "model_config_dir": str(tiny_model.diffusers_dir),
        "export_dir": str(run_dir / "export"),
        "run_name": "run",
        "rank": 4,
        "alpha": 4.0,
        "learning_rate": 1e-3,
        "max_train_steps": 4,
        "batch_size": 1,
        "mixed_precision": "no",
        "gradient_checkpointing": False,
        "checkpointing_steps": 2,
        "snr_gamma": 5.0,
        "noise_offset": 0.05,
        # Per optimizer step, whatever the number of processes: the schedule and the choices.
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 1,
        "caption_dropout": 0.5,
        "random_flip": True,
        "progress_bar": False,
    }
    return values | overrides


def _launch(tmp_path: Path, values: dict) -> subprocess.CompletedProcess:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("LOCAL_RANK", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["--max_restarts=0", str(worker), json.dumps(values)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = (run_dir / "progress.jsonl").read_text().splitlines()
    return [(record["step"], record["loss"]) for record in map(json.loads, lines)]


def _rates(run_dir: Path) -> list[float]:
    return [json.loads(line)["lr"] for line in (run_dir / "progress.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_gloo_processes_train_like_one_with_the_global_batch_and_resume(tmp_path, tiny_model):
    from safetensors.torch import load_file

    prepared = tmp_path / "prepared"
    data = tmp_path / "data"
    from zthumb_trainer.tiny.synthetic_dataset import write_synthetic_dataset

    write_synthetic_dataset(data, count=6, size=(64, 64))
    prepare_dataset(data, prepared, resolution=64, trigger_word="zt")

    def fresh(name: str) -> Path:
        run_dir = tmp_path / name
        (run_dir / "dataset").parent.mkdir(parents=True)
        os.symlink(prepared / "dataset", run_dir / "dataset")
        return run_dir

    # One process, batch 2.
    single_dir = fresh("single")
    single = _config_values(single_dir, tiny_model, batch_size=2)
    for key in ("run_dir", "base_model", "model_config_dir", "export_dir"):
        single[key] = Path(single[key])
    run_training(TrainConfig(**single))

    # Two processes, batch 1 each: killed right after the step-2 checkpoint, then resumed.
    multi_dir = fresh("multi")
    killed = _launch(tmp_path, _config_values(multi_dir, tiny_model, stop_after_step=2))
    assert killed.returncode != 0, killed.stderr[-3000:]
    assert [step for step, _ in list_checkpoints(multi_dir / "checkpoints")] == [2]
    assert not (multi_dir / "export").exists()
    first = {rank: json.loads((multi_dir / f"calls-{rank}.json").read_text()) for rank in (0, 1)}
    assert first[1]["calls"] == []  # rank 1 wrote nothing
    assert first[0]["calls"].count("checkpoint") == 1 and first[0]["calls"].count("progress") == 2

    resumed = _launch(tmp_path, _config_values(multi_dir, tiny_model))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    second = {rank: json.loads((multi_dir / f"calls-{rank}.json").read_text()) for rank in (0, 1)}
    assert second[1]["calls"] == []
    assert {"export", "termination", "checkpoint", "progress"} <= set(second[0]["calls"])
    for rank in (0, 1):
        assert second[rank]["summary"]["resumed_from_step"] == 2
        assert second[rank]["summary"]["steps_this_run"] == 2

    # One TensorBoard event file per launch (rank 0's) and one loss point per step after the resume.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(list((multi_dir / "logs").glob("events.out.tfevents.*"))) == 2
    events = EventAccumulator(str(multi_dir / "logs"), size_guidance={"scalars": 0})
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3, 4]

    # The same trajectory: one progress line per step (rank 0's), losses equal within tolerance.
    single_losses, multi_losses = _losses(single_dir), _losses(multi_dir)
    assert [step for step, _ in multi_losses] == [1, 2, 3, 4]
    assert [step for step, _ in single_losses] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(single_losses, multi_losses, strict=True):
        assert b == pytest.approx(a, rel=1e-5)
    assert _rates(multi_dir) == _rates(single_dir) and _rates(single_dir)[0] == 0  # a warm-up step

    # The same adapter.
    a = load_file(str(single_dir / "export" / DIFFUSERS_WEIGHTS))
    b = load_file(str(multi_dir / "export" / DIFFUSERS_WEIGHTS))
    assert a.keys() == b.keys()
    largest = max((a[key] - b[key]).abs().max().item() for key in a)
    assert largest < 1e-5, largest
    # ... and training moved it: the comparison is not between two untrained adapters.
    assert any(b[key].abs().max().item() > 1e-3 for key in b if "lora_B" in key or "lora.up" in key)
    assert torch.isfinite(torch.tensor([loss for _, loss in multi_losses])).all()


@pytest.mark.slow
def test_two_processes_with_validation_samples_do_not_deadlock(tmp_path, tiny_model):
    """Rank 0 renders each pass while rank 1 waits at the barrier; both finish, one grid per pass."""
    data = tmp_path / "data"
    from zthumb_trainer.tiny.synthetic_dataset import write_synthetic_dataset

    write_synthetic_dataset(data, count=4, size=(64, 64))
    run_dir = tmp_path / "run"
    prepare_dataset(data, run_dir, resolution=64, trigger_word="zt")
    validation = {"prompts": ["zt"], "seeds": [0], "every_n_steps": 1, "steps": 2}
    values = _config_values(run_dir, tiny_model, max_train_steps=2, validation=validation)
    completed = _launch(tmp_path, values)
    assert completed.returncode == 0, completed.stderr[-3000:]
    index = json.loads((run_dir / "samples" / "samples.json").read_text())
    assert [entry["step"] for entry in index["passes"]] == [1, 2]
    assert sorted(path.name for path in (run_dir / "samples").iterdir()) == [
        "samples.json", "step-1.png", "step-2.png"]  # fmt: skip
    for rank in (0, 1):
        summary = json.loads((run_dir / f"calls-{rank}.json").read_text())["summary"]
        assert summary["validation"]["passes"] == 2
