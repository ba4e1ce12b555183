"""The CRD's path rules are zthumb_contract.volume_areas.PATH_FIELDS, and refuse what spec.py refuses.

The expected ``pattern``, ``maxLength`` and CEL rules are derived here from the table; then every
path field is tried with the same hostile values against both the spec model and the CRD: its
``pattern`` (RE2, as the API server matches it) and its CEL rules (cel-python, with the one
Kubernetes string function they use, ``lowerAscii``). Both must refuse the same values and name
the same field. The e2e test (tests/e2e/test_spec_paths.py) sends them to a real API server.
"""

from __future__ import annotations

import functools
from itertools import combinations
from typing import Any

import celpy
import pytest
import re2
from celpy import celtypes
from lft_helpers import apply_defaults, crd_schema
from pydantic import ValidationError
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.volume_areas import (
    DATASETS,
    FIELDS_BY_NAME,
    MAX_PATH_LENGTH,
    MODELS,
    PATH_FIELDS,
    RESERVED_AREAS,
    WORK_SUFFIXES,
    PathField,
    value_at,
)

# Path-like fields that name no place on the volume: the mount point of the volume itself.
NOT_ON_THE_VOLUME = {"storage.mountPath"}


def reserved_rule(field: PathField) -> str:
    areas = ", ".join(f"'{area}'" for area in RESERVED_AREAS)
    return (
        f"[{areas}].all(r, !(self.lowerAscii() + '/').startsWith(r + '/')"
        " && !(r + '/').startsWith(self.lowerAscii() + '/'))"
    )


def work_suffix_rule() -> str:
    suffixes = "|".join(suffix.removeprefix(".") for suffix in WORK_SUFFIXES)
    return f"!self.lowerAscii().matches('[.]({suffixes})(/|$)')"


def apart_rule(earlier: PathField, later: PathField) -> str:
    # The API server also checks the rules against spec's own default ({}), before any nested
    # default applies: each field is guarded by has().
    present = []
    for field in (earlier, later):
        keys = field.name.split(".")
        present += [f"has(self.{'.'.join(keys[: n + 1])})" for n in range(len(keys))]
    guard = " && ".join(dict.fromkeys(present))
    first, second = (f"self.{f.name}.lowerAscii() + '/'" for f in (earlier, later))
    return f"!({guard}) || !(({second}).startsWith({first}) || ({first}).startsWith({second}))"


def same_area_pairs() -> list[tuple[PathField, PathField]]:
    return [(a, b) for a, b in combinations(PATH_FIELDS, 2) if a.area == b.area]


@functools.cache
def spec_node() -> dict[str, Any]:
    """The CRD's spec schema, read once (the tests only read it)."""
    return crd_schema()["properties"]["spec"]


def field_node(field: PathField) -> dict[str, Any]:
    node = spec_node()
    for key in field.name.split("."):
        node = node["properties"][key]
    return node


def test_each_table_field_has_the_tables_pattern_length_and_rules() -> None:
    for field in PATH_FIELDS:
        node = field_node(field)
        assert node["type"] == "string", field.name
        assert node["pattern"] == field.pattern, field.name
        assert node["maxLength"] == MAX_PATH_LENGTH, field.name
        rules = node["x-kubernetes-validations"]
        assert [rule["rule"] for rule in rules] == [reserved_rule(field), work_suffix_rule()], field.name
        for rule in rules:
            assert rule["message"].startswith(f"{field.name} "), rule
        assert f"below {field.area}/" in node["description"], field.name


def test_each_pair_of_fields_in_one_area_has_a_rule_on_spec_naming_the_later() -> None:
    rules = {rule["rule"]: rule for rule in spec_node()["x-kubernetes-validations"]}
    apart = {rule for rule in rules if "lowerAscii() + '/').startsWith(self." in rule}
    expected = {apart_rule(a, b): (a, b) for a, b in same_area_pairs()}
    assert apart == set(expected)
    for text, (earlier, later) in expected.items():
        assert rules[text]["fieldPath"] == f".{later.name}"
        message = rules[text]["message"]
        assert message.startswith(f"{later.name} ") and earlier.name in message, message


