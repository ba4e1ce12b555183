"""hack/tools/mutation_test.py: the score per package and where each surviving mutant is."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest


@pytest.fixture
def mt(hack_script):
    return hack_script("mutation_test")


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
    assert mutmut["also_copy"] == ["charts", "crds", "images", "manifests"]
    # The server's tests build models in fixtures, which mutmut's time estimate leaves out.
    assert mutmut["timeout_constant"] == 300.0
    # The repository's pytest settings travel with it (markers, strictness).
    assert "--strict-markers" in config["tool"]["pytest"]["ini_options"]["addopts"]


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


def test_a_combined_report_estimates_from_the_last_runs_sample(mt, tmp_path: Path) -> None:
    old = {f"zthumb_operator.cache.x_f__mutmut_{i}": "killed" for i in range(4)}
    old |= {f"zthumb_operator.cache.x_g__mutmut_{i}": "not checked" for i in range(4)}
    old |= {"zthumb_operator.cache.x_h__mutmut_1": "survived"}  # an earlier sample's: counts as ran
    new = {"zthumb_operator.cache.x_g__mutmut_0": "killed", "zthumb_operator.cache.x_g__mutmut_1": "survived"}
    for name, status, sample in (("old", old, ["zthumb_operator.cache.x_h__mutmut_1"]),
                                 ("new", new, list(new))):  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(
            json.dumps({"status": status, "diffs": {}, "sample": sample})
        )
    text = mt.combined_report([tmp_path / "old", tmp_path / "new"])
    # Ran: 4 killed + 1 survived + the sample's 1 of 2; the 2 left at 50 %: (4 + 1 + 1) / 9.
    assert "| `zthumb_operator` | 1 / 2 | 50.0 % (" in text and "| 66.7 % (" in text
