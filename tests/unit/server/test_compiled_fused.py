"""zthumb.backends.compiled_fused without compiling: the merge's arithmetic, exact restores, and what
merging into bf16 weights costs against PEFT's unfused LoRA in bf16 (the stated tolerance)."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch

SWITCHES = 200
# Merged bf16 against unfused bf16, both against fp32 (mean error): 0.84x to 1.02x over eight random
# adapter pairs on the tiny UNet; 0.84x for the pair tested here.
MERGE_ERROR_RATIO = 1.1


def _unet(tiny_model, dtype: torch.dtype) -> Any:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(tiny_model.diffusers_dir / "unet"), local_files_only=True)
    return unet.to(dtype).eval()


def _inputs(unet) -> tuple[Any, ...]:
    generator = torch.Generator().manual_seed(0)
    dtype = unet.dtype
    sample = torch.randn(1, unet.config.in_channels, 8, 8, generator=generator).to(dtype)
    embeds = torch.randn(1, 4, unet.config.cross_attention_dim, generator=generator).to(dtype)
    time_dims = 6 * unet.config.addition_time_embed_dim
    pooled = torch.randn(
        1, unet.config.projection_class_embeddings_input_dim - time_dims, generator=generator
    ).to(dtype)
    added = {"text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]).to(dtype)}
    return sample, torch.tensor([500]), embeds, added


def _predict(unet) -> torch.Tensor:
    sample, timestep, embeds, added = _inputs(unet)
    with torch.no_grad():
        return unet(sample, timestep, embeds, added_cond_kwargs=added, return_dict=False)[0].float()


def _weight_bytes(unet) -> bytes:
    """The state dict's bytes, for a bit-for-bit comparison without a tensor op per parameter."""
    return b"".join(
        value.detach().view(torch.uint8).numpy().tobytes() for value in unet.state_dict().values()
    )


def _fused(unet) -> Any:
    from zthumb.backends.compiled_fused import FusedUNet

    return FusedUNet(SimpleNamespace(unet=unet), mode="default", max_adapters=4)


def _prefixed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"unet.{key}": value for key, value in state.items()}  # as pipe.lora_state_dict returns


@pytest.fixture(scope="module")
def adapters(tiny_model) -> dict[str, dict[str, torch.Tensor]]:
    from zthumb.testing import random_lora_state_dicts

    a, b = random_lora_state_dicts(tiny_model.diffusers_dir / "unet", [31, 32])
    return {"first": _prefixed(a), "second": _prefixed(b)}


def test_merging_then_restoring_gives_back_the_base_weights_bit_for_bit(tiny_model, adapters):
    unet = _unet(tiny_model, torch.bfloat16)
    base = {name: value.clone() for name, value in unet.state_dict().items()}
    fused = _fused(unet)
    for name, state in adapters.items():
        fused.load(state, None, None, name)

    fused.activate([("first", 1.0)])
    first = {name: value.clone() for name, value in unet.state_dict().items()}
    changed = [name for name in base if not torch.equal(base[name], first[name])]
    assert changed and all(name.endswith(".weight") for name in changed)
    # No number of switches drifts (in bf16, where a restore by subtraction would): the weights
    # after a switch are those of the first merge of the same set, bit for bit, however reached.
    sets = ([("first", 1.0)], [("second", 0.5)], [("first", 0.3), ("second", 1.0)], [("second", 1.0)])
    merges = {0: _weight_bytes(unet)}
    order = random.Random(0)  # its own generator: the switch order does not depend on the test order
    for _ in range(SWITCHES):
        index = order.randrange(len(sets))
        fused.activate(sets[index])
        weights = _weight_bytes(unet)
        assert merges.setdefault(index, weights) == weights, index
    assert len(merges) == len(sets)

    fused.silence()
    assert all(torch.equal(base[name], value) for name, value in unet.state_dict().items())
    assert fused.resident_bytes() > 0


def test_the_merge_is_what_peft_computes_unfused(tiny_model, adapters):
    """In fp32 the merged UNet and PEFT's unfused LoRA agree to float reassociation; in bf16 merging
    costs about what serving unfused in bf16 does (both against the fp32 result)."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        merged = _unet(tiny_model, dtype)
        fused = _fused(merged)
        for name, state in adapters.items():
            fused.load(state, None, None, name)
        fused.activate([("first", 0.8), ("second", 0.5)])

        unfused = _unet(tiny_model, dtype)
        for name in adapters:
            weights = convert_unet_state_dict_to_peft(
                {k.removeprefix("unet."): v for k, v in adapters[name].items()}
            )
            unfused.load_lora_adapter(weights, adapter_name=name, prefix=None)
        unfused.set_adapters(["first", "second"], weights=[0.8, 0.5])
        results[dtype] = (_predict(merged), _predict(unfused))

    merged32, unfused32 = results[torch.float32]
    torch.testing.assert_close(merged32, unfused32, rtol=1e-4, atol=1e-5)
    merged16, unfused16 = results[torch.bfloat16]
    merge_error = (merged16 - unfused32).abs().mean().item()
    unfused_error = (unfused16 - unfused32).abs().mean().item()
    assert merge_error <= MERGE_ERROR_RATIO * unfused_error, (merge_error, unfused_error)


def test_a_layer_that_does_not_fit_is_refused_before_any_weight_changes(tiny_model, adapters):
    from zthumb.backends.compiled import SlotError

    unet = _unet(tiny_model, torch.float32)
    base = {name: value.clone() for name, value in unet.state_dict().items()}
    fused = _fused(unet)
    wrong = dict(adapters["first"])
    key = next(k for k in wrong if k.endswith("lora.up.weight") or k.endswith("lora_B.weight"))
    wrong[key] = torch.ones(wrong[key].shape[0] + 1, wrong[key].shape[1])
    with pytest.raises(SlotError, match="do not fit") as refused:
        fused.load(wrong, None, None, "wrong")
    assert refused.value.code == "lora_invalid"
    assert all(torch.equal(base[name], value) for name, value in unet.state_dict().items())
