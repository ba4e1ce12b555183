"""The tiny training run the trainer tests share: a prepared 64 px dataset copied into a run dir,
and a TrainConfig of 6 short steps with checkpoints every 2."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from zthumb_trainer.dataset.prepare import prepare_dataset
from zthumb_trainer.train.config import TrainConfig


def prepare_once(synthetic_dataset: Path, root: Path) -> Path:
    """The synthetic dataset prepared at 64 px; tests copy it with ``copy_into_run_dir``."""
    prepare_dataset(synthetic_dataset, root, resolution=64, trigger_word="zt")
    return root / "dataset"


def copy_into_run_dir(prepared: Path, root: Path) -> Path:
    directory = root / "outputs" / "lora" / "run"
    shutil.copytree(prepared, directory / "dataset")
    return directory


def tiny_config(run_dir: Path, tiny_model: Any, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "run_dir": run_dir,
        "base_model": tiny_model.single_file,
        "model_config_dir": tiny_model.diffusers_dir,
        "export_dir": run_dir.parent.parent.parent / "models" / "lora" / "run",
        "run_name": "run",
        "trigger_word": "zt",
        "rank": 4,
        "alpha": 8.0,
        "learning_rate": 5e-3,
        "max_train_steps": 6,
        "mixed_precision": "no",
        "gradient_checkpointing": False,
        "checkpointing_steps": 2,
        "checkpoints_total_limit": 2,
        "progress_bar": False,
    }
    values.update(overrides)
    return TrainConfig(**values)
