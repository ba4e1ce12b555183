"""An adapter file's LoRA keys as PEFT will look for them: the one key conversion that the eager
path (``lora_load.py``: the fit check, injection) and the compiled path (``compiled.py``) share."""

from __future__ import annotations

from typing import Any

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def peft_named(pipe: Any, state_dict: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The LoRA weights per top-level prefix (``unet``, ``text_encoder``, … or a foreign one), the
    prefix removed and the keys converted as diffusers converts them when it loads them (diffusers
    0.42, ``load_lora_adapter`` and ``_load_lora_into_text_encoder``), so the names are the ones
    PEFT will look for: UNet keys to PEFT names; text-encoder keys to diffusers then PEFT names
    (old ``to_k_lora`` spellings become ``k_proj``), without ``text_model.`` when the installed
    transformers flattens ``CLIPTextModel``. Other prefixes are kept as they are.
    """
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    groups: dict[str, dict[str, Any]] = {}
    for key, value in state_dict.items():
        component, _, rest = key.partition(".")
        groups.setdefault(component, {})[rest] = value
    for component, raw in groups.items():
        if component == "unet":
            groups[component] = convert_unet_state_dict_to_peft(raw)
        elif component in COMPONENTS:
            group = convert_state_dict_to_peft(convert_state_dict_to_diffusers(raw))
            if not hasattr(getattr(pipe, component, None), "text_model"):
                group = {key.removeprefix("text_model."): value for key, value in group.items()}
            groups[component] = group
    return groups