def _path_like(node: dict[str, Any], prefix: str = "") -> set[str]:
    found = set()
    for name, prop in (node.get("properties") or {}).items():
        dotted = f"{prefix}{name}"
        if name == "path" or name.endswith("Path"):
            found.add(dotted)
        found |= _path_like(prop, f"{dotted}.")
    return found


def test_every_path_like_field_of_the_crd_and_the_model_is_in_the_table() -> None:
    assert _path_like(spec_node()) - NOT_ON_THE_VOLUME == set(FIELDS_BY_NAME)
    dumped = LoRAFinetuneSpec().model_dump(by_alias=True)

    def keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
        out = set()
        for key, value in tree.items():
            if key == "path" or key.endswith("Path"):
                out.add(prefix + key)
            if isinstance(value, dict):
                out |= keys(value, f"{prefix}{key}.")
        return out

    assert keys(dumped) - NOT_ON_THE_VOLUME == set(FIELDS_BY_NAME)


# --------------------------------------------------------------------------- both sides agree


def _lower_ascii(value: celtypes.StringType) -> celtypes.StringType:
    return celtypes.StringType(value.lower() if value.isascii() else value)


_CEL = celpy.Environment()


@functools.cache
def _cel_program(rule: str) -> celpy.Runner:
    return _CEL.program(_CEL.compile(rule), functions={"lowerAscii": _lower_ascii})


def _cel_holds(rule: str, value: Any) -> bool:
    """The rule's verdict on ``value``; an evaluation error (a missing key) raises CELEvalError."""
    verdict = _cel_program(rule).evaluate({"self": celpy.json_to_cel(value)})
    assert isinstance(verdict, celtypes.BoolType), (rule, verdict)
    return bool(verdict)


def crd_refusals(spec: dict[str, Any]) -> set[str]:
    """The path fields the API server names refusing ``spec``, defaulted as it defaults. As it does,
    a value over maxLength skips every CEL rule; a pattern mismatch does not."""
    spec = apply_defaults(spec_node(), spec)
    values = {field.name: value_at(spec, field.name) for field in PATH_FIELDS}
    too_long = {name for name, value in values.items() if len(value) > MAX_PATH_LENGTH}
    if too_long:
        return too_long
    refused = set()
    for field in PATH_FIELDS:
        node, value = field_node(field), values[field.name]
        if not re2.search(node["pattern"], value):
            refused.add(field.name)
        if not all(_cel_holds(rule["rule"], value) for rule in node["x-kubernetes-validations"]):
            refused.add(field.name)
    for rule in spec_node()["x-kubernetes-validations"]:
        if "oldSelf" not in rule["rule"] and not _cel_holds(rule["rule"], spec):
            refused.add(rule["fieldPath"].removeprefix("."))
    return refused


def model_refusals(spec: dict[str, Any]) -> set[str]:
    """The path fields spec.py names refusing ``spec``: the error's location, or for two fields
    that overlap the field its message starts with."""
    try:
        LoRAFinetuneSpec.model_validate(spec)
    except ValidationError as error:
        named = set()
        for detail in error.errors():
            if detail["loc"]:
                named.add(".".join(str(part) for part in detail["loc"]))
            else:
                named.add(detail["msg"].removeprefix("spec.").split(":")[0])
        return named
    return set()


def spec_with(values: dict[str, str]) -> dict[str, Any]:
    """A spec with each dotted field (``baseModel.configPath``) set."""
    spec: dict[str, Any] = {}
    for dotted, value in values.items():
        node = spec
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return spec


