"""The CRD is structurally sound, documented, and in step with zthumb_contract.spec."""

from __future__ import annotations

import typing
from typing import Any

import jsonschema
import pytest
import yaml
from lft_helpers import CRD_PATH, EXAMPLE_PATH, apply_defaults, crd_schema, load_crd
from pydantic import BaseModel
from zthumb_contract import crd
from zthumb_contract.results import EvalSummary, TrainResults
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.stages import PHASES

# Fields whose CRD default deliberately differs from spec.py (none at present: images.trainer
# has no default in either, so that the operator's ZTHUMB_OPERATOR_TRAINER_IMAGE applies).
DEFAULT_EXCEPTIONS: set[tuple[str, ...]] = set()


def walk(schema: dict[str, Any], path: tuple[str, ...] = ()):
    yield path, schema
    for name, prop in (schema.get("properties") or {}).items():
        yield from walk(prop, (*path, name))
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], (*path, "[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], (*path, "{}"))


def test_names_scope_and_subresources() -> None:
    crd = load_crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "lorafinetunes.zthumb.io"
    assert spec["group"] == "zthumb.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "LoRAFinetune"
    assert spec["names"]["plural"] == "lorafinetunes"
    assert spec["names"]["shortNames"] == ["lft"]
    assert "zthumb" in spec["names"]["categories"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a mapping with a key twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        repeated = {key for key in keys if keys.count(key) > 1}
        if repeated:
            raise yaml.constructor.ConstructorError(None, None, f"repeated keys {repeated}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def test_no_key_is_written_twice() -> None:
    yaml.load(CRD_PATH.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects


def test_printer_columns() -> None:
    cols = {c["name"].upper(): c for c in load_crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert list(cols)[:3] == ["PHASE", "PROGRESS", "AGE"]
    assert cols["PHASE"]["jsonPath"] == ".status.phase"
    assert cols["PROGRESS"]["jsonPath"] == ".status.progress.percent"
    assert cols["STEPS/S"]["jsonPath"] == ".status.training.stepsPerSecond"
    assert cols["LEAKAGE"]["jsonPath"] == ".status.evalSummary.leakage"
    assert cols["ETA"]["jsonPath"] == ".status.progress.estimatedRemainingSeconds"
    assert cols["ETA"]["type"] == "integer"
    assert cols["RECOMMENDED"]["jsonPath"] == ".status.evalSummary.recommendedScale"
    for wide in (
        "REPORT",
        "MESSAGE",
        "STEPS/S",
        "ETA",
        "CLIP-I GAIN",
        "CLIP-T DROP",
        "LEAKAGE",
        "RECOMMENDED",
    ):
        assert cols[wide]["priority"] == 1
    for col in cols.values():
        assert col.get("priority", 0) in (0, 1)


def test_every_field_has_a_description() -> None:
    missing = []
    for path, node in walk(crd_schema()):
        if path in ((), ("metadata",)) or path[-1] in ("[]", "{}"):
            continue
        if not node.get("description"):
            missing.append(".".join(path))
    assert not missing, f"fields without a description: {missing}"


def test_schema_is_structural() -> None:
    """Every node has a type (or is int-or-string); no $ref; never properties + additionalProperties."""
    for path, node in walk(crd_schema()):
        if path and path[-1] == "{}":
            assert "type" in node
            continue
        assert "$ref" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        assert not ("properties" in node and "additionalProperties" in node), path


def test_defaults_validate_against_their_schema() -> None:
    for _path, node in walk(crd_schema()):
        if "default" in node:
            jsonschema.Draft4Validator({k: v for k, v in node.items() if not k.startswith("x-")}).validate(
                node["default"]
            )


def test_status_shape() -> None:
    status = crd_schema()["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == [
        "Pending",
        "Downloading",
        "PreparingDataset",
        "Training",
        "Deploying",
        "Evaluating",
        "Succeeded",
        "Failed",
    ]
    assert list(PHASES) == status["phase"]["enum"]  # the operator's own list, metrics labels included
    conds = status["conditions"]
    assert conds["x-kubernetes-list-type"] == "map"
    assert conds["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conds["items"]["properties"]) >= {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    progress = status["progress"]["properties"]
    assert set(progress) >= {
        "step",
        "totalSteps",
        "loss",
        "estimatedRemainingSeconds",
        "lastUpdateTime",
        "percent",
    }
    assert progress["estimatedRemainingSeconds"]["type"] == "integer"
    assert progress["lastUpdateTime"] == {
        **progress["lastUpdateTime"],
        "type": "string",
        "format": "date-time",
    }
    for key in (
        "jobs",
        "adapterPath",
        "reportPath",
        "evalSummary",
        "startTime",
        "completionTime",
        "observedGeneration",
        "message",
        "deploy",
    ):
        assert key in status, key
    assert "previousEnv" in status["deploy"]["properties"]
    # status.training is what zthumb_contract.results.TrainResults carries, enum included.
    training = status["training"]["properties"]
    fields = TrainResults.model_fields
    assert set(training) == {info.alias or name for name, info in fields.items()}
    assert {"stepsPerSecond", "peakMemoryBytes", "memoryKind"} <= set(training)
    assert training["memoryKind"]["enum"] == list(
        typing.get_args(fields["memory_kind"].annotation)[0].__args__
    )


_JSON_TYPES = {int: "integer", float: "number", str: "string"}


def test_status_eval_summary_mirrors_the_results_model() -> None:
    """status.evalSummary holds exactly what EvalSummary carries, each with its JSON type, so the
    API server neither prunes a number the operator sets nor keeps one it never sets."""
    summary = crd_schema()["properties"]["status"]["properties"]["evalSummary"]
    assert "additionalProperties" not in summary
    fields = EvalSummary.model_fields
    expected = {}
    for name, info in fields.items():
        (kind,) = [arg for arg in typing.get_args(info.annotation) if arg is not type(None)]
        expected[info.alias or name] = _JSON_TYPES[kind]
    assert {key: node["type"] for key, node in summary["properties"].items()} == expected
    assert all(node.get("description") for node in summary["properties"].values())
    # The printer columns and the gate's checks name its numbers.
    assert {"clipIGain", "clipTDrop", "meanPixelDifference", "leakage"} <= set(expected)


def test_bounds_and_validations() -> None:
    spec = crd_schema()["properties"]["spec"]
    props = spec["properties"]
    rank = props["training"]["properties"]["rank"]
    assert (rank["minimum"], rank["maximum"]) == (1, 256)
    assert props["training"]["properties"]["maxTrainSteps"]["minimum"] == 1
    res = props["dataset"]["properties"]["resolution"]
    assert (res["minimum"], res["maximum"], res["multipleOf"]) == (256, 2048, 64)
    assert props["deploy"]["properties"]["loraScale"]["maximum"] == 2
    assert props["eval"]["properties"]["scales"]["items"] == {"type": "number", "minimum": 0, "maximum": 2}
    assert props["training"]["properties"]["mixedPrecision"]["enum"] == ["no", "fp16", "bf16"]
    rules = {v["rule"] for v in spec["x-kubernetes-validations"]}
    assert "self == oldSelf" in rules  # the documented policy: spec immutable once created


# --------------------------------------------------------------------------- spec.py sync


def _crd_props(node: dict[str, Any]) -> dict[str, Any]:
    return node.get("properties") or {}


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _compare(model: type[BaseModel], node: dict[str, Any], path: tuple[str, ...], errors: list[str]) -> None:
    props = _crd_props(node)
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    for alias in set(fields) - set(props):
        errors.append(f"spec.{'.'.join((*path, alias))}: in spec.py, missing from the CRD")
    for alias in set(props) - set(fields):
        errors.append(f"spec.{'.'.join((*path, alias))}: in the CRD, missing from spec.py")
    for alias in set(fields) & set(props):
        sub = _model_of(fields[alias].annotation)
        if sub is not None:
            _compare(sub, props[alias], (*path, alias), errors)


def test_crd_fields_match_spec_py() -> None:
    errors: list[str] = []
    _compare(LoRAFinetuneSpec, crd_schema()["properties"]["spec"], (), errors)
    assert not errors, "\n".join(sorted(errors))


def _drop(tree: dict[str, Any], path: tuple[str, ...]) -> None:
    for key in path[:-1]:
        tree = tree.get(key) or {}
    tree.pop(path[-1], None)


def test_crd_defaults_equal_spec_py_defaults() -> None:
    """An empty spec defaulted by the CRD equals spec.py's defaults (None = no CRD default)."""
    crd_defaulted = apply_defaults(crd_schema()["properties"]["spec"], {})
    py_defaults = LoRAFinetuneSpec().model_dump(by_alias=True, exclude_none=True)
    for path in DEFAULT_EXCEPTIONS:
        _drop(py_defaults, path)
        _drop(crd_defaulted, path)
    assert crd_defaulted == py_defaults


def _json_schema_bounds(model: type[BaseModel]) -> dict[tuple[str, ...], dict[str, Any]]:
    schema = model.model_json_schema(by_alias=True)
    defs = schema.get("$defs", {})
    out: dict[tuple[str, ...], dict[str, Any]] = {}

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            return defs[node["$ref"].split("/")[-1]]
        for alt in node.get("anyOf") or []:
            if alt.get("type") != "null":
                return resolve(alt)
        return node

    def visit(node: dict[str, Any], path: tuple[str, ...]) -> None:
        node = resolve(node)
        for name, prop in (node.get("properties") or {}).items():
            target = resolve(prop)
            keys = (
                "minimum",
                "maximum",
                "exclusiveMinimum",
                "exclusiveMaximum",
                "multipleOf",
                "enum",
                "pattern",
            )
            found = {k: target[k] for k in keys if k in target}
            if found:
                out[(*path, name)] = found
            visit(target, (*path, name))

    visit(schema, ())
    return out


def test_crd_bounds_match_spec_py() -> None:
    spec = crd_schema()["properties"]["spec"]
    mismatches = []
    for path, bounds in _json_schema_bounds(LoRAFinetuneSpec).items():
        node = spec
        for key in path:
            node = node["properties"][key]
        for key, value in bounds.items():
            if key in ("exclusiveMinimum", "exclusiveMaximum"):  # JSON Schema 2020 vs OpenAPI 3.0 spelling
                bound = "minimum" if key == "exclusiveMinimum" else "maximum"
                if not (node.get(key) is True and node.get(bound) == value):
                    mismatches.append(f"{'.'.join(path)}: {key} {value}")
            elif node.get(key) != value:
                mismatches.append(f"{'.'.join(path)}: {key} spec.py={value} crd={node.get(key)}")
    assert not mismatches, mismatches


def test_example_is_valid_for_spec_py_and_the_crd() -> None:
    example = yaml.safe_load(EXAMPLE_PATH.read_text())
    assert example["metadata"] == {"name": "z-style", "namespace": "ml"}
    spec = LoRAFinetuneSpec.from_manifest(example)
    assert spec.dataset.trigger_word == "z"
    crd_spec = {k: v for k, v in crd_schema()["properties"]["spec"].items() if not k.startswith("x-")}
    jsonschema.Draft4Validator(crd_spec).validate(example["spec"])


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("training", "rank"), 0),
        (("training", "rank"), 257),
        (("dataset", "resolution"), 1000),
        (("deploy", "loraScale"), 2.5),
        (("training", "mixedPrecision"), "fp8"),
        (("resources", "nodes"), 0),
        (("resources", "nodes"), 65),
        (("training", "optimizer"), "sgd"),
        (("training", "emaDecay"), 1.0),
        (("training", "emaDecay"), 0),
        (("training", "useDora"), "yes"),
        (("baseModel", "maxBytes"), 0),
        (("baseModel", "maxBytes"), 2**40 + 1),
        (("eval", "clip", "maxBytes"), 0),
        (("baseModel", "allowInsecureHttp"), "yes"),
        (("images", "pullSecrets"), ["Team_Registry"]),
        (("images", "pullSecrets"), [f"s{i}" for i in range(9)]),
        (("eval", "outOfDistributionPrompts"), [""]),
        (("eval", "outOfDistributionPrompts"), ["x" * 1001]),
        (("eval", "outOfDistributionPrompts"), [f"{{trigger}} {i}" for i in range(17)]),
    ],
)
def test_schema_refuses_bad_values(path: tuple[str, ...], value: Any) -> None:
    spec: dict[str, Any] = {}
    node = spec
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    crd_spec = crd_schema()["properties"]["spec"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(crd_spec).validate(spec)


def test_contract_identity_is_the_crds() -> None:
    names = load_crd()["spec"]["names"]
    assert load_crd()["metadata"]["name"] == crd.CRD_NAME
    assert load_crd()["spec"]["group"] == crd.GROUP
    assert load_crd()["spec"]["versions"][0]["name"] == crd.VERSION
    assert (names["kind"], names["plural"], names["shortNames"]) == (crd.KIND, crd.PLURAL, [crd.SHORT_NAME])
    assert crd.CATEGORY in names["categories"]


def test_several_nodes_without_gpus_is_a_cel_rule_on_the_nodes_field() -> None:
    """The API server refuses nodes > 1 with gpus 0 naming spec.resources.nodes (the e2e test
    applies it for real); spec.py's validator says the same."""
    resources = crd_schema()["properties"]["spec"]["properties"]["resources"]
    (rule,) = resources["x-kubernetes-validations"]
    assert rule["fieldPath"] == ".nodes"
    assert "self.nodes <= 1" in rule["rule"] and "self.gpus >= 1" in rule["rule"]
    assert "nodes > 1 needs gpus >= 1" in rule["message"]
    nodes = resources["properties"]["nodes"]
    assert (nodes["default"], nodes["minimum"], nodes["maximum"]) == (1, 1, 64)
