"""Backends loaded directly: single-file full, turbo, gguf (really quantized)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from server_helpers import SIZE, server_settings

CPU = torch.device("cpu")
PARAMS = {"prompt": "a photo of z", "negative_prompt": None, "width": SIZE, "height": SIZE, "seed": 5}


def _image(backend, steps=2, guidance=6.0):
    from zthumb.backends import GenerationParams

    params = GenerationParams(**PARAMS, steps=steps, guidance_scale=guidance, num_images=1)
    return np.asarray(backend.generate(params)[0].convert("RGB"))


@pytest.fixture(scope="module")
def full_backend(tiny_model, lora_root):
    from zthumb.backends import FullBackend

    return FullBackend(server_settings(tiny_model, lora_root), CPU, torch.float32)


def test_single_file_checkpoint_matches_diffusers_dir(tiny_model, lora_root, full_backend):
    from zthumb.backends import FullBackend

    settings = server_settings(
        tiny_model, lora_root, model_path=tiny_model.single_file, model_config_dir=tiny_model.diffusers_dir
    )
    single = FullBackend(settings, CPU, torch.float32)
    assert single.model_description.endswith(".safetensors")
    difference = np.abs(_image(single).astype(int) - _image(full_backend).astype(int)).max()
    assert difference <= 2


def test_turbo_backend(tiny_model, lora_root):
    from diffusers import EulerAncestralDiscreteScheduler
    from zthumb.backends import TurboBackend
    from zthumb.engine import Engine
    from zthumb.errors import InvalidRequestError
    from zthumb.protocol import GenerateRequest

    settings = server_settings(tiny_model, lora_root, backend="turbo", default_steps=None)
    turbo = TurboBackend(settings, CPU, torch.float32)
    assert isinstance(turbo.pipe.scheduler, EulerAncestralDiscreteScheduler)
    assert turbo.pipe.scheduler.config.timestep_spacing == "trailing"
    assert turbo.defaults()["steps"] == 1
    assert turbo.defaults()["guidance_scale"] == 0.0
    assert _image(turbo, steps=1, guidance=0.0).shape == (SIZE, SIZE, 3)

    engine = Engine(settings, backends={"turbo": TurboBackend})
    engine.backends["turbo"] = turbo
    engine.ready = True
    plan = engine.prepare(GenerateRequest(prompt="x"))
    assert (plan.params.steps, plan.params.guidance_scale) == (1, 0.0)
    with pytest.raises(InvalidRequestError) as too_many:
        engine.prepare(GenerateRequest(prompt="x", steps=5))
    assert too_many.value.field == "steps"
    with pytest.raises(InvalidRequestError) as guided:
        engine.prepare(GenerateRequest(prompt="x", guidance_scale=5))
    assert guided.value.field == "guidance_scale"


def test_gguf_backend_is_really_quantized(tiny_model, lora_root, tmp_path, full_backend):
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter
    from gguf import GGMLQuantizationType
    from zthumb.backends import GGUFBackend
    from zthumb.gguf_convert import convert

    path = tmp_path / "unet.gguf"
    report = convert(tiny_model.diffusers_dir, path)
    assert report.quantized > 0
    settings = server_settings(tiny_model, lora_root, backend="gguf", gguf_unet_path=path)
    gguf = GGUFBackend(settings, CPU, torch.float32)
    linears = [m for m in gguf.pipe.unet.modules() if isinstance(m, GGUFLinear)]
    assert len(linears) == report.quantized
    quant_types = {m.weight.quant_type for m in linears}
    assert quant_types == {GGMLQuantizationType.Q8_0}
    assert all(isinstance(m.weight, GGUFParameter) and m.weight.dtype == torch.uint8 for m in linears)
    weights = gguf.unet_weight_bytes
    assert weights["quantized"] <= 0.30 * weights["quantized_fp32"]
    assert weights["unet"] < full_backend.unet_weight_bytes["unet"]
    # Quantization error is small: the image stays close to the full-precision one.
    close = np.abs(_image(gguf).astype(int) - _image(full_backend).astype(int)).mean()
    assert close < 8


def test_gguf_backend_needs_its_paths(tiny_model, lora_root):
    from zthumb.backends import GGUFBackend, ModelConfigError

    with pytest.raises(ModelConfigError, match="ZTHUMB_GGUF_UNET_PATH"):
        GGUFBackend(server_settings(tiny_model, lora_root, backend="gguf"), CPU, torch.float32)


def test_device_and_dtype_resolution(monkeypatch):
    from zthumb.backends.base import resolve_device, resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    assert resolve_dtype("auto", CPU) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("float16", CPU) == torch.float16
    assert resolve_device("cuda:1") == torch.device("cuda:1")


def test_fast_adapter_switch_matches_set_adapters(full_backend, lora_root):
    from zthumb.lora import AdapterFiles

    files = AdapterFiles(lora_root)
    a, b = files.ref("style_a"), files.ref("b.safetensors")
    # The backend is shared by the module's tests (in any order): leave it without an adapter.
    try:
        full_backend.apply_adapter(a, 0.8)
        full_backend.apply_adapter(b, 0.6)
        fast = _image(full_backend)
        name_b = full_backend._adapters[b.key]
        full_backend.apply_adapter(a, 0.3)  # move away, then the diffusers way back to B
        full_backend.pipe.set_adapters([name_b], [0.6])
        full_backend._active = ((name_b, 0.6),)
        assert np.array_equal(_image(full_backend), fast)
    finally:
        full_backend.apply_adapter(None, 0.0)


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")
def test_adapter_metadata_alpha_not_equal_to_rank_matches_diffusers(tiny_model, full_backend, tmp_path):
    """r=4, lora_alpha=16 in the safetensors header: the server applies alpha/r = 4 like diffusers.

    The reference is diffusers' own ``load_lora_weights(<directory>)`` on a plain pipeline, run
    through the same generation code (compel + pipeline call) at the same scale and seed; a load
    of the bare state dict (the metadata ignored, so alpha = rank) gives another image.
    """
    from types import SimpleNamespace

    from compel import CompelForSDXL
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file
    from zthumb.backends import Backend, GenerationParams
    from zthumb.lora import ADAPTER_FILE, AdapterFiles
    from zthumb.testing import adapter_metadata, lora_config, random_lora_state_dict, write_diffusers_lora

    rank, alpha, scale = 4, 16, 0.7
    unet_dir = tiny_model.diffusers_dir / "unet"
    state = random_lora_state_dict(unet_dir, seed=3, rank=rank, alpha=alpha)
    root = tmp_path / "lora"
    directory = write_diffusers_lora(state, root / "alpha16", adapter_metadata(lora_config(rank, alpha)))

    files = AdapterFiles(root)
    ref = files.ref("alpha16")
    weights = ref.read()
    assert weights.sha256 == ref.sha256
    assert (weights.metadata["unet.r"], weights.metadata["unet.lora_alpha"]) == (rank, alpha)

    applied = full_backend.apply_adapter(ref, scale)
    assert applied.active and applied.hit is False
    try:
        served = _image(full_backend)
    finally:
        full_backend.apply_adapter(None, 0.0)

    plain = StableDiffusionXLPipeline.from_pretrained(
        str(tiny_model.diffusers_dir), dtype=torch.float32, local_files_only=True, use_safetensors=True
    )
    plain.set_progress_bar_config(disable=True)
    plain.load_lora_weights(str(directory), adapter_name="from_file")
    plain.load_lora_weights(load_file(str(directory / ADAPTER_FILE)), adapter_name="no_metadata")
    stand_in = SimpleNamespace(pipe=plain, compel=CompelForSDXL(plain, device="cpu"), tiny_decoder=None)
    # Backend.generate encodes through the instance; a plain pipeline stands in for one here.
    stand_in.encode_prompt = lambda params: Backend.encode_uncached(stand_in, params)
    params = GenerationParams(**PARAMS, steps=2, guidance_scale=6.0, num_images=1)

    def plain_image(name: str) -> np.ndarray:
        plain.set_adapters([name], [scale])
        return np.asarray(Backend.generate(stand_in, params)[0].convert("RGB"))

    assert np.array_equal(served, plain_image("from_file"))
    assert np.abs(served.astype(int) - plain_image("no_metadata").astype(int)).mean() > 1.0
