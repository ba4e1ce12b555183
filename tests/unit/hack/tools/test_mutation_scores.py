"""hack/tools/mutation_scores.py: the score per package and module, where each surviving mutant is,
runs combined, and a random sample of what a run left out with its interval."""

from __future__ import annotations

from pathlib import Path

import pytest

SOURCE = """\
def helper(x):
    return x + 1


class Gate:
    def check(self, value):
        if value > 3:
            return "fail"
        return "pass"
"""

DIFF = """\
--- src/zthumb_contract/gate.py
+++ src/zthumb_contract/gate.py
@@ -1,4 +1,4 @@
 def check(self, value):
-    if value > 3:
+    if value >= 3:
         return "fail"
     return "pass"
"""


@pytest.fixture
def ms(hack_script):
    return hack_script("mutation_scores")


def test_scores_count_timeouts_as_kills_and_leave_out_what_did_not_run(ms) -> None:
    status = {
        "zthumb_contract.gate.x_f__mutmut_1": "killed",
        "zthumb_contract.gate.x_f__mutmut_2": "timeout",
        "zthumb_contract.gate.x_f__mutmut_3": "survived",
        "zthumb_contract.gate.x_f__mutmut_4": "not checked",
        "zthumb_operator.builders.x_g__mutmut_1": "no tests",
        "zthumb_operator.builders.x_g__mutmut_2": "killed",
    }
    result = ms.scores(status)
    contract, operator = result["zthumb_contract"], result["zthumb_operator"]
    assert (contract.killed, contract.total, contract.not_run) == (2, 3, 1)
    assert contract.survivors == ["zthumb_contract.gate.x_f__mutmut_3"]
    assert contract.percent == pytest.approx(200 / 3)
    # A mutant no test reaches is a survivor: nothing would notice the change.
    assert (operator.killed, operator.total) == (1, 2)
    assert operator.survivors == ["zthumb_operator.builders.x_g__mutmut_1"]
    assert ms.Score().percent == 0.0


def test_a_mutants_name_gives_its_file_and_function(ms) -> None:
    assert ms.qualname_of("zthumb_contract.gate.x_helper__mutmut_12") == "helper"
    assert ms.qualname_of("zthumb_contract.gate.xǁGateǁcheck__mutmut_2") == "Gate.check"
    assert ms.module_path("zthumb_contract.gate.x_helper__mutmut_1") == Path("zthumb_contract/gate.py")
    assert ms.package_of("zthumb_operator.builders.x_f__mutmut_1") == "zthumb_operator"


def test_the_diff_gives_the_changed_line_in_the_file(ms) -> None:
    removed, added = ms.changed_lines(DIFF)
    assert (removed, added) == (["    if value > 3:"], ["    if value >= 3:"])
    assert ms.mutated_line(SOURCE, "Gate.check", removed) == 7
    assert ms.function_span(SOURCE, "helper") == (1, 2)
    assert ms.function_span(SOURCE, "missing") is None
    # A removed line that is not found (reformatted by the mutator) points at the function.
    assert ms.mutated_line(SOURCE, "Gate.check", ["    nowhere"]) == 6
    assert ms.mutated_line(SOURCE, "missing", ["x"]) is None


def test_combined_runs_keep_every_kill(ms) -> None:
    whole = {
        "status": {
            "p.m.x_f__mutmut_1": "killed",
            "p.m.x_f__mutmut_2": "survived",
            "p.m.x_g__mutmut_1": "no tests",
        },
        "diffs": {"p.m.x_f__mutmut_2": "d2", "p.m.x_g__mutmut_1": "g1"},
    }
    # A later run of one file with its new tests: it kills g's mutant, and does not run f's.
    again = {
        "status": {
            "p.m.x_f__mutmut_1": "no tests",
            "p.m.x_g__mutmut_1": "killed",
            "p.m.x_h__mutmut_1": "not checked",
        },
        "diffs": {},
    }
    status, diffs = ms.combine([whole, again])
    assert status == {
        "p.m.x_f__mutmut_1": "killed",
        "p.m.x_f__mutmut_2": "survived",
        "p.m.x_g__mutmut_1": "killed",
        "p.m.x_h__mutmut_1": "not checked",
    }
    assert diffs == {"p.m.x_f__mutmut_2": "d2"}


def test_scores_group_by_module_on_request(ms) -> None:
    status = {"p.a.x_f__mutmut_1": "killed", "p.b.x_f__mutmut_1": "survived"}
    by_module = ms.scores(status, lambda m: str(ms.module_path(m)))
    assert {k: (v.killed, v.total) for k, v in by_module.items()} == {"p/a.py": (1, 1), "p/b.py": (0, 1)}


def test_a_sample_is_drawn_from_what_did_not_run_the_same_for_a_seed(ms) -> None:
    status = {f"p.m.x_f__mutmut_{i}": "not checked" for i in range(50)}
    status |= {f"p.m.x_g__mutmut_{i}": "killed" for i in range(10)}
    first = ms.draw_sample(status, 8, seed=3)
    assert len(first) == 8 and all(status[m] == "not checked" for m in first)
    assert ms.draw_sample(status, 8, seed=3) == first
    assert ms.draw_sample(status, 8, seed=4) != first
    assert len(ms.draw_sample(status, 500, seed=0)) == 50  # at most what is left


def test_the_wilson_interval_holds_the_rate_and_stays_in_bounds(ms) -> None:
    low, high = ms.wilson_interval(85, 100)
    assert low < 0.85 < high and (round(low, 3), round(high, 3)) == (0.767, 0.907)
    assert ms.wilson_interval(10, 10)[1] == 1.0 and ms.wilson_interval(10, 10)[0] > 0.69
    assert ms.wilson_interval(0, 0) == (0.0, 1.0)


def test_the_sample_estimates_the_whole_package(ms) -> None:
    # 8 ran before (6 killed); 10 left, 4 of them sampled (3 killed): 6 left unsampled.
    status = {f"p.m.x_a__mutmut_{i}": "killed" for i in range(6)}
    status |= {"p.m.x_a__mutmut_6": "survived", "p.m.x_a__mutmut_7": "no tests"}
    sample = [f"p.m.x_b__mutmut_{i}" for i in range(4)]
    status |= dict(zip(sample, ["killed", "killed", "timeout", "survived"], strict=True))
    status |= {f"p.m.x_c__mutmut_{i}": "not checked" for i in range(6)}
    table = ms.sample_report(status, sample)
    row = table.splitlines()[2]
    # (6 + 3 + 0.75 * 6) / 18 = 75.0 %.
    assert row.startswith("| `p` | 3 / 4 | 75.0 % (") and "| 75.0 % (" in row
