"""spec.dataset.captioning: the spec model and the CRD's rules refuse the same specs, naming the field."""

from __future__ import annotations

from typing import Any

import celpy
import jsonschema
import pytest
from celpy import celtypes
from lft_helpers import apply_defaults, crd_schema
from pydantic import ValidationError
from zthumb_contract.spec import LoRAFinetuneSpec

_CEL = celpy.Environment()
PINNED = {
    "url": "https://example.com/blip/model.safetensors",
    "sha256": "a" * 64,
    "configUrl": "https://example.com/blip/",
}


def _captioning_node() -> dict[str, Any]:
    return crd_schema()["properties"]["spec"]["properties"]["dataset"]["properties"]["captioning"]


def _refusing_rules(captioning: dict[str, Any]) -> list[dict[str, Any]]:
    """The CRD's rules on spec.dataset.captioning that refuse ``captioning`` (defaults applied)."""
    node = _captioning_node()
    defaulted = apply_defaults(node, captioning)
    refused = []
    for rule in node["x-kubernetes-validations"]:
        verdict = _CEL.program(_CEL.compile(rule["rule"])).evaluate({"self": celpy.json_to_cel(defaulted)})
        assert isinstance(verdict, celtypes.BoolType)
        if not verdict:
            refused.append(rule)
    return refused


def test_off_by_default_in_both() -> None:
    assert LoRAFinetuneSpec().dataset.captioning.enabled is False
    assert apply_defaults(_captioning_node(), {})["enabled"] is False
    assert _refusing_rules({}) == []


def test_enabled_with_a_pinned_model_is_accepted_by_both() -> None:
    captioning = {"enabled": True, "mode": "all", **PINNED}
    assert _refusing_rules(captioning) == []
    jsonschema.Draft4Validator(_captioning_node()).validate(captioning)
    assert (
        LoRAFinetuneSpec.model_validate({"dataset": {"captioning": captioning}}).dataset.captioning.mode
        == "all"
    )


@pytest.mark.parametrize("field", ["url", "sha256", "configUrl"])
def test_enabled_without_a_pinned_model_is_refused_by_both_naming_the_field(field: str) -> None:
    captioning = {"enabled": True, **{k: v for k, v in PINNED.items() if k != field}}
    (rule,) = _refusing_rules(captioning)
    assert rule["fieldPath"] == f".{field}"
    assert rule["message"].startswith(f"dataset.captioning.{field} is required")
    with pytest.raises(ValidationError, match=rf"dataset\.captioning\.{field} is required"):
        LoRAFinetuneSpec.model_validate({"dataset": {"captioning": captioning}})


@pytest.mark.parametrize(
    ("field", "value"),
    [("maxNewTokens", 0), ("maxNewTokens", 129), ("batchSize", 0), ("batchSize", 65), ("mode", "some"),
     ("sha256", "A" * 64), ("prompt", "x" * 201), ("maxBytes", 0)],
)  # fmt: skip
def test_out_of_bounds_values_are_refused_by_both(field: str, value: Any) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(_captioning_node()).validate({field: value})
    with pytest.raises(ValidationError, match=field):
        LoRAFinetuneSpec.model_validate({"dataset": {"captioning": {field: value}}})
