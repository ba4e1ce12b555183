"""Export a trained LoRA to ``models/lora/<run>/`` for the server, diffusers and A1111/ComfyUI users.

The directory holds:

* ``pytorch_lora_weights.safetensors``: diffusers layout, what ``pipe.load_lora_weights(dir)``
  loads; the safetensors header carries the PEFT adapter config, so an alpha that
  differs from the rank survives the round trip;
* ``<run>.kohya.safetensors``: the kohya layout (``lora_unet_…lora_down/lora_up/alpha``)
  that A1111 and ComfyUI load; not for a DoRA adapter (diffusers' kohya converter has no
  mapping for PEFT's magnitude vectors and would write keys no loader reads), where
  ``adapter.json`` says why it is missing;
* ``adapter.json``: provenance (base model sha256, rank, alpha, trigger word, steps,
  dataset hash, time, whether the weights are an EMA and its decay, DoRA) and the sha256 of
  each weights file.

The export is written to a temporary sibling directory and renamed into place, so the
server never reads a half-written adapter; an older export is swapped out the same way.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zthumb_trainer.atomic import publish_directory, staging_directory

DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
ADAPTER_INFO = "adapter.json"
KOHYA_SUFFIX = ".kohya.safetensors"
# PEFT keys of each trainable component carry one of these prefixes in our checkpoints.
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class AdapterInfo:
    run_name: str
    base_model_sha256: str
    rank: int
    alpha: float
    trigger_word: str
    steps: int
    dataset_hash: str
    ema_decay: float | None = None  # set: the weights are the EMA with this decay, not the last step's

    @classmethod
    def of_run(cls, config: Any, dataset_hash: str) -> AdapterInfo:
        """What a finished run (a ``TrainConfig``) records about the adapter it exports."""
        return cls(
            run_name=config.run_name,
            base_model_sha256=config.base_model_sha256,
            rank=config.rank,
            alpha=config.alpha,
            trigger_word=config.trigger_word,
            steps=config.max_train_steps,
            dataset_hash=dataset_hash,
            ema_decay=config.ema_decay,
        )


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def split_components(peft_state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{"unet.x": t, "text_encoder.y": u}`` -> ``{"unet": {"x": t}, "text_encoder": {"y": u}}``."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in peft_state.items():
        component, rest = key.split(".", 1)
        if component not in COMPONENTS:
            raise ValueError(f"unexpected LoRA key {key!r}")
        parts.setdefault(component, {})[rest] = value
    return parts


def to_kohya(
    peft_parts: dict[str, dict[str, torch.Tensor]], alphas: dict[str, float]
) -> dict[str, torch.Tensor]:
    """The kohya layout, with each module's real alpha (diffusers' converter writes alpha = rank)."""
    from diffusers.utils import convert_state_dict_to_kohya

    prefixed = {
        f"{component}.{key}": value.detach().to("cpu", torch.float32)
        for component, state in peft_parts.items()
        for key, value in state.items()
    }
    kohya = convert_state_dict_to_kohya(prefixed)
    prefix_alpha = {"lora_unet": alphas.get("unet"), "lora_te1": alphas.get("text_encoder")}
    prefix_alpha["lora_te2"] = alphas.get("text_encoder_2")
    for key in list(kohya):
        if key.endswith(".alpha"):
            alpha = prefix_alpha.get(key.split("_", 2)[0] + "_" + key.split("_", 2)[1])
            if alpha is not None:
                kohya[key] = torch.tensor(float(alpha))
    return {key: value.contiguous() for key, value in kohya.items()}


def export_adapter(
    export_dir: Path,
    peft_state: dict[str, torch.Tensor],
    lora_configs: dict[str, dict[str, Any]],
    info: AdapterInfo,
) -> Path:
    """Write the adapter directory for ``peft_state`` (PEFT keys prefixed by component)."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from safetensors.torch import save_file

    parts = split_components(peft_state)
    if "unet" not in parts:
        raise ValueError("no UNet LoRA weights to export")
    staging = staging_directory(export_dir, "tmp")

    def diffusers_layers(component: str) -> dict[str, torch.Tensor] | None:
        state = parts.get(component)
        if not state:
            return None
        cpu = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in state.items()}
        return convert_state_dict_to_diffusers(cpu)

    def metadata(component: str) -> dict[str, Any] | None:
        return _json_safe(lora_configs[component]) if component in parts else None

    StableDiffusionXLPipeline.save_lora_weights(
        staging,
        unet_lora_layers=diffusers_layers("unet"),
        text_encoder_lora_layers=diffusers_layers("text_encoder"),
        text_encoder_2_lora_layers=diffusers_layers("text_encoder_2"),
        unet_lora_adapter_metadata=metadata("unet"),
        text_encoder_lora_adapter_metadata=metadata("text_encoder"),
        text_encoder_2_lora_adapter_metadata=metadata("text_encoder_2"),
        safe_serialization=True,
    )
    files = {DIFFUSERS_WEIGHTS: _file_sha256(staging / DIFFUSERS_WEIGHTS)}
    dora = any(config.get("use_dora") for config in lora_configs.values())
    if not dora:
        alphas = {component: float(config["lora_alpha"]) for component, config in lora_configs.items()}
        kohya_name = f"{info.run_name}{KOHYA_SUFFIX}"
        save_file(
            to_kohya(parts, alphas),
            str(staging / kohya_name),
            metadata={"ss_network_dim": str(info.rank), "ss_network_alpha": str(info.alpha)},
        )
        files[kohya_name] = _file_sha256(staging / kohya_name)
    adapter = {
        "run_name": info.run_name,
        "base_model_sha256": info.base_model_sha256,
        "rank": info.rank,
        "alpha": info.alpha,
        "trigger_word": info.trigger_word,
        "steps": info.steps,
        "dataset_hash": info.dataset_hash,
        "components": sorted(parts),
        "weights": "ema" if info.ema_decay is not None else "last_step",
        "ema_decay": info.ema_decay,
        "dora": dora,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
    }
    if dora:
        adapter["kohya_skipped"] = "DoRA: the kohya/A1111 layout is not written for DoRA adapters"
    (staging / ADAPTER_INFO).write_text(json.dumps(adapter, indent=2) + "\n")
    publish_directory(staging, export_dir)
    return export_dir


def _json_safe(config: dict[str, Any]) -> dict[str, Any]:
    """PEFT config dicts hold sets and enums; the safetensors header needs plain JSON."""
    return json.loads(
        json.dumps(config, default=lambda value: sorted(value) if isinstance(value, set) else str(value))
    )
