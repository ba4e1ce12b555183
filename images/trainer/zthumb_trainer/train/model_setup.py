"""Getting the SDXL parts ready to train: precision, LoRA layers, compile, device copies."""

from __future__ import annotations

import logging
from typing import Any

import torch

from zthumb_trainer.train.components import Components

log = logging.getLogger("zthumb_trainer.train")

UNET_TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj"]


def effective_precision(requested: str) -> str:
    if requested == "fp16" and not torch.cuda.is_available():
        log.warning("fp16 mixed precision needs a GPU; training in fp32 on this CPU")
        return "no"
    return requested


def compile_unet(unet: Any, *, backend: str, scope: str = "blocks", mode: str = "default") -> int:
    """torch.compile of the UNet in place (``spec.training.compileScope`` / ``compileMode``).

    ``blocks``: each of the UNet's repeated transformer blocks. They hold almost all its kernels
    (attention with the LoRA layers, feed-forward, norms); compiling the class once and reusing the
    code for its 70 instances takes a fraction of a whole-UNet compile. ``unet``: the whole UNet as
    one graph, so the ResNets and samplers between the blocks stop launching kernels one by one.
    Module names and state-dict keys are unchanged either way. Returns the count of compiled
    modules. ``mode`` is inductor's; other backends (``aot_eager`` in tests) take none.
    """
    options: dict[str, Any] = {"backend": backend}
    if backend == "inductor" and mode != "default":
        options["mode"] = mode
    if scope == "unet":
        unet.compile(**options)
        return 1
    compiled = 0
    for module in unet.modules():
        if type(module).__name__ == "BasicTransformerBlock":
            module.compile(**options)
            compiled += 1
    return compiled


def uses_cuda_graphs(mode: str, device: torch.device) -> bool:
    """Whether compiled graphs replay as CUDA graphs, which need each training step marked."""
    return device.type == "cuda" and mode == "reduce-overhead"


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host to device without a synchronisation: through pinned memory on CUDA."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def add_lora(
    components: Components, *, rank: int, alpha: float, use_dora: bool, text_encoders: bool
) -> dict[str, Any]:
    """LoRA layers on the UNet (and both text encoders when they train): the trainable models by name."""
    from peft import LoraConfig, inject_adapter_in_model

    def lora_config(targets: list[str]) -> LoraConfig:
        return LoraConfig(
            r=rank,
            lora_alpha=alpha,  # type: ignore[arg-type]  # PEFT scales by alpha / r; a float is fine
            init_lora_weights="gaussian",
            target_modules=targets,
            use_dora=use_dora,
        )

    components.unet.add_adapter(lora_config(UNET_TARGET_MODULES))
    models = {"unet": components.unet}
    if text_encoders:
        for name in ("text_encoder", "text_encoder_2"):
            encoder = getattr(components, name)
            # transformers' own add_adapter wants peft >= 0.22; PEFT's injector works with the pinned 0.21
            # and leaves the same ``peft_config`` attribute behind for get_peft_model_state_dict.
            inject_adapter_in_model(lora_config(TEXT_ENCODER_TARGET_MODULES), encoder)
            models[name] = encoder
    return models
