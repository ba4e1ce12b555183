"""spec.training.compile / compileScope / compileMode: what is compiled, with which options, and
that a compiled run trains the same adapter as an eager one."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import copy_into_run_dir, prepare_once, tiny_config
from zthumb_trainer.export.adapter import DIFFUSERS_WEIGHTS
from zthumb_trainer.train.components import load_components
from zthumb_trainer.train.loop import run_training
from zthumb_trainer.train.model_setup import compile_unet, uses_cuda_graphs


@pytest.fixture(scope="module")
def prepared(synthetic_dataset, tmp_path_factory):
    return prepare_once(synthetic_dataset, tmp_path_factory.mktemp("prepared"))


def _unet(tiny_model):
    return load_components(tiny_model.single_file, tiny_model.diffusers_dir).unet


def _compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def test_blocks_scope_compiles_each_transformer_block_and_nothing_else(tiny_model):
    unet = _unet(tiny_model)
    keys = list(unet.state_dict())
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert blocks

    assert compile_unet(unet, backend="aot_eager", scope="blocks") == len(blocks)

    assert all(_compiled(block) for block in blocks)
    assert not _compiled(unet)
    assert list(unet.state_dict()) == keys  # checkpoints and the export see the same names


def test_unet_scope_compiles_the_whole_unet_as_one_module(tiny_model):
    unet = _unet(tiny_model)
    keys = list(unet.state_dict())

    assert compile_unet(unet, backend="aot_eager", scope="unet") == 1

    assert _compiled(unet)
    assert not any(_compiled(m) for m in unet.modules() if m is not unet)
    assert list(unet.state_dict()) == keys


def test_the_whole_unet_with_lora_traces_as_one_graph_for_training(tiny_model):
    """CUDA graphs (``reduce-overhead``) capture only what dynamo traces in one piece: a graph break
    in the UNet's forward (a diffusers or PEFT change) would split every training step into
    several graphs with eager launches between them, the launch cost that scope ``unet`` removes."""
    from zthumb_trainer.train.components import load_components
    from zthumb_trainer.train.model_setup import add_lora

    components = load_components(tiny_model.single_file, tiny_model.diffusers_dir)
    components.unet.requires_grad_(False)
    unet = add_lora(components, rank=4, alpha=4.0, use_dora=False, text_encoders=False)["unet"]
    unet.train()
    config = unet.config
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim

    def step(latents, timesteps, embeds, text_embeds, time_ids):
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        return unet(latents, timesteps, embeds, added_cond_kwargs=added, return_dict=False)[0]

    explained = torch._dynamo.explain(step)(
        torch.randn(1, config.in_channels, 8, 8),
        torch.tensor([500]),
        torch.randn(1, 77, config.cross_attention_dim),
        torch.randn(1, pooled),
        torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]),
    )

    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


class _Recorder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, object]] = []

    def compile(self, **options: object) -> None:  # type: ignore[override]
        self.calls.append(options)


@pytest.mark.parametrize(
    ("backend", "mode", "expected"),
    [
        ("inductor", "default", {"backend": "inductor"}),
        ("inductor", "reduce-overhead", {"backend": "inductor", "mode": "reduce-overhead"}),
        (
            "inductor",
            "max-autotune-no-cudagraphs",
            {"backend": "inductor", "mode": "max-autotune-no-cudagraphs"},
        ),
        # A mode is inductor's; other backends would only warn that they ignore it.
        ("aot_eager", "reduce-overhead", {"backend": "aot_eager"}),
    ],
)
def test_the_mode_goes_to_inductor_only(backend, mode, expected):
    unet = _Recorder()
    compile_unet(unet, backend=backend, scope="unet", mode=mode)
    assert unet.calls == [expected]


def test_cuda_graphs_only_with_reduce_overhead_on_cuda():
    assert uses_cuda_graphs("reduce-overhead", torch.device("cuda"))
    assert not uses_cuda_graphs("reduce-overhead", torch.device("cpu"))
    assert not uses_cuda_graphs("default", torch.device("cuda"))
    assert not uses_cuda_graphs("max-autotune-no-cudagraphs", torch.device("cuda"))


@pytest.mark.slow
def test_whole_unet_compile_trains_the_same_adapter_as_eager(prepared, tiny_model, tmp_path):
    """aot_eager runs the graphs dynamo and AOT autograd capture (forward and backward) with eager
    kernels: the same losses and adapter up to float reassociation, which bounds the tolerance."""
    results = {}
    for name, options in {
        "eager": {},
        "compiled": {"compile": True, "compile_scope": "unet", "compile_mode": "reduce-overhead",
                     "compile_backend": "aot_eager"},
    }.items():  # fmt: skip
        config = tiny_config(
            copy_into_run_dir(prepared, tmp_path / name), tiny_model, max_train_steps=3, **options
        )
        summary = run_training(config)
        losses = [
            json.loads(line)["loss"] for line in (config.run_dir / "progress.jsonl").read_text().splitlines()
        ]
        results[name] = (summary, losses, load_file(str(config.export_dir / DIFFUSERS_WEIGHTS)))

    assert results["eager"][0]["compile"] is False
    assert results["compiled"][0]["compile"] == "unet, reduce-overhead"
    assert results["compiled"][1] == pytest.approx(results["eager"][1], rel=1e-4)
    eager_weights, compiled_weights = results["eager"][2], results["compiled"][2]
    assert eager_weights.keys() == compiled_weights.keys()
    for key, value in eager_weights.items():
        torch.testing.assert_close(compiled_weights[key], value, rtol=1e-4, atol=1e-5, msg=key)