HOSTILE = [
    "",
    ".",
    "..",
    "models",
    "datasets",
    "outputs",
    "outputs/x",
    "models/lora",
    "models/lora/x",
    "models/LoRA/x",
    "datasets/cache",
    "datasets/cache/x",
    "datasets/CACHE",
    "models/",
    "datasets/",
    "/models/x",
    "/datasets/x",
    "models//x",
    "datasets//x",
    "models/./x",
    "a/../models",
    "models/../models/x",
    "datasets/x/..",
    "models/.hidden",
    "datasets/.x",
    "models/x.",
    "models/x.part",
    "models/x.safetensors.verified",
    "datasets/x.PART/y",
    "models\\x",
    "models/x\n",
    "models/x\x00",
    "models/x y",
    "\uff4dodels/x",  # fullwidth m
    "models\u2215lora",  # division slash
    "models/lor\u0430",  # Cyrillic a
    "models/" + "x" * MAX_PATH_LENGTH,
    "datasets/" + "x" * MAX_PATH_LENGTH,
]
VALID = {
    "models": ["models/x", "models/sub/dir_1-a.safetensors", "models/lora2", "models/lora-x/y"],
    "datasets": ["datasets/z-style", "datasets/a/b.c", "datasets/cache2", "datasets/caches/x"],
}


@pytest.mark.parametrize("field", PATH_FIELDS, ids=lambda f: f.name)
@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_a_hostile_path_is_refused_by_both_naming_the_field(field: PathField, value: str) -> None:
    spec = spec_with({field.name: value})
    assert model_refusals(spec) == {field.name}
    # The API server may name more: a value like `models` also contains the other fields' targets.
    assert field.name in crd_refusals(spec)


@pytest.mark.parametrize("field", PATH_FIELDS, ids=lambda f: f.name)
def test_a_path_in_another_area_is_refused_by_both(field: PathField) -> None:
    for area in {MODELS, DATASETS} - {field.area}:
        spec = spec_with({field.name: f"{area}/x"})
        assert model_refusals(spec) == {field.name}
        assert crd_refusals(spec) == {field.name}


@pytest.mark.parametrize("field", PATH_FIELDS, ids=lambda f: f.name)
def test_a_valid_path_passes_both(field: PathField) -> None:
    for value in VALID[field.area]:
        spec = spec_with({field.name: value})
        assert model_refusals(spec) == set(), value
        assert crd_refusals(spec) == set(), value


def test_the_defaults_pass_both() -> None:
    assert model_refusals({}) == set()
    assert crd_refusals({}) == set()


def test_the_rules_on_spec_hold_for_specs_own_default() -> None:
    """The API server checks spec's default ({}) against the rules on spec as it is, nested defaults
    not applied, when the CRD is created: a rule that reads an absent field fails the CRD."""
    for rule in spec_node()["x-kubernetes-validations"]:
        if "oldSelf" not in rule["rule"]:
            assert _cel_holds(rule["rule"], spec_node()["default"]), rule["rule"]


@pytest.mark.parametrize(("earlier", "later"), same_area_pairs(), ids=lambda f: f.name)
def test_two_fields_that_meet_are_refused_by_both_naming_the_later(
    earlier: PathField, later: PathField
) -> None:
    area = earlier.area
    meeting = [("a", "a"), ("a", "A"), ("a", "a/b"), ("a/b", "a")]  # same, same on SMB, inside, around
    for first, second in meeting:
        spec = spec_with({earlier.name: f"{area}/{first}", later.name: f"{area}/{second}"})
        assert model_refusals(spec) == {later.name}, (first, second)
        assert crd_refusals(spec) == {later.name}, (first, second)
    beside = spec_with({earlier.name: f"{area}/a", later.name: f"{area}/ab"})
    assert model_refusals(beside) == set() and crd_refusals(beside) == set()


@pytest.mark.parametrize(("earlier", "later"), same_area_pairs(), ids=lambda f: f.name)
def test_a_field_set_to_another_fields_default_is_refused_by_both(
    earlier: PathField, later: PathField
) -> None:
    defaults = LoRAFinetuneSpec().model_dump(by_alias=True)
    for field, other in ((earlier, later), (later, earlier)):
        spec = spec_with({field.name: value_at(defaults, other.name)})
        assert model_refusals(spec) == {later.name}
        assert crd_refusals(spec) == {later.name}
