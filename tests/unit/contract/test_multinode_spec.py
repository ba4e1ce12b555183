"""spec.resources.nodes: declared once (spec.py, mirrored by the CRD), validated, and carried into
the train step."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.stages import build_steps


def _spec(resources: dict[str, object]) -> LoRAFinetuneSpec:
    return LoRAFinetuneSpec.model_validate({"resources": resources})


def _train(spec: LoRAFinetuneSpec):
    (train,) = [s for s in build_steps("style", spec, "/data", "http://x") if s.name == "train"]
    return train


def test_one_node_by_default_and_the_train_step_says_so() -> None:
    spec = LoRAFinetuneSpec()
    assert spec.resources.nodes == 1
    train = _train(spec)
    assert train.nodes == 1
    assert train.args[train.args.index("--nodes") + 1] == "1"


def test_nodes_reach_the_train_step_only() -> None:
    spec = _spec({"nodes": 4, "gpus": 8})
    steps = build_steps("style", spec, "/data", "http://x")
    assert {s.name: s.nodes for s in steps} == {"fetch-model": 1, "prepare-dataset": 1, "train": 4, "eval": 1}
    train = _train(spec)
    assert train.args[train.args.index("--nodes") + 1] == "4"
    assert train.args[train.args.index("--gpus") + 1] == "8"


@pytest.mark.parametrize("nodes", [0, 65, -1])
def test_nodes_out_of_bounds_are_refused_naming_the_field(nodes: int) -> None:
    with pytest.raises(ValidationError) as info:
        _spec({"nodes": nodes})
    assert [e["loc"] for e in info.value.errors()] == [("resources", "nodes")]


def test_several_nodes_without_gpus_are_refused_naming_nodes() -> None:
    with pytest.raises(ValidationError) as info:
        _spec({"nodes": 2, "gpus": 0})
    (error,) = info.value.errors()
    assert error["loc"] == ("resources", "nodes")
    assert "gpus >= 1" in error["msg"]
    # One node on a CPU stays fine, as do several GPU nodes.
    assert _spec({"nodes": 1, "gpus": 0}).resources.nodes == 1
    assert _spec({"nodes": 64, "gpus": 1}).resources.nodes == 64
