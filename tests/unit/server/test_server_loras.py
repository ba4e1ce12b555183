"""Several adapters per request (``loras``) and adapters that do not fit the model (no silent no-ops).

References are diffusers' own ``load_lora_weights`` + ``set_adapters(names, adapter_weights=…)`` on
a plain pipeline, run through the same generation code at the same seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from server_helpers import SIZE, decode, server_settings, wait_ready, write_loras_with_text_encoders

PROMPT = "a photo of z"
A, B = "style_a", "b.safetensors"


@pytest.fixture(scope="module")
def misfit_root(tiny_model, lora_root: Path, tmp_path_factory) -> dict[str, Any]:
    """Adapter files that do not (fully) fit the tiny SDXL, put into the shared LoRA root.

    sd3_transformer.safetensors   a LoRA made by PEFT on a tiny SD3 transformer (``transformer.``
                                  keys: another architecture, no layer matches)
    foreign_keys.safetensors      LoRA-looking tensors under random module names
    other_unet/                   a LoRA made on a tiny UNet with other blocks: its
                                  ``down_blocks.0.attentions`` do not exist here, the rest does
    """
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    from zthumb.testing import lora_config, write_diffusers_lora

    torch.manual_seed(0)
    sd3 = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=16,
        out_channels=4,
    )
    sd3.add_adapter(lora_config(4, target_modules=["to_q", "to_k", "to_v"]))
    sd3_state = {f"transformer.{k}": v.contiguous() for k, v in get_peft_model_state_dict(sd3).items()}
    save_file(sd3_state, str(lora_root / "sd3_transformer.safetensors"))

    generator = torch.Generator().manual_seed(1)
    foreign = {}
    for index in range(3):
        foreign[f"model.layers.{index}.mlp.lora_A.weight"] = torch.randn(4, 16, generator=generator)
        foreign[f"model.layers.{index}.mlp.lora_B.weight"] = torch.randn(16, 4, generator=generator)
    save_file(foreign, str(lora_root / "foreign_keys.safetensors"))

    config = UNet2DConditionModel.load_config(str(tiny_model.diffusers_dir / "unet"))
    config["down_block_types"] = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    other = UNet2DConditionModel.from_config(config)
    other.add_adapter(lora_config(4))
    other_state = convert_state_dict_to_diffusers(get_peft_model_state_dict(other))
    write_diffusers_lora({k: v.contiguous() for k, v in other_state.items()}, lora_root / "other_unet")
    modules = {key.split(".lora")[0] for key in other_state}
    matching = {m for m in modules if not m.startswith("down_blocks.0.")}
    assert 0 < len(matching) < len(modules)
    return {
        "sd3_layers": len({k.split(".lora")[0] for k in sd3_state}),
        "other_layers": len(modules),
        "other_matching": len(matching),
    }


@pytest.fixture(scope="module")
def client(tiny_model, lora_root, misfit_root, tmp_path_factory):
    """full (default), turbo and gguf backends; at most 3 adapters per request."""
    from fastapi.testclient import TestClient
    from zthumb.app import build_app
    from zthumb.gguf_convert import convert

    gguf_file = tmp_path_factory.mktemp("gguf") / "unet.gguf"
    convert(tiny_model.diffusers_dir, gguf_file)
    settings = server_settings(
        tiny_model,
        lora_root,
        enabled_backends=["full", "turbo", "gguf"],
        gguf_unet_path=gguf_file,
        max_loras_per_request=3,
    )
    with TestClient(build_app(settings)) as test_client:
        assert wait_ready(test_client)["ready"]
        assert test_client.app.state.engine.loading_done.wait(120)
        yield test_client


def generate(client, expect: int = 200, **fields: Any) -> dict[str, Any]:
    response = client.post("/generate", json={"prompt": PROMPT, "seed": 7, **fields})
    assert response.status_code == expect, response.text
    return response.json()


def image(client, **fields: Any) -> np.ndarray:
    return decode(generate(client, **fields))


def loras(*pairs: tuple[str, float]) -> list[dict[str, Any]]:
    return [{"path": path, "scale": scale} for path, scale in pairs]


# --- several adapters --------------------------------------------------------------------------


def test_two_adapters_match_diffusers_set_adapters(client, tiny_model, lora_root):
    """Tolerance: at most 2/255 per pixel, mean under 0.05 — the server activates adapters in a
    canonical order, diffusers in list order, and float addition is not associative."""
    from types import SimpleNamespace

    from compel import CompelForSDXL
    from diffusers import StableDiffusionXLPipeline
    from zthumb.backends import Backend, GenerationParams

    served = generate(client, loras=loras((A, 0.7), (B, 0.4)))
    assert [(a["path"], a["scale"]) for a in served["adapters"]] == [
        (A, 0.7),
        (B, 0.4),
    ]
    assert served["adapter"] == served["adapters"][0]
    assert all(a["rank"] == 4 and a["source"] == "request" for a in served["adapters"])

    plain = StableDiffusionXLPipeline.from_pretrained(
        str(tiny_model.diffusers_dir), dtype=torch.float32, local_files_only=True, use_safetensors=True
    )
    plain.set_progress_bar_config(disable=True)
    plain.load_lora_weights(str(lora_root / A), adapter_name="a")
    plain.load_lora_weights(str(lora_root / B), adapter_name="b")
    stand_in = SimpleNamespace(pipe=plain, compel=CompelForSDXL(plain, device="cpu"), tiny_decoder=None)
    # Backend.generate encodes through the instance; a plain pipeline stands in for one here.
    stand_in.encode_prompt = lambda params: Backend.encode_uncached(stand_in, params)
    params = GenerationParams(PROMPT, None, SIZE, SIZE, 2, 6.0, seed=7, num_images=1)

    def reference(names: list[str], weights: list[float]) -> np.ndarray:
        plain.set_adapters(names, adapter_weights=weights)
        return np.asarray(Backend.generate(stand_in, params)[0].convert("RGB"))

    for names, weights in ((["a", "b"], [0.7, 0.4]), (["b", "a"], [0.4, 0.7])):
        difference = np.abs(decode(served).astype(int) - reference(names, weights).astype(int))
        assert difference.max() <= 2 and difference.mean() < 0.05, (
            names,
            difference.max(),
            difference.mean(),
        )
    # Each adapter contributes: the pair differs from either alone.
    assert np.abs(decode(served).astype(int) - reference(["a"], [0.7]).astype(int)).mean() > 1.0
    assert np.abs(decode(served).astype(int) - reference(["b"], [0.4]).astype(int)).mean() > 1.0


def test_order_scale_zero_and_the_one_element_case(client):
    pair = image(client, loras=loras((A, 0.7), (B, 0.4)))
    # Canonical activation order: the list order changes nothing, not even the rounding.
    assert np.array_equal(image(client, loras=loras((B, 0.4), (A, 0.7))), pair)
    # Scale 0 leaves an adapter out: exactly the other one alone (as lora_path).
    alone = image(client, lora_path=A, lora_scale=0.7)
    half = generate(client, loras=loras((A, 0.7), (B, 0.0)))
    assert np.array_equal(decode(half), alone)
    assert [a["scale"] for a in half["adapters"]] == [0.7, 0.0]
    assert np.array_equal(image(client, loras=loras((A, 0.7))), alone)
    # All at 0, or an empty list: LoRA layers off, bit-identical to no adapter.
    none = image(client)
    assert np.array_equal(image(client, loras=loras((A, 0.0), (B, 0.0))), none)
    assert np.array_equal(image(client, loras=[]), none)
    assert not np.array_equal(pair, alone) and not np.array_equal(alone, none)


@pytest.mark.parametrize("backend", ["turbo", "gguf"])
def test_several_adapters_on_the_other_backends(client, backend):
    fields: dict[str, Any] = {"backend": backend}
    pair = image(client, loras=loras((A, 0.8), (B, 0.8)), **fields)
    alone = image(client, lora_path=A, lora_scale=0.8, **fields)
    assert np.array_equal(image(client, loras=loras((A, 0.8), (B, 0.0)), **fields), alone)
    assert np.array_equal(image(client, loras=loras((B, 0.8), (A, 0.8)), **fields), pair)
    assert np.abs(pair.astype(int) - alone.astype(int)).mean() > 0.5


def test_bytes_response_headers_name_every_adapter(client):
    response = client.post(
        "/generate",
        json={"prompt": PROMPT, "seed": 7, "response_format": "bytes", "loras": loras((B, 0.5), (A, 1.25))},
    )
    assert response.status_code == 200, response.text
    headers = response.headers
    # The single-adapter headers keep their meaning: the first adapter.
    assert (headers["x-zthumb-lora-path"], headers["x-zthumb-lora-scale"]) == (B, "0.5")
    assert headers["x-zthumb-loras"] == "b.safetensors=0.5,style_a=1.25"
    sha = [a["sha256"] for a in generate(client, loras=loras((B, 0.5), (A, 1.25)))["adapters"]]
    assert headers["x-zthumb-lora-sha256"] == sha[0]
    assert headers["x-zthumb-lora-sha256s"] == ",".join(sha)


def test_models_lists_resident_adapters_with_rank(client):
    generate(client, loras=loras((A, 0.6), ("kohya_a.safetensors", 0.6)))
    cached = [c for c in client.get("/models").json()["cached_adapters"] if c["backend"] == "full"]
    by_path = {c["path"]: c for c in cached}
    assert by_path["kohya_a.safetensors"]["rank"] == 4
    assert by_path[A]["rank"] == 4
    assert {c["path"] for c in cached if c["active"]} == {"kohya_a.safetensors", A}
    assert all(len(c["sha256"]) == 64 for c in cached)


def test_cache_hits_count_each_adapter(client):
    def metric(name: str) -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith(f'{name}{{backend="full"}}'):
                return float(line.split()[-1])
        return 0.0

    generate(client, loras=loras((A, 0.5), (B, 0.5)))  # both resident after this
    hits = metric("zthumb_adapter_cache_hits_total")
    loads = metric("zthumb_adapter_loads_total")
    generate(client, loras=loras((A, 0.3), (B, 0.9)))
    assert metric("zthumb_adapter_cache_hits_total") == hits + 2
    assert metric("zthumb_adapter_loads_total") == loads


@pytest.mark.parametrize(
    ("fields", "status", "field", "code"),
    [
        ({"lora_path": A, "loras": loras((B, 0.5))}, 422, "loras", "loras_conflict"),
        ({"lora_scale": 0.5, "loras": loras((B, 0.5))}, 422, "loras", "loras_conflict"),
        ({"loras": loras((A, 0.1), (B, 0.1), ("kohya_a.safetensors", 0.1), ("inner_link.safetensors", 0.1))},
         422, "loras", "too_many_loras"),
        ({"loras": loras((A, 0.5), ("style_a/pytorch_lora_weights.safetensors", 0.2))},
         422, "loras[1].path", "duplicate_lora"),
        ({"loras": loras((B, 0.5), ("inner_link.safetensors", 0.2))}, 422, "loras[1].path", "duplicate_lora"),
        ({"loras": loras((A, 0.5), ("../outside/x.safetensors", 0.5))}, 400, "loras[1].path",
         "lora_path_traversal"),
        ({"loras": loras((A, 0.5), ("evil.bin", 0.5))}, 400, "loras[1].path", "lora_format_refused"),
        ({"loras": loras(("missing.safetensors", 0.5))}, 404, "loras[0].path", "lora_not_found"),
        ({"loras": loras((A, 0.5), ("not_a_lora.safetensors", 0.5))}, 422, "loras[1].path", "lora_invalid"),
        ({"loras": loras((A, 2.5))}, 422, "loras[0].scale", "invalid_request"),
        ({"loras": [{"path": A, "weight": 1}]}, 422, "loras[0].weight", "invalid_request"),
    ],
)  # fmt: skip
def test_loras_refusals_name_the_field(client, fields, status, field, code):
    body = generate(client, expect=status, **fields)
    assert (body["field"], body["error"]) == (field, code), body
    if code == "too_many_loras":
        assert "the limit is 3" in body["message"] and "ZTHUMB_MAX_LORAS_PER_REQUEST" in body["message"]


def test_max_loras_setting_from_the_environment(monkeypatch):
    from pydantic import ValidationError
    from zthumb.settings import Settings

    assert Settings().max_loras_per_request == 4
    monkeypatch.setenv("ZTHUMB_MAX_LORAS_PER_REQUEST", "2")
    assert Settings().max_loras_per_request == 2
    monkeypatch.setenv("ZTHUMB_MAX_LORAS_PER_REQUEST", "0")
    with pytest.raises(ValidationError, match="max_loras_per_request"):
        Settings()


# --- adapters that do not fit the model ------------------------------------------------------------


def test_lora_for_another_architecture_is_refused(client, misfit_root):
    before = {c["path"] for c in client.get("/models").json()["cached_adapters"]}
    body = generate(client, expect=422, lora_path="sd3_transformer.safetensors", lora_scale=1.0)
    assert (body["error"], body["field"]) == ("lora_no_match", "lora_path"), body
    assert f"0 of {misfit_root['sd3_layers']} LoRA layers matched" in body["message"]
    assert "transformer" in body["message"]
    # Nothing was left behind and the server still serves adapters.
    assert {c["path"] for c in client.get("/models").json()["cached_adapters"]} == before
    assert generate(client, lora_path=A, lora_scale=0.5)["adapter"]["scale"] == 0.5


def test_foreign_key_names_are_refused(client):
    body = generate(client, expect=422, loras=loras((A, 0.5), ("foreign_keys.safetensors", 0.5)))
    assert (body["error"], body["field"]) == ("lora_no_match", "loras[1].path"), body
    assert "0 of 3 LoRA layers matched" in body["message"]


def test_partially_matching_lora_is_refused_with_counts(client, misfit_root):
    body = generate(client, expect=422, lora_path="other_unet", lora_scale=1.0)
    assert (body["error"], body["field"]) == ("lora_partial_match", "lora_path"), body
    assert f"only {misfit_root['other_matching']} of {misfit_root['other_layers']}" in body["message"]
    body = generate(client, expect=422, backend="gguf", loras=loras(("other_unet", 1.0)))
    assert (body["error"], body["field"]) == ("lora_partial_match", "loras[0].path"), body
    cached = {c["path"] for c in client.get("/models").json()["cached_adapters"]}
    assert not any(path.startswith(("other_unet", "sd3_", "foreign_")) for path in cached)


def test_injected_layers_are_counted_after_loading(tiny_model, lora_root, monkeypatch):
    """The second check: should the name comparison pass a file whose layers PEFT then skips, the
    count of layers PEFT really injected refuses it (here: the comparison is made to pass)."""
    from zthumb.backends import FullBackend, lora_load
    from zthumb.errors import AdapterLoadError
    from zthumb.lora import AdapterFiles

    backend = FullBackend(server_settings(tiny_model, lora_root), torch.device("cpu"), torch.float32)
    monkeypatch.setattr(lora_load, "check_matches", lambda pipe, state_dict: 5)
    with pytest.raises(AdapterLoadError) as refused:
        backend.apply_adapter(AdapterFiles(lora_root).ref("sd3_transformer.safetensors"), 1.0)
    assert refused.value.code == "lora_partial_match" and "0 of its 5" in refused.value.message
    assert backend.cached_adapters() == []


def test_lora_modules_converts_keys_like_diffusers(tiny_model, lora_root):
    """Module names after diffusers' conversions, i.e. as PEFT looks them up in each component."""
    from types import SimpleNamespace

    from zthumb.backends.lora_load import lora_modules

    flat = SimpleNamespace(text_encoder=object(), text_encoder_2=SimpleNamespace(text_model=object()))
    state = {
        "unet.down.attn1.to_q.lora_A.weight": 0,
        "unet.down.attn1.to_q.lora_B.weight": 0,
        "unet.mid.to_v.lora.up.weight": 0,
        # the old diffusers text-encoder spelling (what kohya files convert to)
        "text_encoder.text_model.encoder.layers.0.self_attn.to_k_lora.down.weight": 0,
        "text_encoder.text_model.encoder.layers.0.self_attn.to_out_lora.up.weight": 0,
        "text_encoder_2.text_model.encoder.layers.1.mlp.fc1.lora_linear_layer.down.weight": 0,
        "transformer.blocks.0.to_q.lora_A.weight": 0,
        "no_lora_here.weight": 0,
    }
    assert lora_modules(flat, state) == {
        "unet": {"down.attn1.to_q", "mid.to_v"},
        # CLIPTextModel without `text_model` (flattened): the prefix goes, as diffusers drops it
        "text_encoder": {"encoder.layers.0.self_attn.k_proj", "encoder.layers.0.self_attn.out_proj"},
        "text_encoder_2": {"text_model.encoder.layers.1.mlp.fc1"},
        "transformer": {"blocks.0.to_q"},
    }


def test_text_encoder_loras_in_both_layouts_pass_the_check(client, tiny_model, lora_root):
    """diffusers and kohya files with UNet and both text encoders' layers: every layer matches."""
    layers = write_loras_with_text_encoders(tiny_model, lora_root, "with_te")

    without = image(client)
    for path in ("with_te", "with_te_kohya.safetensors"):
        body = generate(client, lora_path=path, lora_scale=1.0)
        assert body["adapter"]["rank"] == 4
        assert np.abs(decode(body).astype(int) - without.astype(int)).mean() > 0.5
    backend = client.app.state.engine.backends["full"]
    ref = client.app.state.engine.files.ref("with_te_kohya.safetensors")
    name = backend._adapters[ref.key]
    expected = sum(len(names) for names in layers.values()) // 2  # lora_A and lora_B per layer
    assert backend._injected_layers(name) == expected
