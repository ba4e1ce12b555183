"""The prompt-embedding cache: LRU bounds, what its key separates, cold vs warm images, metrics."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from server_helpers import server_settings, write_loras_with_text_encoders


@dataclass(frozen=True)
class Conditioning:
    """Shaped like compel's ``LabelledConditioning`` (tensor fields and others)."""

    embeds: torch.Tensor
    negative_embeds: torch.Tensor | None = None
    tokenization_info: dict[str, Any] | None = None


def _conditioning(value: float, floats: int = 256) -> Conditioning:
    return Conditioning(torch.full((floats,), value), tokenization_info={"n": 1})


class Encoder:
    """Counts how often the text encoders would have run."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, value: float, floats: int = 256):
        def encode() -> Conditioning:
            self.calls += 1
            return _conditioning(value, floats)

        return encode


def test_a_second_lookup_is_a_hit_and_encodes_nothing():
    from zthumb.backends.prompt_cache import PromptCache

    cache, encoder = PromptCache(max_entries=4, max_bytes=1 << 20), Encoder()
    first = cache.get_or_encode("a", encoder(1.0))
    second = cache.get_or_encode("a", encoder(2.0))
    assert encoder.calls == 1
    assert torch.equal(first.embeds, second.embeds) and float(second.embeds[0]) == 1.0
    cache.get_or_encode("b", encoder(3.0))
    counts = cache.counts()
    assert (counts.hits, counts.misses, counts.evictions, counts.entries) == (1, 2, 0, 2)
    assert counts.bytes == 2 * 256 * 4


def test_eviction_by_entry_count_drops_the_least_recently_used():
    from zthumb.backends.prompt_cache import PromptCache

    cache, encoder = PromptCache(max_entries=2, max_bytes=1 << 20), Encoder()
    cache.get_or_encode("a", encoder(1.0))
    cache.get_or_encode("b", encoder(2.0))
    cache.get_or_encode("a", encoder(1.0))  # a is now the most recent
    cache.get_or_encode("c", encoder(3.0))  # evicts b
    assert cache.counts().evictions == 1 and cache.counts().entries == 2
    calls = encoder.calls
    cache.get_or_encode("a", encoder(1.0))
    assert encoder.calls == calls
    cache.get_or_encode("b", encoder(2.0))
    assert encoder.calls == calls + 1


def test_eviction_by_bytes_and_an_entry_larger_than_the_bound_is_not_kept():
    from zthumb.backends.prompt_cache import PromptCache

    cache, encoder = PromptCache(max_entries=100, max_bytes=3 * 1024), Encoder()  # 3 entries of 1 KiB
    for key in "abcd":
        cache.get_or_encode(key, encoder(1.0))
    counts = cache.counts()
    assert (counts.entries, counts.bytes, counts.evictions) == (3, 3 * 1024, 1)
    cache.get_or_encode("huge", encoder(1.0, floats=1024))  # 4 KiB
    assert cache.counts().entries == 3 and cache.counts().bytes == 3 * 1024
    calls = encoder.calls
    cache.get_or_encode("huge", encoder(1.0, floats=1024))
    assert encoder.calls == calls + 1


def test_views_of_one_storage_count_once():
    from zthumb.backends.prompt_cache import tensor_bytes

    both = torch.zeros(2, 100)
    assert tensor_bytes(Conditioning(both[0], both[1])) == 2 * 100 * 4


def test_zero_bytes_disables_the_cache():
    from zthumb.backends.prompt_cache import PromptCache

    cache, encoder = PromptCache(max_entries=4, max_bytes=0), Encoder()
    for _ in range(3):
        cache.get_or_encode("a", encoder(1.0))
    assert encoder.calls == 3
    assert cache.counts() == (0, 0, 0, 0, 0)


def test_what_a_caller_changes_in_place_never_reaches_the_cache():
    from zthumb.backends.prompt_cache import PromptCache

    cache, encoder = PromptCache(max_entries=4, max_bytes=1 << 20), Encoder()
    cache.get_or_encode("a", encoder(1.0)).embeds.add_(5)  # the cold answer
    cache.get_or_encode("a", encoder(1.0)).embeds.mul_(0)  # a warm one
    assert float(cache.get_or_encode("a", encoder(1.0)).embeds.max()) == 1.0


def test_an_encoding_that_fails_stores_nothing():
    from zthumb.backends.prompt_cache import PromptCache

    cache = PromptCache(max_entries=4, max_bytes=1 << 20)

    def refuse() -> Conditioning:
        raise ValueError("unparsable")

    for _ in range(2):
        with pytest.raises(ValueError):
            cache.get_or_encode("a", refuse)
    assert cache.counts().entries == 0 and cache.counts().misses == 2


# --- on the tiny model --------------------------------------------------------------------------

TEXT_ADAPTER = "with_text"


@pytest.fixture(scope="module")
def adapter_root(tmp_path_factory, tiny_model, lora_states):
    """``unet_only.safetensors`` (UNet layers, like the trainer's exports) and ``with_text/``
    (UNet and both text encoders)."""
    from diffusers import StableDiffusionXLPipeline

    root = tmp_path_factory.mktemp("prompt-cache-loras")
    StableDiffusionXLPipeline.save_lora_weights(
        str(root), unet_lora_layers=lora_states["b"], weight_name="unet_only.safetensors"
    )
    write_loras_with_text_encoders(tiny_model, root, TEXT_ADAPTER)
    return root


@pytest.fixture(scope="module")
def engine(tiny_model, adapter_root):
    from zthumb.engine import Engine

    eng = Engine(server_settings(tiny_model, adapter_root))
    eng.load_all()
    assert eng.ready
    return eng


def _run(engine, **body: Any) -> np.ndarray:
    from zthumb.protocol import GenerateRequest

    result = engine.execute(engine.prepare(GenerateRequest(**{"seed": 3, **body})))
    return np.asarray(result.images[0].convert("RGB"))


def _counts(engine):
    return engine.backends["full"].prompt_cache.counts()


def test_a_warm_request_gives_the_cold_image_bit_for_bit(engine):
    """The first request encodes (a miss), the same one again reads the cache (a hit)."""
    before = _counts(engine)
    cold = _run(engine, prompt="a cold and warm lighthouse", negative_prompt="blurry")
    warm = _run(engine, prompt="a cold and warm lighthouse", negative_prompt="blurry")
    after = _counts(engine)
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    assert np.array_equal(cold, warm)


def test_the_key_separates_prompts_and_negative_prompts(engine):
    backend = engine.backends["full"]
    before = _counts(engine)
    _run(engine, prompt="key test one")
    _run(engine, prompt="key test two")
    _run(engine, prompt="key test one", negative_prompt="grainy")
    _run(engine, prompt="key test one", negative_prompt="noisy")
    _run(engine, prompt="key test one", negative_prompt="")  # empty is no negative prompt
    after = _counts(engine)
    assert (after.misses - before.misses, after.hits - before.hits) == (4, 1)
    assert backend.text_encoder_adapters() == ()


def test_adapters_are_in_the_key_only_when_they_have_text_encoder_layers(engine):
    """A UNet-only adapter leaves the embeddings as they are: its request reads the base's entry.
    An adapter with text-encoder layers changes them: a key per scale, and its warm image equals
    its cold one."""
    prompt = "an adapter key test"
    _run(engine, prompt=prompt)
    before = _counts(engine)
    _run(engine, prompt=prompt, lora_path="unet_only.safetensors")
    assert (_counts(engine).hits - before.hits, _counts(engine).misses - before.misses) == (1, 0)

    before = _counts(engine)
    cold = _run(engine, prompt=prompt, lora_path=TEXT_ADAPTER, lora_scale=1.0)
    assert engine.backends["full"].text_encoder_adapters() != ()
    _run(engine, prompt=prompt, lora_path=TEXT_ADAPTER, lora_scale=0.5)
    warm = _run(engine, prompt=prompt, lora_path=TEXT_ADAPTER, lora_scale=1.0)
    after = _counts(engine)
    assert (after.misses - before.misses, after.hits - before.hits) == (2, 1)
    assert np.array_equal(cold, warm)
    _run(engine, prompt=prompt)  # back to no adapter: the base's entry again
    assert _counts(engine).hits - after.hits == 1
    assert engine.backends["full"].text_encoder_adapters() == ()


def test_the_text_encoder_adapter_really_changes_the_embeddings(engine):
    """Why it belongs in the key: its embeddings differ from the base's."""
    from zthumb.backends import GenerationParams

    backend = engine.backends["full"]
    params = GenerationParams("embeddings differ", None, 64, 64, 2, 6.0, seed=1, num_images=1)
    base = backend.encode_uncached(params).embeds
    _run(engine, prompt="embeddings differ", lora_path=TEXT_ADAPTER)
    adapted = backend.encode_uncached(params).embeds
    _run(engine, prompt="embeddings differ")
    assert not torch.equal(base, adapted)


def test_a_batch_looks_up_each_member(engine):
    from zthumb.batching import run_batch
    from zthumb.protocol import GenerateRequest

    plans = [engine.prepare(GenerateRequest(prompt="a batched prompt", seed=seed)) for seed in (1, 2)]
    before = _counts(engine)
    results = run_batch(engine, plans, [threading.Event(), threading.Event()])
    after = _counts(engine)
    assert all(not isinstance(result, Exception) for result in results)
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)


