"""Mutation testing (mutmut) of chosen packages: the share of mutants their unit tests kill.

Not in CI: a run re-executes the tests that cover a function once per mutant of it (tens of
minutes on two cores). Run it by hand from the repository root:

    .venv/bin/python hack/tools/mutation_test.py                    # contract and operator
    .venv/bin/python hack/tools/mutation_test.py --package server   # the server's error and adapter modules

mutmut names a mutant after its file's path (``src/`` stripped), and the packages live under
``contract/``, ``operator/`` and ``images/zthumb/``, so each run works in a staging folder,
``.mutation/<packages>/``, with the packages copied to ``src/<package>/`` (the names the tests
import), the tests, the files they read (the CRD, the manifests) and a ``pyproject.toml`` holding
the pytest settings and the ``[tool.mutmut]`` section written here. The packages that are not
mutated come from the worktree through PYTHONPATH. Prints the score per package and the surviving
mutants, and writes both to ``<staging>/report.md`` (and ``results.json``).

A whole run is slow, so a file can be measured again alone after its tests changed
(``--only operator/zthumb_operator/api.py --tests tests/unit/operator/test_kube_api.py``) and the
runs combined (``--combine .mutation/contract-operator .mutation/operator-<hash>``). mutmut runs the
cheapest mutants first, so a run stopped at ``--time-limit`` leaves the expensive ones; ``--sample
N --sample-from <that run's folder>...`` runs N of those, drawn at random (``mutation_scores``), against
the tree as it is now, and the report estimates the package's score from them with an interval.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from mutation_scores import KILLED, NOT_RUN, combine, draw_sample, report, sample_report

ROOT = Path(__file__).resolve().parents[2]
# Every folder a first-party package is imported from (docs/ARCHITECTURE.md, the PYTHONPATH).
IMPORT_ROOTS = ("contract", "images/zthumb", "images/trainer", "operator")
# The operator's tests exercise the contract's models and steps through the builders, and the
# trainer's CLI parses every step's argv the contract builds (without torch), so the contract runs
# against all three.
CONTRACT_TESTS = ("tests/unit/contract", "tests/unit/operator", "tests/unit/trainer/test_cli.py")
# The operator's own tests, less those that check the CRD manifest's schema and CEL rules (the
# YAML, not the operator's code; about 40 s of CEL evaluation per run, a cost every surviving
# mutant would pay again).
CRD_SCHEMA_TESTS = ("test_crd", "test_operator_manifests", "test_invalid_paths")
OPERATOR_TESTS = tuple(
    str(path.relative_to(ROOT))
    for path in sorted((ROOT / "tests/unit/operator").glob("test_*.py"))
    if not path.stem.startswith(CRD_SCHEMA_TESTS)
)


@dataclass(frozen=True)
class Package:
    import_root: str  # the folder on PYTHONPATH
    name: str  # the top-level package in it
    tests: tuple[str, ...]
    only: tuple[str, ...] = ()  # files of the package to mutate; all when empty
    # What the tests open from the repository (folders or files).
    read_files: tuple[str, ...] = ("crds", "manifests")
    # CPU seconds a mutant's tests get beyond mutmut's estimate, which counts only the tests' call
    # phase: a fixture that loads a model could be stopped, and a stopped run counts as a kill.
    timeout_constant: float = 1.0


PACKAGES = {
    # test_cli.py checks that the trainer's README has a row for every training option.
    "contract": Package(
        "contract",
        "zthumb_contract",
        CONTRACT_TESTS,
        read_files=("crds", "manifests", "images/trainer/README.md"),
    ),
    "operator": Package("operator", "zthumb_operator", OPERATOR_TESTS),
    # The server's error and adapter modules only: the rest of the server is the models' and
    # the HTTP layer's, covered by slower tests.
    "server": Package(
        "images/zthumb",
        "zthumb",
        (
            "tests/unit/server/test_error_rendering.py",
            "tests/unit/server/test_error_responses.py",
            "tests/unit/server/test_server_backends.py",
            "tests/unit/server/test_server_failures.py",
            "tests/unit/server/test_server_loras.py",
            "tests/unit/server/test_server_units.py",
        ),
        only=("errors.py", "error_responses.py", "backends/adapters.py"),
        # test_server_units.py checks the backend names against the chart's values schema.
        read_files=("crds", "manifests", "charts/zthumb/values.schema.json"),
        timeout_constant=300.0,
    ),
}

# Each package's folder below the repository root (where a survivor's line is looked up).
ROOTS = {package.name: package.import_root for package in PACKAGES.values()}


def write_pyproject(stage: Path, packages: list[Package]) -> None:
    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    tests = sorted({t for p in packages for t in p.tests})
    mutmut = {
        "source_paths": [f"src/{p.name}" for p in packages],
        "only_mutate": [f"src/{p.name}/{f}" for p in packages for f in p.only]
        + [f"src/{p.name}/*" for p in packages if not p.only],
        # Top-level folders only: mutmut copies a listed file without making its folders (3.8.1).
        "also_copy": sorted({Path(f).parts[0] for p in packages for f in p.read_files}),
        "timeout_constant": max(p.timeout_constant for p in packages),
        "pytest_add_cli_args_test_selection": tests,
        # No random order (a mutant's tests run in one order every time), no cache folder.
        "pytest_add_cli_args": ["-p", "no:randomly", "-p", "no:cacheprovider"],
    }
    text = "# Written by hack/tools/mutation_test.py for one run.\n"
    for table, values in (("tool.pytest.ini_options", pytest_options), ("tool.mutmut", mutmut)):
        text += f"[{table}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()) + "\n"
    (stage / "pyproject.toml").write_text(text)


def stage_run(stage: Path, packages: list[Package], fresh: bool) -> None:
    if fresh and stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in packages:
        shutil.rmtree(stage / "src" / package.name, ignore_errors=True)
        source = ROOT / package.import_root / package.name
        shutil.copytree(source, stage / "src" / package.name, ignore=ignore)
        for read in package.read_files:
            shutil.rmtree(stage / read, ignore_errors=True)
            if (ROOT / read).is_dir():
                shutil.copytree(ROOT / read, stage / read, ignore=ignore)
            else:
                (stage / read).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / read, stage / read)
    # The test folders with every conftest.py above them (pytest loads those first).
    shutil.rmtree(stage / "tests", ignore_errors=True)
    for test in {t for p in packages for t in p.tests}:
        source = ROOT / test
        if source.is_dir():
            shutil.copytree(source, stage / test, ignore=ignore, dirs_exist_ok=True)
        else:
            # A single test file brings its folder's helpers (conftest, *_helpers, fakes).
            for sibling in source.parent.glob("*.py"):
                if not sibling.name.startswith("test_") or sibling == source:
                    (stage / test).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(sibling, stage / sibling.relative_to(ROOT))
        for parent in Path(test).parents:
            if (ROOT / parent / "conftest.py").exists():
                (stage / parent).mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / parent / "conftest.py", stage / parent / "conftest.py")
    write_pyproject(stage, packages)


def run_mutmut(
    stage: Path,
    packages: list[Package],
    max_children: int,
    time_limit: float,
    mutants: list[str] | None = None,
) -> tuple[int, float]:
    """Runs ``mutmut run`` in the staging folder (all its mutants, or ``mutants``), killed after
    ``time_limit`` seconds (what ran is kept)."""
    mutated = {p.import_root for p in packages}
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(str(ROOT / r) for r in IMPORT_ROOTS if r not in mutated),
        # mutmut forks each mutant's run from a process that imported the tests (torch among
        # them): a thread pool started before a fork hangs the child, so one thread each.
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    mutmut = Path(sys.executable).parent / "mutmut"
    started = time.monotonic()
    with (stage / "mutmut.log").open("w") as log:
        process = subprocess.Popen(
            [str(mutmut), "run", "--max-children", str(max_children), *(mutants or [])],
            cwd=stage,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=time_limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            code = -1
    return code, time.monotonic() - started


def collect(stage: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Every mutant's status and every survivor's diff, read with mutmut's own code."""
    os.chdir(stage)
    # Imported here: mutmut reads ./pyproject.toml (the staging folder's) when first used.
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code
    from mutmut.utils.file_utils import walk_mutatable_files

    status: dict[str, str] = {}
    diffs: dict[str, str] = {}
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        for mutant, code in data.exit_code_by_key.items():
            status[mutant] = status_by_exit_code[code]
            if status[mutant] not in KILLED | NOT_RUN:
                diffs[mutant] = get_diff_for_mutant(mutant, path=path)
    return status, diffs


