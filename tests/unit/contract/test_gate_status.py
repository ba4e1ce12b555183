"""The gate verdict as status.evalGate holds it, which stages a spec runs, and rule 4's messages
(two path fields that meet)."""

from __future__ import annotations

import pytest
from pydantic_core import PydanticCustomError
from zthumb_contract.eval_spec import EvalGateSpec
from zthumb_contract.gate import evaluate_gate
from zthumb_contract.results import EvalSummary
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.stages import active_stages, build_steps
from zthumb_contract.volume_areas import check_apart, overlap_problems, value_at


def test_the_verdict_status_holds_every_check_and_leaves_out_what_was_not_measured() -> None:
    gate = EvalGateSpec(min_clip_i_gain=0.02, max_clip_t_drop=0.1, max_leakage=0.5)
    verdict = evaluate_gate(gate, EvalSummary(clip_i_gain=0.05, clip_t_drop=0.1))
    assert verdict is not None
    assert verdict.status() == {
        "passed": False,
        "message": "failed: leakage was not measured (needed for max 0.5)",
        "checks": [
            {"metric": "clipIGain", "kind": "min", "threshold": 0.02, "value": 0.05, "passed": True},
            {"metric": "clipTDrop", "kind": "max", "threshold": 0.1, "value": 0.1, "passed": True},
            # Not measured: no value, and a failed check (not a missing verdict).
            {"metric": "leakage", "kind": "max", "threshold": 0.5, "passed": False},
        ],
    }


def test_a_passing_verdict_describes_every_check_with_its_relation() -> None:
    gate = EvalGateSpec(min_clip_i_gain=0.02, max_clip_t_drop=0.1)
    verdict = evaluate_gate(gate, EvalSummary(clip_i_gain=0.05, clip_t_drop=0.05))
    assert verdict is not None and verdict.passed
    assert verdict.message == "passed: clipIGain 0.05 >= min 0.02; clipTDrop 0.05 <= max 0.1"
    failing = evaluate_gate(gate, EvalSummary(clip_i_gain=0.01, clip_t_drop=0.2))
    assert failing is not None
    assert failing.message == "failed: clipIGain 0.01 < min 0.02; clipTDrop 0.2 > max 0.1"


def test_eval_runs_only_behind_a_deploy() -> None:
    names = [s.name for s in active_stages(LoRAFinetuneSpec.model_validate({"deploy": {"enabled": False}}))]
    assert "eval" not in names and "deploy" not in names
    assert "eval" in [s.name for s in active_stages(LoRAFinetuneSpec())]


def test_the_steps_carry_the_run_name_and_the_server_url() -> None:
    steps = {s.name: s for s in build_steps("style-1", LoRAFinetuneSpec(), "/data", "http://zthumb.ml:8000")}
    assert steps["train"].args[steps["train"].args.index("--run-name") + 1] == "style-1"
    assert steps["eval"].args[steps["eval"].args.index("--server-url") + 1] == "http://zthumb.ml:8000"


@pytest.mark.parametrize(
    ("config_path", "relation"),
    [
        ("models/sdxl.safetensors", "is the same path as"),
        ("models/sdxl.safetensors/configs", "lies inside"),
        ("models", "contains"),
    ],
)
def test_two_path_fields_that_meet_are_refused_saying_how(config_path: str, relation: str) -> None:
    spec = {"baseModel": {"path": "models/sdxl.safetensors", "configPath": config_path}}
    [(field, problem)] = list(overlap_problems(spec))
    assert field.name == "baseModel.configPath"
    assert problem == (
        f"{config_path!r} {relation} spec.baseModel.path ('models/sdxl.safetensors'): no two path fields "
        "may share a path or nest, since a directory target is replaced whole and a file target overwritten"
    )
    with pytest.raises(PydanticCustomError) as error:
        check_apart(spec)
    assert error.value.type == "volume_paths_overlap"
    assert str(error.value) == f"spec.baseModel.configPath: {problem}"


def test_a_dotted_field_below_a_non_object_is_absent() -> None:
    assert value_at({"baseModel": "models/x"}, "baseModel.path") is None
    assert value_at({"baseModel": {"path": "models/x"}}, "baseModel.path") == "models/x"