def test_a_backend_without_a_cache_encodes_every_time(tiny_model, adapter_root):
    from zthumb.backends import FullBackend, GenerationParams

    settings = server_settings(tiny_model, adapter_root, prompt_cache_mb=0)
    backend = FullBackend(settings, torch.device("cpu"), torch.float32)
    encoded: list[str] = []
    compel = backend.compel

    def counting(prompt: str, **kwargs: Any) -> Any:
        encoded.append(prompt)
        return compel(prompt, **kwargs)

    backend.compel = counting
    params = GenerationParams("never kept", None, 64, 64, 1, 6.0, seed=1, num_images=1)
    backend.encode_prompt(params)
    backend.encode_prompt(params)
    assert encoded == ["never kept", "never kept"]
    assert backend.prompt_cache.counts().entries == 0


def test_the_counts_are_exposed_as_metrics(make_client):
    from server_helpers import wait_ready

    client = make_client()
    assert wait_ready(client)["status"] == "ready"
    for _ in range(2):
        assert client.post("/generate", json={"prompt": "a metric prompt", "seed": 1}).status_code == 200
    text = client.get("/metrics").text
    counts = client.app.state.engine.backends["full"].prompt_cache.counts()
    assert counts.hits >= 1 and counts.bytes > 0
    for name, value in (
        ("zthumb_prompt_cache_hits_total", counts.hits),
        ("zthumb_prompt_cache_misses_total", counts.misses),
        ("zthumb_prompt_cache_evictions_total", counts.evictions),
        ("zthumb_prompt_cache_entries", counts.entries),
        ("zthumb_prompt_cache_bytes", counts.bytes),
    ):
        assert f'{name}{{backend="full"}} {float(value)}' in text, name
