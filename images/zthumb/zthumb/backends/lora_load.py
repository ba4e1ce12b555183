"""How one adapter file's weights get into a pipeline: the fit check and injection (the keys converted
as diffusers converts them by ``lora_keys.py``).

``inject_lora`` is what ``load_lora_weights`` does, from weights already read.

Does the file fit the loaded pipeline? (No silent no-ops.)

diffusers loads only the LoRA keys whose prefix names a pipeline component (``unet.``,
``text_encoder.``, ``text_encoder_2.``) and logs, without failing, when a component gets none; a
LoRA for another architecture is then served as if it applied. ``check_matches`` compares the
module names the file addresses, converted as diffusers converts them, with the modules of the
UNet and both text encoders before anything is injected; ``AdapterCache._load_adapter`` then
counts the LoRA layers PEFT really created. A file that matches no layer, or only some, is
refused (``lora_no_match`` / ``lora_partial_match``) with how many layers matched.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, NamedTuple

from zthumb.backends.compiled import CompiledUNet
from zthumb.backends.lora_keys import COMPONENTS, peft_named

if TYPE_CHECKING:
    import torch

# The module a LoRA key belongs to is everything before its LoRA marker: ``.lora_A.`` (PEFT),
# ``.lora_magnitude_vector`` (DoRA), or in keys of another prefix, which are not converted,
# ``.lora.down.``, ``.lora_linear_layer.``, ``.lora_down.`` (kohya), ``_lora.down.``.
TEXT_ENCODER_PREFIXES = tuple(f"{component}." for component in COMPONENTS if component != "unet")
_LORA_MARKER = re.compile(r"[._]lora(?:_A|_B|_down|_up|\.down|\.up|_linear_layer|_magnitude_vector)(?:\.|$)")


class AdapterMismatchError(ValueError):
    """The file's LoRA layers do not (all) exist in the loaded model."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _module_of(key: str) -> str | None:
    match = _LORA_MARKER.search(key)
    return key[: match.start()] if match else None


def lora_modules(pipe: Any, state_dict: dict[str, Any]) -> dict[str, set[str]]:
    """Module names per top-level prefix, as PEFT will look for them (``peft_named``)."""
    modules: dict[str, set[str]] = {}
    for component, group in peft_named(pipe, state_dict).items():
        names = {name for name in map(_module_of, group) if name}
        if names:
            modules[component] = names
    return modules


def check_matches(pipe: Any, state_dict: dict[str, Any]) -> int:
    """Raise ``AdapterMismatchError`` unless every LoRA layer of ``state_dict`` names a module.

    ``state_dict`` is what ``lora_state_dict`` returns (prefixed ``unet.`` / ``text_encoder.`` /
    ``text_encoder_2.``). Anything else — another architecture's prefix (``transformer.``), no
    prefix at all, block names the model does not have — is a layer that would be silently
    skipped by diffusers (it only logs "No LoRA keys associated …"). Returns the layer count.
    """
    wanted = lora_modules(pipe, state_dict)
    total = sum(len(names) for names in wanted.values())
    matched = 0
    for component in COMPONENTS:
        names = wanted.get(component)
        model = getattr(pipe, component, None)
        if names and model is not None:
            matched += len(names & {name for name, _ in model.named_modules()})
    if total and matched == total:
        return total
    foreign = sorted(set(wanted) - set(COMPONENTS))
    example = sorted(f"{c}.{n}" for c, names in wanted.items() for n in names)[:2]
    detail = f"its layers are addressed like {', '.join(example)}" if example else "it has no LoRA layers"
    if foreign:
        detail += f"; prefixes {', '.join(foreign)} are not parts of an SDXL pipeline"
    if matched == 0:
        raise AdapterMismatchError(
            f"it matches no layer of the loaded model (0 of {total} LoRA layers matched; {detail}); "
            "is it a LoRA for another architecture?",
            code="lora_no_match",
        )
    raise AdapterMismatchError(
        f"only {matched} of {total} of its LoRA layers match the loaded model ({detail}); "
        "serving it would silently drop the rest",
        code="lora_partial_match",
    )


class Injected(NamedTuple):
    """What ``inject_lora`` put in: its LoRA layers, and whether any is in a text encoder (then the
    adapter changes prompt embeddings, and the prompt cache keys by it)."""

    layers: int
    text_encoders: bool


def inject_lora(
    pipe: Any,
    compiled: CompiledUNet | None,
    state_dict: dict[str, torch.Tensor],
    metadata: dict[str, Any] | None,
    name: str,
) -> Injected:
    """``pipe.load_lora_weights(<the file>, adapter_name=name)`` from weights already read.

    Given a dict, ``load_lora_weights`` has no safetensors header to take diffusers' adapter
    metadata (the PEFT ``LoraConfig``: ``lora_alpha``, ``r``, … per component) from, and
    derives the config from the tensors alone: alpha = rank, so an adapter trained with
    alpha ≠ rank would be applied at the wrong strength. This makes the same public calls as
    ``StableDiffusionXLLoraLoaderMixin.load_lora_weights`` (diffusers 0.42), with the metadata
    parsed from the very bytes that were hashed (``AdapterFiles.read``) in place of the one
    ``lora_state_dict`` would read from a file. ``lora_state_dict`` still does the format
    work (kohya/A1111 conversion with their alphas as ``network_alphas``, DoRA filtering).
    Returns the number of LoRA layers the file has (all of which match the model) and whether
    some are in a text encoder (kohya files often have them; the trainer's exports do not).
    """
    from diffusers.loaders.lora_pipeline import _LOW_CPU_MEM_USAGE_DEFAULT_LORA

    # A dict is copied, never modified in place (as load_lora_weights does).
    state_dict, network_alphas = pipe.lora_state_dict(dict(state_dict), unet_config=pipe.unet.config)
    if not all("lora" in key for key in state_dict):
        raise ValueError(
            "Invalid LoRA checkpoint. Make sure all LoRA param names contain `'lora'` substring."
        )
    expected = check_matches(pipe, state_dict)
    injected = Injected(expected, any(key.startswith(TEXT_ENCODER_PREFIXES) for key in state_dict))
    if compiled is not None:
        compiled.load(state_dict, network_alphas, metadata, name)
        return injected
    common: dict[str, Any] = {
        "network_alphas": network_alphas,
        "adapter_name": name,
        "metadata": metadata,
        "_pipeline": pipe,
        "low_cpu_mem_usage": _LOW_CPU_MEM_USAGE_DEFAULT_LORA,
        "hotswap": False,
    }
    pipe.load_lora_into_unet(state_dict, unet=pipe.unet, **common)
    for text_encoder, prefix in (
        (pipe.text_encoder, pipe.text_encoder_name),
        (pipe.text_encoder_2, f"{pipe.text_encoder_name}_2"),
    ):
        pipe.load_lora_into_text_encoder(
            state_dict, text_encoder=text_encoder, prefix=prefix, lora_scale=pipe.lora_scale, **common
        )
    return injected
