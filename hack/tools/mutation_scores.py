"""The scores of a mutation run (``mutation_test.py``): mutmut's statuses reduced to killed, survived
and not run, the score per package and module, where each survivor is in the source, runs combined,
and a random sample of the mutants a run left out, with the interval its score gives.
"""

from __future__ import annotations

import ast
import math
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# mutmut's exit code per mutant (mutmut/stats.py status_by_exit_code), reduced to three
# outcomes: a timeout is a kill (the mutant changed behaviour: it did not finish).
KILLED = frozenset({"killed", "timeout", "caught by type check"})
NOT_RUN = frozenset({"not checked", "skipped", "check was interrupted by user"})


@dataclass
class Score:
    killed: int = 0
    total: int = 0  # mutants that ran
    not_run: int = 0
    survivors: list[str] = field(default_factory=list)

    @property
    def percent(self) -> float:
        return 100.0 * self.killed / self.total if self.total else 0.0


def package_of(mutant: str) -> str:
    """``zthumb_contract.gate.x_evaluate__mutmut_3`` -> ``zthumb_contract``."""
    return mutant.split(".", 1)[0]


def scores(status_by_mutant: dict[str, str], group: Callable[[str], str] = package_of) -> dict[str, Score]:
    """The score per top-level package (or per ``group`` of a mutant's name); "no tests",
    "suspicious" and "segfault" count as survivors."""
    result: dict[str, Score] = {}
    for mutant, status in sorted(status_by_mutant.items()):
        score = result.setdefault(group(mutant), Score())
        if status in NOT_RUN:
            score.not_run += 1
            continue
        score.total += 1
        if status in KILLED:
            score.killed += 1
        else:
            score.survivors.append(mutant)
    return result


_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+\d+(?:,\d+)? @@")


def changed_lines(diff: str) -> tuple[list[str], list[str]]:
    """The removed and the added lines of a unified diff, without their ``-``/``+``."""
    removed: list[str] = []
    added: list[str] = []
    in_hunk = False
    for line in diff.splitlines():
        if _HUNK.match(line):
            in_hunk = True
        elif in_hunk and line.startswith("-"):
            removed.append(line[1:])
        elif in_hunk and line.startswith("+"):
            added.append(line[1:])
    return removed, added