def narrowed(names: list[str], only: list[str], tests: list[str]) -> list[Package]:
    """The packages of ``names``, or of the files in ``only`` (repository paths) mutating those
    files alone; ``tests`` replaces their test selection."""
    packages = [PACKAGES[n] for n in names]
    if only:
        packages = []
        for name, package in PACKAGES.items():
            prefix = f"{package.import_root}/{package.name}/"
            files = tuple(f.removeprefix(prefix) for f in only if f.startswith(prefix))
            if files:
                packages.append(replace(package, only=files))
                names.append(name)
        unknown = [f for f in only if not any(f.startswith(f"{p.import_root}/{p.name}/") for p in packages)]
        if unknown:
            raise ValueError(f"--only {unknown}: not in a package of {sorted(PACKAGES)}")
    if tests:
        packages = [replace(p, tests=tuple(tests)) for p in packages]
    return packages


def combined_report(stages: list[Path]) -> str:
    """The report of several runs as one (a kill in any is a kill). The estimate comes from the
    last folder's random sample, the newest tests: an earlier sample's mutants count as ran."""
    runs = [json.loads((stage / "results.json").read_text()) for stage in stages]
    status, diffs = combine(runs)
    drawn = runs[-1].get("sample", [])
    text = f"Combined: {', '.join(str(s) for s in stages)}\n\n" + report(status, diffs, ROOT, ROOTS)
    return text + (f"\nThe random sample of mutants:\n\n{sample_report(status, drawn)}" if drawn else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--package", action="append", choices=sorted(PACKAGES), help="default: contract, operator"
    )
    parser.add_argument(
        "--only", action="append", default=[], help="mutate this file alone (repository path; repeatable)"
    )
    parser.add_argument(
        "--tests", action="append", default=[], help="run these tests instead (with --only; repeatable)"
    )
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutant runs (default 2)")
    parser.add_argument(
        "--time-limit", type=float, default=3 * 3600, help="seconds before the run is stopped"
    )
    parser.add_argument("--resume", action="store_true", help="keep the staging folder's earlier results")
    parser.add_argument("--report-only", action="store_true", help="only read the staging folder's results")
    parser.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="in the staging folder of an earlier run that stopped at its time limit, run N of the "
        "mutants it left, drawn at random: an estimate of the package's score with its interval",
    )
    parser.add_argument("--seed", type=int, default=0, help="which sample --sample draws (default 0)")
    parser.add_argument(
        "--sample-from",
        nargs="+",
        type=Path,
        metavar="STAGE",
        help="draw --sample from what these earlier runs left (none of them ran it), and run the "
        "mutants drawn in a fresh staging of the tree as it is now (its tests since then count)",
    )
    parser.add_argument(
        "--stage", type=Path, help="the staging folder to use (default: named after the packages and options)"
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        metavar="STAGE",
        help="report the union of these staging folders' results.json (a kill in any is a kill)",
    )
    args = parser.parse_args(argv)
    if args.combine:
        print(combined_report(args.combine))
        return 0
    names: list[str] = [] if args.only else (args.package or ["contract", "operator"])
    try:
        packages = narrowed(names, args.only, args.tests)
    except ValueError as error:
        parser.error(str(error))
    label = "-".join(names)
    if args.only or args.tests:
        label += "-" + hashlib.sha256(json.dumps([args.only, args.tests]).encode()).hexdigest()[:8]
    # Absolute: collect() works from inside the staging folder.
    stage = args.stage.resolve() if args.stage else ROOT / ".mutation" / label
    elapsed = 0.0
    sample: list[str] = []
    if args.sample is not None:
        earlier = [path.resolve() for path in args.sample_from or [stage]]
        if args.sample < 1 or not all((path / "results.json").exists() for path in earlier):
            parser.error("--sample needs a positive N and the staging folder of an earlier run")
        status, _ = combine([json.loads((path / "results.json").read_text()) for path in earlier])
        sample = draw_sample(status, args.sample, args.seed)
        if args.sample_from:  # the same mutants, against the tree as it is now
            stage_run(stage, packages, fresh=not args.resume)
        code, elapsed = run_mutmut(stage, packages, args.max_children, args.time_limit, sample)
        if code not in (0, -1):
            print((stage / "mutmut.log").read_text()[-4000:], file=sys.stderr)
            return 1
    elif not args.report_only:
        if args.max_children < 1 or args.time_limit <= 0:
            parser.error("--max-children and --time-limit must be positive")
        stage_run(stage, packages, fresh=not args.resume)
        code, elapsed = run_mutmut(stage, packages, args.max_children, args.time_limit)
        if code not in (0, -1):
            print((stage / "mutmut.log").read_text()[-4000:], file=sys.stderr)
            print(f"mutmut run failed with exit code {code}", file=sys.stderr)
            return 1
        if code == -1:
            limit = f"{args.time_limit:.0f} s"
            print(f"stopped after --time-limit {limit}: the rest is 'not run'", file=sys.stderr)
    if args.report_only and (stage / "results.json").exists():
        sample = json.loads((stage / "results.json").read_text()).get("sample", [])
    status, diffs = collect(stage)
    results = {"status": status, "diffs": diffs, "sample": sample}
    (stage / "results.json").write_text(json.dumps(results, indent=1))
    took = "results read again" if args.report_only else f"mutmut run took {elapsed:.0f} s"
    text = f"Packages: {', '.join(names)}; {took}.\n\n" + report(status, diffs, ROOT, ROOTS)
    if sample:
        text += f"\nThe random sample of {len(sample)} mutants:\n\n" + sample_report(status, sample)
    (stage / "report.md").write_text(text)
    print(text)
    print(f"written to {stage / 'report.md'} and results.json (for --combine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
