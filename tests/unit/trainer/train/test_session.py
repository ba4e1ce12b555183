"""The training session: which parts train, in which dtype, and what one micro-step changes."""

from __future__ import annotations

import pytest
import torch
from train_helpers import copy_into_run_dir, prepare_once, tiny_config
from zthumb_trainer.dataset.prepare import load_manifest
from zthumb_trainer.train.session import open_session
from zthumb_trainer.train.step_inputs import StepInputs


@pytest.fixture(scope="module")
def prepared(synthetic_dataset, tmp_path_factory):
    return prepare_once(synthetic_dataset, tmp_path_factory.mktemp("prepared"))


def _session(prepared, tiny_model, tmp_path, **overrides):
    run_dir = copy_into_run_dir(prepared, tmp_path)
    config = tiny_config(run_dir, tiny_model, **overrides)
    dataset = load_manifest(run_dir)
    return open_session(config, dataset), dataset


def _dtypes(module: torch.nn.Module, *, lora: bool) -> set[torch.dtype]:
    return {p.dtype for name, p in module.named_parameters() if ("lora_" in name) == lora}


def test_bf16_runs_a_bf16_base_with_fp32_lora_master_weights(prepared, tiny_model, tmp_path):
    session, _ = _session(prepared, tiny_model, tmp_path, mixed_precision="bf16")
    unet = session.unwrapped["unet"]

    assert session.precision == "bf16" and session.weight_dtype == torch.bfloat16
    assert _dtypes(unet, lora=False) == {torch.bfloat16}
    assert _dtypes(unet, lora=True) == {torch.float32}
    # Only the LoRA layers train, and the optimizer holds exactly them.
    trainable = [name for name, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert {id(p) for p in session.params} == {id(p) for p in unet.parameters() if p.requires_grad}
    # The VAE stays fp32 (SDXL's overflows in half precision); frozen text encoders follow the base.
    assert {p.dtype for p in session.components.vae.parameters()} == {torch.float32}
    assert _dtypes(session.components.text_encoder, lora=False) == {torch.bfloat16}
    assert set(session.models) == {"unet"}


def test_training_the_text_encoders_gives_them_fp32_lora_layers(prepared, tiny_model, tmp_path):
    session, _ = _session(prepared, tiny_model, tmp_path, mixed_precision="bf16", train_text_encoder=True)

    assert set(session.models) == {"unet", "text_encoder", "text_encoder_2"}
    for name in ("text_encoder", "text_encoder_2"):
        encoder = session.unwrapped[name]
        assert _dtypes(encoder, lora=True) == {torch.float32}
        assert _dtypes(encoder, lora=False) == {torch.float32}  # they run in fp32 when they train


def test_a_micro_step_updates_the_lora_layers_and_nothing_else(prepared, tiny_model, tmp_path):
    session, dataset = _session(prepared, tiny_model, tmp_path)
    unet = session.unwrapped["unet"]
    before = {name: p.detach().clone() for name, p in unet.named_parameters()}
    inputs = StepInputs(
        session.components, dataset, session.cache, device=session.device, seed=0, world_size=1,
        cache_latents=True, train_text_encoder=False, noise_offset=0.0,
    )  # fmt: skip

    loss = session.micro_step(inputs.micro_batch([0], [0], 1))

    assert loss.ndim == 0 and not loss.requires_grad and torch.isfinite(loss)
    changed = {name for name, p in unet.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all("lora_" in name for name in changed)
    assert all(p.grad is None for p in session.params)  # zeroed after the update


def test_the_loss_masks_weight_the_step_loss(prepared, tiny_model, tmp_path):
    session, dataset = _session(prepared, tiny_model, tmp_path)
    inputs = StepInputs(
        session.components, dataset, session.cache, device=session.device, seed=0, world_size=1,
        cache_latents=True, train_text_encoder=False, noise_offset=0.0,
    )  # fmt: skip
    batch = inputs.micro_batch([0], [0], 1)
    batch.loss_weights = torch.zeros((1, 1, *batch.latents.shape[-2:]))  # every pixel masked out

    loss = session.micro_step(batch)

    assert loss.item() == 0.0
