"""export: the diffusers and kohya files reproduce the trained adapter exactly, alpha ≠ rank included."""

from __future__ import annotations

import json

import pytest
import torch
from zthumb_trainer.export.adapter import ADAPTER_INFO, DIFFUSERS_WEIGHTS, AdapterInfo, export_adapter
from zthumb_trainer.train.checkpoints import adapter_state, lora_configs

RANK, ALPHA = 4, 16.0


def _pipe(tiny_model):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(tiny_model.diffusers_dir)


def _unet_output(unet):
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    hidden = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    text_embeds = torch.randn(1, 48, generator=generator)
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])
    with torch.no_grad():
        return unet(
            sample, 500, hidden, added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}
        ).sample


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """A UNet with a LoRA whose B matrices are non-zero (as after training), exported once."""
    from peft import LoraConfig

    pipe = _pipe(tiny_model)
    base_output = _unet_output(pipe.unet)
    pipe.unet.add_adapter(
        LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian",
                   target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    )  # fmt: skip
    torch.manual_seed(1)
    for name, parameter in pipe.unet.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.2)
    reference = _unet_output(pipe.unet)
    directory = tmp_path_factory.mktemp("models") / "lora" / "style"
    info = AdapterInfo("style", "ab" * 32, RANK, ALPHA, "zt", 10, "cd" * 32)
    export_adapter(directory, adapter_state({"unet": pipe.unet}), lora_configs({"unet": pipe.unet}), info)
    return directory, base_output, reference


def test_adapter_changes_the_unet(trained):
    _, base_output, reference = trained
    assert (base_output - reference).abs().mean() > 1e-3


def test_diffusers_file_round_trips_alpha_not_equal_to_rank(tiny_model, trained):
    directory, _, reference = trained
    pipe = _pipe(tiny_model)
    pipe.load_lora_weights(str(directory))
    assert torch.allclose(_unet_output(pipe.unet), reference, atol=1e-5)


def test_diffusers_file_carries_the_peft_config(trained):
    from safetensors import safe_open

    directory, _, _ = trained
    with safe_open(str(directory / DIFFUSERS_WEIGHTS), "pt") as handle:
        metadata = json.loads(handle.metadata()["lora_adapter_metadata"])
        keys = list(handle.keys())
    assert metadata["unet.lora_alpha"] == ALPHA and metadata["unet.r"] == RANK
    assert all(key.startswith("unet.") for key in keys)


def test_kohya_file_loads_in_diffusers_with_the_same_effect(tiny_model, trained):
    from safetensors.torch import load_file

    directory, _, reference = trained
    kohya = directory / "style.kohya.safetensors"
    state = load_file(str(kohya))
    assert all(key.startswith("lora_unet_") for key in state)
    assert {float(v) for k, v in state.items() if k.endswith(".alpha")} == {ALPHA}
    pipe = _pipe(tiny_model)
    pipe.load_lora_weights(str(directory), weight_name=kohya.name)
    assert torch.allclose(_unet_output(pipe.unet), reference, atol=1e-5)


def test_adapter_json_records_provenance(trained):
    directory, _, _ = trained
    info = json.loads((directory / ADAPTER_INFO).read_text())
    assert info["base_model_sha256"] == "ab" * 32 and info["dataset_hash"] == "cd" * 32
    assert (info["rank"], info["alpha"], info["trigger_word"], info["steps"]) == (RANK, ALPHA, "zt", 10)
    assert set(info["files"]) == {DIFFUSERS_WEIGHTS, "style.kohya.safetensors"}


def test_export_replaces_an_older_adapter_without_leftovers(trained, tiny_model, tmp_path):
    import shutil

    directory = tmp_path / "lora" / "style"  # a copy: the module's export stays as trained
    shutil.copytree(trained[0], directory)
    before = (directory / DIFFUSERS_WEIGHTS).read_bytes()
    pipe = _pipe(tiny_model)
    from peft import LoraConfig

    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"], init_lora_weights=False))
    info = AdapterInfo("style", "", 2, 2.0, "", 1, "")
    export_adapter(directory, adapter_state({"unet": pipe.unet}), lora_configs({"unet": pipe.unet}), info)
    assert (directory / DIFFUSERS_WEIGHTS).read_bytes() != before
    assert json.loads((directory / ADAPTER_INFO).read_text())["rank"] == 2
    assert sorted(p.name for p in directory.parent.iterdir()) == ["style"]


def test_the_servers_loader_loads_the_export_with_the_same_effect(tiny_model, trained):
    """The ZThumb server's own adapter path (confinement, cache, load_lora_weights) on our export."""
    from zthumb.backends.full import FullBackend
    from zthumb.lora import AdapterFiles
    from zthumb.settings import Settings

    directory, base_output, reference = trained
    settings = Settings(
        model_path=tiny_model.diffusers_dir, model_config_dir=tiny_model.diffusers_dir,
        lora_root=directory.parent, device="cpu", dtype="float32",
    )  # fmt: skip
    backend = FullBackend(settings, torch.device("cpu"), torch.float32)
    ref = AdapterFiles(directory.parent).ref("style")
    applied = backend.apply_adapter(ref, 1.0)
    assert applied.active
    assert torch.allclose(_unet_output(backend.pipe.unet), reference, atol=1e-5)
    backend.apply_adapter(None, 0.0)
    assert torch.allclose(_unet_output(backend.pipe.unet), base_output, atol=1e-5)


def test_the_servers_loader_loads_an_alpha_equal_rank_export(tiny_model, tmp_path):
    """The default spec (alpha == rank) through the server's loader: same effect as diffusers' own."""
    from peft import LoraConfig
    from zthumb.backends.full import FullBackend
    from zthumb.lora import AdapterFiles
    from zthumb.settings import Settings

    pipe = _pipe(tiny_model)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"]))
    torch.manual_seed(2)
    for name, parameter in pipe.unet.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.2)
    reference = _unet_output(pipe.unet)
    root = tmp_path / "lora"
    info = AdapterInfo("even", "", 4, 4.0, "", 1, "")
    export_adapter(root / "even", adapter_state({"unet": pipe.unet}), lora_configs({"unet": pipe.unet}), info)
    settings = Settings(model_path=tiny_model.single_file, model_config_dir=tiny_model.diffusers_dir,
                        lora_root=root, device="cpu", dtype="float32")  # fmt: skip
    backend = FullBackend(settings, torch.device("cpu"), torch.float32)
    backend.apply_adapter(AdapterFiles(root).ref("even"), 1.0)
    assert torch.allclose(_unet_output(backend.pipe.unet), reference, atol=1e-5)
