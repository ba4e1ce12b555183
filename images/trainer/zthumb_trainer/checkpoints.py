"""Checkpoints of a run: adapter, optimizer, LR scheduler, RNG and step, written to a temporary
name and renamed (a half-written one never counts), the last K kept."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_PREFIX = "step-"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first. Temporary names never match, so half-written ones lose."""
    found = []
    if directory.is_dir():
        for path in directory.iterdir():
            match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
            if match and (path / "state.json").exists():
                found.append((int(match.group(1)), path))
    return sorted(found)


def adapter_state(models: dict[str, Any]) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    state: dict[str, torch.Tensor] = {}
    for component, model in models.items():
        for key, value in get_peft_model_state_dict(model).items():
            state[f"{component}.{key}"] = value.detach().to("cpu", torch.float32).contiguous()
    return state


def lora_configs(models: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {component: model.peft_config["default"].to_dict() for component, model in models.items()}


def save_checkpoint(
    directory: Path,
    step: int,
    *,
    models: dict[str, Any],
    optimizer: Any,
    lr_scheduler: Any,
    noise_generator: torch.Generator,
    state: dict[str, Any],
    keep: int,
) -> Path:
    from safetensors.torch import save_file

    from zthumb_trainer.export import _json_safe

    target = directory / f"{CHECKPOINT_PREFIX}{step}"
    staging = directory / f".tmp-{CHECKPOINT_PREFIX}{step}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(adapter_state(models), str(staging / "adapter.safetensors"))
    (staging / "lora_config.json").write_text(
        json.dumps({name: _json_safe(config) for name, config in lora_configs(models).items()})
    )
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    torch.save(lr_scheduler.state_dict(), staging / "scheduler.pt")
    rng = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "noise": noise_generator.get_state(),
    }
    torch.save(rng, staging / "rng.pt")
    # state.json last: its presence is what makes a checkpoint complete.
    (staging / "state.json").write_text(json.dumps({"step": step, **state}))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    for _, old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def restore_checkpoint(
    path: Path, models: dict[str, Any], optimizer: Any, lr_scheduler: Any, noise_generator: torch.Generator
) -> dict[str, Any]:
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    from zthumb_trainer.export import split_components

    parts = split_components(load_file(str(path / "adapter.safetensors")))
    for component, model in models.items():
        result = set_peft_model_state_dict(model, parts.get(component, {}))
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise RuntimeError(f"{path}: unexpected LoRA keys for {component}: {unexpected[:5]}")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    lr_scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = torch.load(path / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    noise_generator.set_state(rng["noise"])
    state: dict[str, Any] = json.loads((path / "state.json").read_text())
    return state
