"""Which checkpoint a train step resumes from, decided before minutes of model loading.

* The newest checkpoint whose files are all there and match the sizes and SHA-256 digests its
  ``state.json`` records (``checkpoints.file_digests``, taken before ``state.json`` is written) wins.
  A newer one that fails the check (a truncated or garbage file, a file missing, an unreadable
  ``state.json``) is skipped with a warning naming it and the reason; when none is intact the run
  trains from step 0 (deterministic from the seed, so it reaches the same adapter) and the broken
  ones are replaced as the run writes the same step numbers again. A storage fault then costs
  compute, never a stuck run that needs someone to clean the volume by hand. ``zthumb-train
  export`` picks the newest intact checkpoint the same way (``newest_intact``).
* A checkpoint trained on another prepared dataset (its ``dataset_hash`` differs) is refused: the
  run directory belongs to the LoRAFinetune's name, so this means the data changed under a run, or
  a new run reuses an old name. Resuming would silently mix two datasets in one adapter, and
  restarting would overwrite the earlier run's checkpoints and, at the end, its served adapter,
  which nobody asked for.
* ``emaDecay`` turned on or off between attempts is allowed with a warning: an EMA the checkpoint
  lacks starts from the resumed weights (``restore_checkpoint``); one the run no longer wants is
  dropped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zthumb_trainer.train.checkpoints import DIGESTS_KEY, EMA_WEIGHTS, file_digest, list_checkpoints

log = logging.getLogger("zthumb_trainer.train")

# What a checkpoint written before digests were recorded must hold, at least.
_REQUIRED_FILES = ("adapter.safetensors", "lora_config.json", "optimizer.pt", "scheduler.pt", "rng.pt")


class DatasetChangedError(RuntimeError):
    """The newest intact checkpoint was trained on another prepared dataset."""


@dataclass(frozen=True)
class ResumePoint:
    step: int
    path: Path
    state: dict[str, Any]  # its state.json


def checkpoint_problem(path: Path, step: int) -> str | None:
    """Why the checkpoint at ``path`` cannot be resumed from, or None when it is intact."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"state.json unreadable ({error})"
    if not isinstance(state, dict) or state.get("step") != step:
        return f"state.json does not describe step {step}"
    recorded = state.get(DIGESTS_KEY)
    if recorded is None:  # written before digests were recorded: existence is all that can be checked
        missing = [name for name in _REQUIRED_FILES if not (path / name).is_file()]
        return f"missing {', '.join(missing)}" if missing else None
    if not isinstance(recorded, dict) or not recorded:
        return f"state.json's {DIGESTS_KEY!r} is not a map of file names"
    for name, expected in sorted(recorded.items()):
        file = path / name
        if "/" in name or not file.is_file():
            return f"missing {name}"
        if not isinstance(expected, dict) or file.stat().st_size != expected.get("bytes"):
            return f"{name} has {file.stat().st_size} bytes, the checkpoint recorded {expected!r}"
        if file_digest(file) != expected.get("sha256"):
            return f"{name} does not match its recorded SHA-256"
    return None


def newest_intact(directory: Path) -> ResumePoint | None:
    """The newest intact checkpoint under ``directory`` (damaged newer ones skipped with a warning)."""
    for step, path in reversed(list_checkpoints(directory)):
        problem = checkpoint_problem(path, step)
        if problem is None:
            return ResumePoint(step, path, json.loads((path / "state.json").read_text()))
        log.warning("skipping checkpoint %s: %s", path, problem)
    return None


def resume_point(directory: Path, dataset_hash: str) -> ResumePoint | None:
    """The checkpoint to resume from, None to train from step 0.

    Raises ``DatasetChangedError`` when it was trained on another prepared dataset."""
    point = newest_intact(directory)
    if point is None and list_checkpoints(directory):
        log.warning("no intact checkpoint in %s: training from step 0", directory)
    trained_on = point.state.get("dataset_hash") if point is not None else None
    if point is not None and trained_on is not None and trained_on != dataset_hash:
        raise DatasetChangedError(
            f"checkpoint {point.path} was trained on prepared dataset {trained_on}, but the dataset "
            f"prepared for this run is {dataset_hash}: resuming would mix two datasets in one "
            f"adapter. Restore spec.dataset's content, give the new training its own "
            f"metadata.name, or delete {directory} to train from step 0 on the new data."
        )
    return point


def warn_on_ema_change(point: ResumePoint, ema_decay: float | None) -> None:
    """Say so when the run's emaDecay and the checkpoint's EMA state disagree (see the docstring)."""
    has_ema = (point.path / EMA_WEIGHTS).exists()
    if ema_decay is not None and not has_ema:
        log.warning(
            "emaDecay %s is on but checkpoint %s has no EMA: the EMA starts from its weights at step %d",
            ema_decay, point.path, point.step,
        )  # fmt: skip
    elif ema_decay is None and has_ema:
        log.warning("emaDecay is off: checkpoint %s's EMA is dropped, the last weights export", point.path)
    elif has_ema and point.state.get("ema_decay") != ema_decay:
        log.warning(
            "emaDecay changed from %s to %s: the EMA of checkpoint %s continues with the new decay",
            point.state.get("ema_decay"), ema_decay, point.path,
        )  # fmt: skip
