"""The chart's values: a `## @param` line for each, values.schema.json in sync with them, the
schema and `validateValues` refusing bad values (with a message naming the value), `helm lint --strict`.

The tests that render run the real `helm` (chart_render.py): without it they skip locally and fail in CI.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from chart_render import CHART, OPERATOR_CHART, SCHEMA, VALUES, helm, needs_helm, render_fails, set_args

# The checks of @param lines, values.yaml and values.schema.json hold for each of our charts.
each_chart = pytest.mark.parametrize("chart", [CHART, OPERATOR_CHART], ids=lambda chart: chart.name)


def param_keys(chart: Path = CHART) -> list[str]:
    return re.findall(r"^\s*## @param (\S+)", (chart / "values.yaml").read_text(), flags=re.MULTILINE)


def schema_paths(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, sub in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        yield path
        yield from schema_paths(sub, f"{path}.")


def value_leaves(node: Any, params: set[str], prefix: str = "") -> Iterator[str]:
    """Keys of values.yaml that need a @param: documented keys end the walk."""
    for key, sub in node.items():
        path = f"{prefix}{key}"
        if path in params or not (isinstance(sub, dict) and sub):
            yield path
        else:
            yield from value_leaves(sub, params, f"{path}.")


@each_chart
def test_every_value_has_a_param_line(chart: Path) -> None:
    params = param_keys(chart)
    assert len(params) == len(set(params)), "duplicate @param lines"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    leaves = set(value_leaves(values, set(params)))
    assert leaves - set(params) == set(), "values without a `## @param` line"
    assert set(params) - leaves == set(), "@param lines for keys that are not in values.yaml"


@each_chart
def test_params_and_schema_are_in_sync(chart: Path) -> None:
    params = set(param_keys(chart))
    schema = json.loads((chart / "values.schema.json").read_text())
    paths = set(schema_paths(schema))
    assert params - paths == set(), "@param keys missing from values.schema.json"
    # Every schema property is a @param, a group above one, or structure below one.
    orphans = {
        p
        for p in paths
        if p not in params
        and not any(q.startswith(p + ".") for q in params)
        and not any(p.startswith(q + ".") for q in params)
        and p != "global"
    }
    assert orphans == set(), "schema properties with no `## @param` in values.yaml"
    # Groups are closed, so a typo (`gpu.enable`) is refused instead of ignored.
    groups = {p for p in paths if any(q.startswith(p + ".") for q in params)}
    for group in groups:
        node = schema
        for part in group.split("."):
            node = node["properties"][part]
        assert node.get("additionalProperties") is False, f"{group} must set additionalProperties: false"
    assert schema.get("additionalProperties") is False


def test_the_operator_charts_readme_has_a_table_row_for_every_param() -> None:
    readme = (OPERATOR_CHART / "README.md").read_text()
    rows = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.MULTILINE))
    assert rows == set(param_keys(OPERATOR_CHART))


@each_chart
def test_defaults_validate_against_schema(chart: Path) -> None:
    schema = json.loads((chart / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((chart / "values.yaml").read_text()), schema)


@pytest.mark.parametrize(
    ("path", "bad", "field"),
    [
        (("server", "backend"), "sdxl", "backend"),
        (("gpu", "count"), 0, "count"),
        (("gpu", "enable"), True, "enable"),
        (("updateStrategy", "type"), "BlueGreen", "type"),
        (("persistence", "accessModes"), ["ReadWriteSometimes"], "accessModes"),
        (("service", "port"), 70000, "port"),
        (("lora", "scale"), "high", "scale"),
        (("lora", "maxPerRequest"), 0, "maxPerRequest"),
        (("lora", "maxPerRequest"), 33, "maxPerRequest"),
        (("image", "digest"), "md5:abc", "digest"),
        (("pdb", "maxUnavailable"), "lots", "maxUnavailable"),
        (("tinyDecoder", "default"), "huge", "default"),
        (("tinyDecoder", "sha256"), "ABC", "sha256"),
        (("tinyDecoder", "maxBytes"), 2**31, "maxBytes"),
        (("tinyDecoder", "url"), "ftp://x", "url"),
    ],
)
def test_schema_refuses_bad_values_python(path: tuple[str, ...], bad: Any, field: str) -> None:
    schema = json.loads(SCHEMA.read_text())
    values = yaml.safe_load(VALUES.read_text())
    node = values
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = bad
    with pytest.raises(jsonschema.ValidationError) as err:
        jsonschema.validate(values, schema)
    assert field in str(err.value.message) + "".join(str(p) for p in err.value.absolute_path)


@needs_helm
@each_chart
def test_helm_lint_strict(chart: Path, helm_bin: list[str], helm_env: dict[str, str]) -> None:
    out = helm(helm_env, "lint", "--strict", str(chart))
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout


@needs_helm
@pytest.mark.parametrize(
    "values",
    [
        {"gpu.enabled": "false"},
        {"persistence.create": "false", "persistence.existingClaim": "zthumb-data"},
        {"networkPolicy.enabled": "true", "auth.apiKey": "s3cret", "tests.generate.enabled": "true"},
        {"auth.enabled": "false", "networkPolicy.enabled": "false"},
        {"updateStrategy.type": "Recreate"},
    ],
)
def test_helm_lint_strict_variants(
    helm_bin: list[str], helm_env: dict[str, str], values: dict[str, str]
) -> None:
    helm(helm_env, "lint", "--strict", str(CHART), *set_args(values))


@needs_helm
def test_kube_version_constraint(helm_bin: list[str], helm_env: dict[str, str]) -> None:
    proc = helm(helm_env, "template", "zthumb", str(CHART), "--kube-version", "1.27.0", check=False)
    assert proc.returncode != 0
    helm(helm_env, "template", "zthumb", str(CHART), "--kube-version", "1.28.0")
    assert "kubeVersion" in proc.stderr or ">=1.28.0-0" in proc.stderr


@needs_helm
@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"server.backend": "sdxl"}, "server.backend"),
        ({"gpu.count": "0"}, "gpu.count"),
        ({"gpu.enable": "true"}, "enable"),
        ({"updateStrategy.type": "BlueGreen"}, "updateStrategy.type"),
        ({"service.port": "70000"}, "service.port"),
        ({"persistence.accessModes": "{ReadWriteSometimes}"}, "persistence.accessModes"),
        ({"replicaCount": "two"}, "replicaCount"),
        ({"compile.mode": "fast"}, "compile.mode"),
        ({"compile.lora": "merge"}, "compile.lora"),
    ],
)
def test_schema_refuses_bad_values_helm(
    helm_bin: list[str], helm_env: dict[str, str], values: dict[str, str], named: str
) -> None:
    stderr = render_fails(helm_env, values)
    assert "schema" in stderr.lower(), stderr
    # Helm reports the value path with / or . separators depending on the version.
    leaf = named.rsplit(".", maxsplit=1)[-1]
    assert leaf in stderr, stderr


@needs_helm
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"server.device": "cpu"}, "gpu.enabled=true requests GPUs but server.device=cpu"),
        ({"gpu.enabled": "false", "server.device": "cuda"}, "server.device=cuda needs a GPU"),
        ({"gpu.enabled": "false", "resources.limits.nvidia\\.com/gpu": "1"}, "gpu.enabled=false"),
        ({"persistence.existingClaim": "data"}, "persistence.existingClaim=data and persistence.create=true"),
        ({"persistence.create": "false"}, "needs persistence.existingClaim"),
        ({"auth.apiKey": "k", "auth.existingSecret": "s"}, "auth.apiKey and auth.existingSecret"),
        (
            {"updateStrategy.type": "Recreate", "replicaCount": "2"},
            "updateStrategy.type=Recreate with replicaCount=2",
        ),
        (
            {
                "updateStrategy.rollingUpdate.maxUnavailable": "0",
                "updateStrategy.rollingUpdate.maxSurge": "0",
            },
            "maxUnavailable and maxSurge are both 0",
        ),
        ({"pdb.minAvailable": "1", "pdb.maxUnavailable": "1"}, "pdb.minAvailable and pdb.maxUnavailable"),
        ({"replicaCount": "2", "pdb.minAvailable": "2"}, "pdb.minAvailable=2 is not below replicaCount=2"),
        ({"replicaCount": "2", "pdb.minAvailable": "3"}, "pdb.minAvailable=3 is not below replicaCount=2"),
        ({"server.enabledBackends": "{turbo}", "model.turboPath": "t"}, "server.backend=full is not in"),
        ({"server.backend": "gguf"}, "model.ggufUnetPath is empty"),
        ({"gpu.enabled": "false", "server.dtype": "float16"}, "float16 on a CPU"),
        ({"metrics.serviceMonitor.enabled": "true"}, "monitoring.coreos.com/v1"),
        ({"tinyDecoder.enabled": "true"}, "tinyDecoder.enabled=true needs tinyDecoder.sha256"),
        ({"tinyDecoder.default": "tiny"}, "tinyDecoder.default=tiny needs tinyDecoder.enabled=true"),
    ],
)
def test_validate_values_fails(
    helm_bin: list[str], helm_env: dict[str, str], values: dict[str, str], message: str
) -> None:
    stderr = render_fails(helm_env, values)
    assert "VALUES VALIDATION" in stderr, stderr
    assert message in stderr, stderr