def function_span(source: str, qualname: str) -> tuple[int, int] | None:
    """The first and last line of function ``qualname`` (``f`` or ``Class.f``), or None."""
    nodes: list[ast.AST] = [ast.parse(source)]
    found: ast.AST | None = None
    for part in qualname.split("."):
        found = next(
            (
                child
                for node in nodes
                for child in ast.iter_child_nodes(node)
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                and child.name == part
            ),
            None,
        )
        if found is None:
            return None
        nodes = [found]
    assert isinstance(found, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    return found.lineno, found.end_lineno or found.lineno


def mutated_line(source: str, qualname: str, removed: list[str]) -> int | None:
    """The line of the source that the mutant's first removed line is, searched in its function."""
    span = function_span(source, qualname)
    if span is None or not removed:
        return span[0] if span else None
    lines = source.splitlines()
    wanted = removed[0].strip()
    for number in range(span[0], span[1] + 1):
        if lines[number - 1].strip() == wanted:
            return number
    return span[0]


def qualname_of(mutant: str) -> str:
    """``pkg.mod.xǁClassǁmethod__mutmut_2`` -> ``Class.method``; ``pkg.mod.x_f__mutmut_1`` -> ``f``."""
    mangled = mutant.rpartition(".")[2].partition("__mutmut_")[0]
    if "ǁ" in mangled:
        _, cls, method = mangled.split("ǁ")
        return f"{cls}.{method}"
    return mangled.removeprefix("x_")


def module_path(mutant: str) -> Path:
    """``zthumb_contract.gate.x_f__mutmut_1`` -> ``zthumb_contract/gate.py`` (or ``.../__init__.py``)."""
    module = mutant.rpartition(".")[0]
    return Path(*module.split(".")).with_suffix(".py")


def combine(runs: list[dict[str, dict[str, str]]]) -> tuple[dict[str, str], dict[str, str]]:
    """Several runs' results as one: a mutant any run killed is killed (runs only add tests, so a
    kill stays a kill); otherwise the status of a run that ran it, else "not checked"."""
    status: dict[str, str] = {}
    diffs: dict[str, str] = {}
    for run in runs:
        for mutant, outcome in run["status"].items():
            known = status.get(mutant)
            if known is None or known in NOT_RUN or (outcome in KILLED and known not in KILLED):
                status[mutant] = outcome
        diffs.update(run["diffs"])
    return status, {m: d for m, d in diffs.items() if status.get(m) not in KILLED}


def report(status: dict[str, str], diffs: dict[str, str], root: Path, roots: dict[str, str]) -> str:
    """The tables of a run: the score per package and module, and every survivor where it is in
    the source below ``root`` (``roots``: each package's folder there)."""
    by_package = scores(status)
    lines = ["| package | killed / ran | score | not run |", "| --- | --- | --- | --- |"]
    for name, score in by_package.items():
        ran = f"{score.killed} / {score.total}"
        lines.append(f"| `{name}` | {ran} | {score.percent:.1f} % | {score.not_run} |")
    lines += ["", "| module | killed / ran | score | not run |", "| --- | --- | --- | --- |"]
    for module, score in scores(status, lambda mutant: str(module_path(mutant))).items():
        ran = f"{score.killed} / {score.total}"
        lines.append(f"| `{module}` | {ran} | {score.percent:.1f} % | {score.not_run} |")
    counts = Counter(status.values())
    lines += ["", "Statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), ""]
    lines += ["| mutant | where | status | removed | added |", "| --- | --- | --- | --- | --- |"]
    for name, score in by_package.items():
        for mutant in score.survivors:
            relative = module_path(mutant)
            source = (root / roots[name] / relative).read_text()
            removed, added = changed_lines(diffs.get(mutant, ""))
            line = mutated_line(source, qualname_of(mutant), removed)
            where = f"{roots[name]}/{relative}:{line}"
            cells = [" / ".join(f"`{x.strip()}`" for x in side) or "-" for side in (removed, added)]
            short = mutant.rpartition(".")[2]
            lines.append(f"| `{short}` | {where} | {status[mutant]} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def not_run(status: dict[str, str]) -> list[str]:
    return sorted(mutant for mutant, outcome in status.items() if outcome in NOT_RUN)


def draw_sample(status: dict[str, str], size: int, seed: int) -> list[str]:
    """``size`` of the mutants that did not run, drawn uniformly (the same ones for a seed)."""
    left = not_run(status)
    return sorted(random.Random(seed).sample(left, min(size, len(left))))


def wilson_interval(killed: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % interval of a kill rate measured on ``total`` mutants drawn at random (Wilson's:
    it stays inside 0-1 and is honest for rates near 1, where the normal one is not)."""
    if total == 0:
        return 0.0, 1.0
    rate = killed / total
    centre = (rate + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def sample_report(status: dict[str, str], sample: list[str]) -> str:
    """The sampled mutants' score per package, and what it says of all the package's mutants:
    those that ran before the sample are counted as they are, the rest at the sample's rate."""
    lines = [
        "| package | sample killed / ran | sample score (95 % interval) | estimate for all mutants |",
        "| --- | --- | --- | --- |",
    ]
    drawn = set(sample)
    for name, before in scores({m: s for m, s in status.items() if m not in drawn}).items():
        sampled = scores({m: status[m] for m in sample if package_of(m) == name}).get(name, Score())
        if not sampled.total:
            continue
        low, high = wilson_interval(sampled.killed, sampled.total)
        unsampled_rest = before.not_run
        everything = before.total + sampled.total + unsampled_rest
        estimate = [
            (before.killed + sampled.killed + rate * unsampled_rest) / everything
            for rate in (sampled.killed / sampled.total, low, high)
        ]
        lines.append(
            f"| `{name}` | {sampled.killed} / {sampled.total} | {sampled.percent:.1f} % "
            f"({100 * low:.1f}-{100 * high:.1f} %) | {100 * estimate[0]:.1f} % "
            f"({100 * estimate[1]:.1f}-{100 * estimate[2]:.1f} %) |"
        )
    return "\n".join(lines) + "\n"
