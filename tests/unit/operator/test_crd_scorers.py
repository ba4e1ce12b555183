"""spec.eval.dino, spec.eval.aesthetic and their gate thresholds (minDinoGain, maxAestheticDrop): the
spec model and the CRD's CEL rules accept and refuse the same specs, naming the field."""

from __future__ import annotations

from typing import Any

import celpy
import pytest
from celpy import celtypes
from lft_helpers import apply_defaults, crd_schema
from pydantic import ValidationError
from zthumb_contract.scorer_spec import DINO_SHA256, DINO_URL
from zthumb_contract.spec import LoRAFinetuneSpec

_CEL = celpy.Environment()
HEAD = {"enabled": True, "url": "https://example.com/head.safetensors", "sha256": "ab" * 32}


def _holds(rule: str, value: Any) -> bool:
    verdict = _CEL.program(_CEL.compile(rule)).evaluate({"self": celpy.json_to_cel(value)})
    assert isinstance(verdict, celtypes.BoolType)
    return bool(verdict)


def crd_refusals(spec: dict[str, Any]) -> list[str]:
    """The messages of the CRD's rules on spec and on spec.eval.aesthetic that ``spec`` breaks."""
    node = crd_schema()["properties"]["spec"]
    defaulted = apply_defaults(node, spec)
    # The path rules (lowerAscii) are test_crd_paths.py's; oldSelf needs an update.
    rules = node["x-kubernetes-validations"]
    checked = [rule for rule in rules if "oldSelf" not in rule["rule"] and "lowerAscii" not in rule["rule"]]
    broken = [rule["message"] for rule in checked if not _holds(rule["rule"], defaulted)]
    aesthetic = node["properties"]["eval"]["properties"]["aesthetic"]
    for rule in aesthetic["x-kubernetes-validations"]:
        if not _holds(rule["rule"], defaulted["eval"]["aesthetic"]):
            broken.append(rule["message"])
    return broken


def test_both_are_off_by_default_and_dino_names_its_pinned_model() -> None:
    spec = LoRAFinetuneSpec()
    assert not spec.eval.dino.enabled and not spec.eval.aesthetic.enabled
    assert spec.eval.dino.url == DINO_URL and spec.eval.dino.sha256 == DINO_SHA256
    assert "/resolve/ed25f3a31f01632728cabb09d1542f84ab7b0056/" in DINO_URL  # a revision, not main
    assert crd_refusals({}) == []


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"eval": {"gate": {"minDinoGain": 0.05}}}, r"eval\.gate\.minDinoGain needs eval\.dino\.enabled"),
        (
            {"eval": {"gate": {"maxAestheticDrop": 0.5}}},
            r"eval\.gate\.maxAestheticDrop needs eval\.aesthetic\.enabled",
        ),
        (
            {"eval": {"aesthetic": {"enabled": True}}},
            r"eval\.aesthetic\.enabled needs eval\.aesthetic\.url and sha256",
        ),
        (
            {"eval": {"aesthetic": {**HEAD, "sha256": None}}},
            r"eval\.aesthetic\.enabled needs eval\.aesthetic\.url and sha256",
        ),
        (
            {"eval": {"clip": {"enabled": False}, "aesthetic": HEAD}},
            r"eval\.aesthetic\.enabled needs eval\.clip\.enabled",
        ),
    ],
)
def test_refused_by_both_naming_the_field(spec: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        LoRAFinetuneSpec.model_validate(spec)
    crd_spec = {"eval": {**spec["eval"], "aesthetic": {
        k: v for k, v in spec["eval"].get("aesthetic", {}).items() if v is not None
    }}}  # fmt: skip
    refusals = crd_refusals(crd_spec)
    assert refusals and any(message.startswith(says.replace("\\", "")[:30]) for message in refusals), refusals


@pytest.mark.parametrize(
    "spec",
    [
        {"eval": {"dino": {"enabled": True}, "gate": {"minDinoGain": 0.05}}},
        {"eval": {"aesthetic": HEAD, "gate": {"maxAestheticDrop": 0.5}}},
        {"eval": {"dino": {"enabled": True}, "aesthetic": HEAD}},
    ],
)
def test_accepted_by_both(spec: dict[str, Any]) -> None:
    LoRAFinetuneSpec.model_validate(spec)
    assert crd_refusals(spec) == []


@pytest.mark.parametrize(("field", "value"), [("minDinoGain", 2.5), ("maxAestheticDrop", 11)])
def test_thresholds_out_of_range_are_refused_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        LoRAFinetuneSpec.model_validate({"eval": {"gate": {field: value}}})
    gate = crd_schema()["properties"]["spec"]["properties"]["eval"]["properties"]["gate"]["properties"]
    assert not gate[field]["minimum"] <= value <= gate[field]["maximum"]
