"""Every constraint of values.schema.json refuses a bad value, in helm, naming the value.

The cases come from walking the schema (schema_cases.py): a constraint added to the schema is
covered without a change here. Helm reports every schema error of a values file at once, so the
cases run packed into a few files (no change inside another's); one case of each kind also runs
alone. The helm runs go through a small thread pool.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import schema_cases
from chart_render import CHART, HELM, OPERATOR_CHART, needs_helm
from schema_cases import Case

# Per chart, counted when these tests were written: the walk must never find fewer cases (a walk
# that silently yields nothing would otherwise pass), and each keyword the schema uses is covered.
MIN_CASES = {CHART: 427, OPERATOR_CHART: 134}
KINDS = {
    CHART: {
        "type", "enum", "minimum", "maximum", "multipleOf", "pattern", "minLength", "maxLength",
        "minItems", "uniqueItems", "additionalProperties", "required", "oneOf",
    },
    OPERATOR_CHART: {
        "type", "enum", "minimum", "maximum", "pattern", "minLength", "maxLength", "uniqueItems",
        "additionalProperties", "required",
    },
}  # fmt: skip
BOUNDS = (
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minLength", "maxLength", "minItems", "maxItems",
)  # fmt: skip
# What helm's schema error says for each keyword, after "at '<pointer>': ".
HELM_SAYS = {
    "type": "want ",
    "enum": "value must be",
    "const": "value must be",
    "pattern": "does not match pattern",
    "uniqueItems": "are equal",
    "oneOf": "'oneOf' failed",
    "additionalProperties": f"additional properties '{schema_cases.EXTRA_KEY}' not allowed",
    "required": "missing propert",
    **{keyword: f"{keyword}: got" for keyword in BOUNDS},
}
POOL = 3


@pytest.fixture(scope="module", params=[CHART, OPERATOR_CHART], ids=lambda chart: chart.name)
def chart(request: pytest.FixtureRequest) -> Path:
    return Path(request.param)


@pytest.fixture(scope="module")
def generated(chart: Path) -> tuple[list[Case], list[str]]:
    return schema_cases.generate(chart)


def test_every_constraint_of_the_schema_has_a_case(chart, generated) -> None:
    cases, unbroken = generated
    assert unbroken == [], "constraints no candidate value breaks as meant (add a candidate)"
    assert len(cases) >= MIN_CASES[chart], f"the schema walk found {len(cases)} cases, fewer than expected"
    assert {case.keyword for case in cases} >= KINDS[chart]


def missed(case: Case, stderr: str) -> str | None:
    """None when helm's errors name the case's value with its keyword's message; else why not."""
    at = f"at '{schema_cases.pointer(case.error_path)}': "
    lines = [line.strip().removeprefix("- ") for line in stderr.splitlines()]
    said = [line.removeprefix(at) for line in lines if line.startswith(at)]
    expected = [HELM_SAYS[case.keyword]]
    if case.keyword == "required":
        expected.append(f"'{case.change_path[-1]}'")
    branch_named = case.branch_keyword is None or any(HELM_SAYS[case.branch_keyword] in m for m in said)
    if branch_named and all(any(part in message for message in said) for part in expected):
        return None
    return f"{case.id}: expected {expected} at {at!r}, helm said {said}"


def helm_refusals(chart: Path, tmp_path: Path, groups: Sequence[Sequence[Case]], tag: str) -> list[str]:
    """Render each group of bad values with helm; what helm failed to refuse as expected."""
    assert HELM is not None
    schema, defaults = schema_cases.load(chart)

    def run(index: int) -> list[str]:
        values = tmp_path / f"{tag}-{index}.yaml"
        values.write_text(schema_cases.values_file(defaults, schema, groups[index]))
        proc = subprocess.run(
            [HELM, "template", chart.name, str(chart), "-f", str(values), "--kube-version", "1.36.3"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if not groups[index]:
            return [] if proc.returncode == 0 else [f"the chart's defaults were refused: {proc.stderr}"]
        if proc.returncode == 0 or "don't meet the specifications of the schema" not in proc.stderr:
            return [f"{tag} {index}: not refused by the schema: rc={proc.returncode} {proc.stderr[:500]}"]
        return [m for case in groups[index] if (m := missed(case, proc.stderr)) is not None]

    with ThreadPoolExecutor(POOL) as pool:
        return [miss for misses in pool.map(run, range(len(groups))) for miss in misses]


@needs_helm
def test_helm_refuses_every_bad_value_naming_it(helm_bin, chart, generated, tmp_path) -> None:
    cases, _ = generated
    groups = schema_cases.disjoint_groups(cases)
    assert sum(len(group) for group in groups) == len(cases)
    assert helm_refusals(chart, tmp_path, [[], *groups], "packed") == []


@needs_helm
def test_helm_refuses_one_bad_value_of_each_kind_alone(helm_bin, chart, generated, tmp_path) -> None:
    cases, _ = generated
    first_of_kind: dict[tuple[str, str | None], Case] = {}
    for case in cases:
        first_of_kind.setdefault((case.keyword, case.branch_keyword), case)
    assert {keyword for keyword, _ in first_of_kind} >= KINDS[chart]
    assert helm_refusals(chart, tmp_path, [[case] for case in first_of_kind.values()], "alone") == []
