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
    # mutmut copies folders; a single file read by the tests travels in its top-level folder.
    assert mutmut["also_copy"] == ["crds", "images", "manifests"]
    # The repository's pytest settings travel with it (markers, strictness).
    assert "--strict-markers" in config["tool"]["pytest"]["ini_options"]["addopts"]


def test_combined_runs_keep_every_kill(mt) -> None:
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
    status, diffs = mt.combine([whole, again])
    assert status == {
        "p.m.x_f__mutmut_1": "killed",
        "p.m.x_f__mutmut_2": "survived",
        "p.m.x_g__mutmut_1": "killed",
        "p.m.x_h__mutmut_1": "not checked",
    }
    assert diffs == {"p.m.x_f__mutmut_2": "d2"}


def test_only_narrows_a_run_to_files_and_their_tests(mt) -> None:
    names: list[str] = []
    [package] = mt.narrowed(
        names, ["operator/zthumb_operator/api.py"], ["tests/unit/operator/test_kube_api.py"]
    )
    assert (names, package.name, package.only) == (["operator"], "zthumb_operator", ("api.py",))
    assert package.tests == ("tests/unit/operator/test_kube_api.py",)
    assert [p.name for p in mt.narrowed(["contract"], [], [])] == ["zthumb_contract"]
    with pytest.raises(ValueError, match=r"elsewhere\.py"):
        mt.narrowed([], ["elsewhere.py"], [])


def test_scores_group_by_module_on_request(mt) -> None:
    status = {"p.a.x_f__mutmut_1": "killed", "p.b.x_f__mutmut_1": "survived"}
    by_module = mt.scores(status, lambda m: str(mt.module_path(m)))
    assert {k: (v.killed, v.total) for k, v in by_module.items()} == {"p/a.py": (1, 1), "p/b.py": (0, 1)}


def test_staging_copies_the_package_its_tests_and_the_files_they_read(mt, tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    mt.stage_run(stage, [mt.PACKAGES["contract"]], fresh=True)
    assert (stage / "src/zthumb_contract/steps.py").is_file()
    assert (stage / "tests/unit/contract/test_step_definitions.py").is_file()
    # A single test file brings its folder's helpers, not its sibling tests.
    assert (stage / "tests/unit/trainer/test_cli.py").is_file()
    assert (stage / "tests/unit/trainer/conftest.py").is_file()
    assert not (stage / "tests/unit/trainer/test_launch.py").exists()
    # What the tests read: folders and single files.
    assert (stage / "crds").is_dir() and (stage / "images/trainer/README.md").is_file()


def test_the_operator_runs_without_the_crd_schema_tests(mt) -> None:
    tests = mt.PACKAGES["operator"].tests
    assert "tests/unit/operator/test_reconcile.py" in tests
    assert not [t for t in tests if Path(t).stem.startswith(("test_crd", "test_invalid_paths"))]
    assert "tests/unit/trainer/test_cli.py" in mt.PACKAGES["contract"].tests
