"""hack/tools/mutation_test.py: the score per package and where each surviving mutant is."""

from __future__ import annotations

import tomllib
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
def mt(hack_script):
    return hack_script("mutation_test")


def test_scores_count_timeouts_as_kills_and_leave_out_what_did_not_run(mt) -> None:
    status = {
        "zthumb_contract.gate.x_f__mutmut_1": "killed",
        "zthumb_contract.gate.x_f__mutmut_2": "timeout",
        "zthumb_contract.gate.x_f__mutmut_3": "survived",
        "zthumb_contract.gate.x_f__mutmut_4": "not checked",
        "zthumb_operator.builders.x_g__mutmut_1": "no tests",
        "zthumb_operator.builders.x_g__mutmut_2": "killed",
    }
    result = mt.scores(status)
    contract, operator = result["zthumb_contract"], result["zthumb_operator"]
    assert (contract.killed, contract.total, contract.not_run) == (2, 3, 1)
    assert contract.survivors == ["zthumb_contract.gate.x_f__mutmut_3"]
    assert contract.percent == pytest.approx(200 / 3)
    # A mutant no test reaches is a survivor: nothing would notice the change.
    assert (operator.killed, operator.total) == (1, 2)
    assert operator.survivors == ["zthumb_operator.builders.x_g__mutmut_1"]
    assert mt.Score().percent == 0.0


def test_a_mutants_name_gives_its_file_and_function(mt) -> None:
    assert mt.qualname_of("zthumb_contract.gate.x_helper__mutmut_12") == "helper"
    assert mt.qualname_of("zthumb_contract.gate.xǁGateǁcheck__mutmut_2") == "Gate.check"
    assert mt.module_path("zthumb_contract.gate.x_helper__mutmut_1") == Path("zthumb_contract/gate.py")
    assert mt.package_of("zthumb_operator.builders.x_f__mutmut_1") == "zthumb_operator"


def test_the_diff_gives_the_changed_line_in_the_file(mt) -> None:
    removed, added = mt.changed_lines(DIFF)
    assert (removed, added) == (["    if value > 3:"], ["    if value >= 3:"])
    assert mt.mutated_line(SOURCE, "Gate.check", removed) == 7
    assert mt.function_span(SOURCE, "helper") == (1, 2)
    assert mt.function_span(SOURCE, "missing") is None
    # A removed line that is not found (reformatted by the mutator) points at the function.
    assert mt.mutated_line(SOURCE, "Gate.check", ["    nowhere"]) == 6
    assert mt.mutated_line(SOURCE, "missing", ["x"]) is None


def test_the_staging_pyproject_has_the_tests_and_the_packages(mt, tmp_path: Path) -> None:
    packages = [mt.PACKAGES["contract"], mt.PACKAGES["server"]]
    mt.write_pyproject(tmp_path, packages)
    config = tomllib.loads((tmp_path / "pyproject.toml").read_text())
    mutmut = config["tool"]["mutmut"]
    assert mutmut["source_paths"] == ["src/zthumb_contract", "src/zthumb"]
    assert "src/zthumb/errors.py" in mutmut["only_mutate"]
    assert "src/zthumb_contract/*" in mutmut["only_mutate"]
    assert "tests/unit/contract" in mutmut["pytest_add_cli_args_test_selection"]
    # The repository's pytest settings travel with it (markers, strictness).
    assert "--strict-markers" in config["tool"]["pytest"]["ini_options"]["addopts"]
