"""spec.eval.leakagePrompts and spec.eval.gate.maxLeakage: the spec model and the CRD's rules refuse
the same specs, naming the field."""

from __future__ import annotations

from typing import Any

import celpy
import jsonschema
import pytest
from celpy import celtypes
from lft_helpers import apply_defaults, crd_schema
from pydantic import ValidationError
from zthumb_contract.eval_spec import DEFAULT_LEAKAGE_PROMPTS
from zthumb_contract.spec import LoRAFinetuneSpec

_CEL = celpy.Environment()


def _spec_rules_hold(spec: dict[str, Any]) -> bool:
    node = crd_schema()["properties"]["spec"]
    defaulted = apply_defaults(node, spec)
    for rule in node["x-kubernetes-validations"]:
        if "oldSelf" in rule["rule"] or "lowerAscii" in rule["rule"]:
            continue
        program = _CEL.program(_CEL.compile(rule["rule"]))
        verdict = program.evaluate({"self": celpy.json_to_cel(defaulted)})
        assert isinstance(verdict, celtypes.BoolType)
        if not verdict:
            return False
    return True


def _item_rule_holds(prompt: str) -> bool:
    items = crd_schema()["properties"]["spec"]["properties"]["eval"]["properties"]["leakagePrompts"]["items"]
    (rule,) = items["x-kubernetes-validations"]
    verdict = _CEL.program(_CEL.compile(rule["rule"])).evaluate({"self": celpy.json_to_cel(prompt)})
    return bool(verdict)


def test_the_defaults_are_three_generic_prompts_in_both() -> None:
    assert (
        LoRAFinetuneSpec().eval.leakage_prompts == DEFAULT_LEAKAGE_PROMPTS
        and len(DEFAULT_LEAKAGE_PROMPTS) == 3
    )
    assert all("{trigger}" not in prompt and "zthumb" not in prompt for prompt in DEFAULT_LEAKAGE_PROMPTS)
    assert _spec_rules_hold({})


def test_an_empty_list_turns_it_off() -> None:
    assert LoRAFinetuneSpec.model_validate({"eval": {"leakagePrompts": []}}).eval.leakage_prompts == []


@pytest.mark.parametrize(
    ("prompts", "says"),
    [
        (["a cat", "a {trigger} cat"], r"eval\.leakagePrompts\[1\]: \{trigger\} has no place here"),
        ([""], r"eval\.leakagePrompts\[0\]: a prompt of 1 to 1000 characters"),
        (["   "], r"eval\.leakagePrompts\[0\]: a prompt of 1 to 1000 characters"),
        (["x" * 1001], r"eval\.leakagePrompts\[0\]: a prompt of 1 to 1000 characters"),
        ([f"p{i}" for i in range(17)], r"leakagePrompts\n  List should have at most 16 items"),
        (["a photo of ZThumb at night"], r"eval\.leakagePrompts\[0\] holds dataset\.triggerWord 'zthumb'"),
    ],
)
def test_bad_prompts_are_refused_naming_the_field(prompts: list[str], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        LoRAFinetuneSpec.model_validate({"eval": {"leakagePrompts": prompts}})


@pytest.mark.parametrize("prompts", [[""], [f"p{i}" for i in range(17)], ["x" * 1001]])
def test_the_crd_refuses_the_same_bounds(prompts: list[str]) -> None:
    crd_spec = {k: v for k, v in crd_schema()["properties"]["spec"].items() if not k.startswith("x-")}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(crd_spec).validate({"eval": {"leakagePrompts": prompts}})


def test_the_crd_refuses_the_placeholder() -> None:
    assert not _item_rule_holds("a {trigger} cat")
    assert _item_rule_holds("a cat")


@pytest.mark.parametrize(
    ("eval_spec", "valid"),
    [
        ({"gate": {"maxLeakage": 0.1}}, True),
        ({"gate": {"maxLeakage": 0.1}, "leakagePrompts": []}, False),
        ({"gate": {"maxLeakage": 0.1}, "clip": {"enabled": False}}, False),
        ({"gate": {"maxLeakage": 0.1}, "enabled": False}, False),
    ],
)
def test_a_leakage_gate_needs_clip_and_prompts_in_both(eval_spec: dict[str, Any], valid: bool) -> None:
    spec = {"eval": eval_spec}
    assert _spec_rules_hold(spec) is valid
    if valid:
        LoRAFinetuneSpec.model_validate(spec)
    else:
        with pytest.raises(ValidationError, match=r"eval\.gate"):
            LoRAFinetuneSpec.model_validate(spec)


@pytest.mark.parametrize("value", [-0.1, 2.1])
def test_max_leakage_out_of_range_is_refused_by_both(value: float) -> None:
    with pytest.raises(ValidationError, match="maxLeakage"):
        LoRAFinetuneSpec.model_validate({"eval": {"gate": {"maxLeakage": value}}})
    crd_spec = {k: v for k, v in crd_schema()["properties"]["spec"].items() if not k.startswith("x-")}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(crd_spec).validate({"eval": {"gate": {"maxLeakage": value}}})
