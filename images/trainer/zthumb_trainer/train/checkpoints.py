"""Checkpoints of a run: adapter (and its EMA when on), optimizer, LR scheduler, RNG and step,
written to a temporary name and renamed (a half-written one never counts), the last K kept."""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from zthumb_trainer.atomic import publish_directory, staging_directory

if TYPE_CHECKING:
    from zthumb_trainer.train.optim import LoraEma

CHECKPOINT_PREFIX = "step-"
# In a checkpoint beside adapter.safetensors when emaDecay is set: the EMA in the same (PEFT) layout.
EMA_WEIGHTS = "ema.safetensors"
# In state.json: {file name: {"bytes", "sha256"}} of every other file, so that a resumed run can
# tell a truncated or damaged checkpoint from an intact one (resume.py).
DIGESTS_KEY = "files"


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
            # A copy even on a CPU (where .to() would alias the live parameters): a snapshot, which
            # the EMA export (taken while the parameters hold the EMA, then swapped back) relies on.
            state[f"{component}.{key}"] = value.detach().to("cpu", torch.float32, copy=True).contiguous()
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
    ema: LoraEma | None = None,
) -> Path:
    from safetensors.torch import save_file

    from zthumb_trainer.export.adapter import _json_safe

    target = directory / f"{CHECKPOINT_PREFIX}{step}"
    staging = staging_directory(target, "tmp")
    save_file(adapter_state(models), str(staging / "adapter.safetensors"))
    if ema is not None:
        with ema.applied():
            save_file(adapter_state(models), str(staging / EMA_WEIGHTS))
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
    digests = {DIGESTS_KEY: file_digests(staging)}
    (staging / "state.json").write_text(json.dumps({"step": step, **state, **digests}))
    publish_directory(staging, target)
    # The last K up to this step: a newer one is a damaged checkpoint this run resumed past (resume.py),
    # which it replaces on reaching that step; counting it would delete the fresh ones instead.
    for _, old in [(at, path) for at, path in list_checkpoints(directory) if at <= step][:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def file_digest(file: Path) -> str:
    with file.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def file_digests(directory: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of each file in a staged checkpoint (state.json is written after)."""
    return {
        file.name: {"bytes": file.stat().st_size, "sha256": file_digest(file)}
        for file in sorted(directory.iterdir())
        if file.is_file()
    }


def _load_adapter(file: Path, models: dict[str, Any]) -> None:
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    from zthumb_trainer.export.adapter import split_components

    parts = split_components(load_file(str(file)))
    for component, model in models.items():
        result = set_peft_model_state_dict(model, parts.get(component, {}))
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise RuntimeError(f"{file}: unexpected LoRA keys for {component}: {unexpected[:5]}")


def restore_checkpoint(  # noqa: PLR0917 - each piece of state a checkpoint restores
    path: Path,
    models: dict[str, Any],
    optimizer: Any,
    lr_scheduler: Any,
    noise_generator: torch.Generator,
    ema: LoraEma | None = None,
) -> dict[str, Any]:
    if ema is not None:
        # Into the shadow through the parameters (lossless: both fp32); a checkpoint without EMA
        # weights restarts the EMA from the resumed weights.
        has_ema = (path / EMA_WEIGHTS).exists()
        _load_adapter(path / (EMA_WEIGHTS if has_ema else "adapter.safetensors"), models)
        ema.capture()
    _load_adapter(path / "adapter.safetensors", models)
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
