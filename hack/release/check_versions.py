"""Check that every place that spells ZThumb's version agrees with pyproject.toml's.

    python3 hack/release/check_versions.py [ROOT]      # prints each disagreement as FILE:LINE, exit 1

The version is declared once, as ``[project] version`` in pyproject.toml; hack/images/build-images.sh
tags the images with it. Some files cannot derive it and spell it: the chart's ``version`` and
``appVersion``, the operator's manifest (its image tags and version label), the server's
``__version__``, the Dockerfiles' default base tag, the docs' examples, CHANGELOG.md's newest
section. Each spelling is found by a pattern below, in every file git tracks outside tests/
(tests spell other tags on purpose, an allowed newer trainer or a ``dev`` tag, and those that
spell the default fail by themselves once it moves). hack/release/release.sh runs this before it
packages anything. Standard library only.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

# Our images, as hack/images/build-images.sh names them.
IMAGES = ("zthumb", "trainer", "operator", "helm-test", "torch-base")
_TAG = r"([0-9][0-9A-Za-z.+-]*)"

# (what it is, files it applies to (a path, or a suffix with a leading "*"), pattern: group 1 is
# the spelled version). A tag may carry a variant suffix (0.1.0-cpu): only its version counts.
SPELLINGS: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("image tag", "*", re.compile(r"ghcr\.io/zthumb/(?:" + "|".join(IMAGES) + r"):" + _TAG)),
    ("helm-test tag override", "*", re.compile(r"repository=zthumb/helm-test,tests\.image\.tag=" + _TAG)),
    ("chart version", "charts/zthumb/Chart.yaml", re.compile(r"^version:\s*\"?" + _TAG)),
    ("chart appVersion", "charts/zthumb/Chart.yaml", re.compile(r"^appVersion:\s*\"?" + _TAG)),
    ("chart version", "charts/zthumb-operator/Chart.yaml", re.compile(r"^version:\s*\"?" + _TAG)),
    ("chart appVersion", "charts/zthumb-operator/Chart.yaml", re.compile(r"^appVersion:\s*\"?" + _TAG)),
    ("version label", "*.yaml", re.compile(r"app\.kubernetes\.io/version:\s*\"?" + _TAG)),
    ("server __version__", "images/zthumb/zthumb/version.py", re.compile(r"^__version__ = \"" + _TAG)),
    ("newest changelog section", "CHANGELOG.md", re.compile(r"^## \[" + _TAG + r"\]")),
)
# Files every release must spell the version in: a pattern that stopped matching (a file
# reworded, a field renamed) would otherwise pass silently.
REQUIRED = (
    "charts/zthumb/Chart.yaml",
    "charts/zthumb-operator/Chart.yaml",
    "manifests/operator/deployment.yaml",
    "images/zthumb/zthumb/version.py",
    "CHANGELOG.md",
)


@dataclass(frozen=True)
class Mismatch:
    path: str
    line: int
    what: str
    spelled: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what} is {self.spelled}"


def project_version(root: Path) -> str:
    with (root / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def tracked_files(root: Path) -> list[str]:
    """The files git tracks under ROOT, tests/ left out (see the module's docstring)."""
    out = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z"], check=True, capture_output=True, text=True
    ).stdout
    return [p for p in out.split("\0") if p and not p.startswith("tests/")]


def _applies(pattern_path: str, path: str) -> bool:
    if pattern_path.startswith("*"):
        return path.endswith(pattern_path[1:])
    return path == pattern_path


def _same_version(spelled: str, version: str) -> bool:
    """``0.1.0`` and ``0.1.0-cpu`` (a variant of the release) match 0.1.0; ``0.1.01`` does not."""
    return spelled == version or spelled.startswith(version + "-")


def check(root: Path, paths: list[str]) -> tuple[list[Mismatch], list[str]]:
    """(the spellings that disagree, the REQUIRED files among PATHS that spell no version)."""
    version = project_version(root)
    mismatches: list[Mismatch] = []
    spelled_in: set[str] = set()
    for path in paths:
        applicable = [(what, rx) for what, where, rx in SPELLINGS if _applies(where, path)]
        file = root / path
        if not applicable or not file.is_file():
            continue
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # not text: no version spelled in it
        changelog_seen = False
        for number, line in enumerate(text.splitlines(), start=1):
            for what, rx in applicable:
                for match in rx.finditer(line):
                    if what == "newest changelog section":
                        if changelog_seen:
                            continue  # older releases keep their own versions
                        changelog_seen = True
                    spelled_in.add(path)
                    if not _same_version(match.group(1), version):
                        mismatches.append(Mismatch(path, number, what, match.group(1)))
    missing = [p for p in REQUIRED if p in paths and p not in spelled_in]
    return mismatches, missing


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else Path(__file__).resolve().parents[2])
    version = project_version(root)
    mismatches, missing = check(root, tracked_files(root))
    for m in mismatches:
        print(f"{m} (pyproject.toml says {version})", file=sys.stderr)
    for path in missing:
        print(f"{path}: spells no version any more; update hack/release/check_versions.py", file=sys.stderr)
    if mismatches or missing:
        return 1
    print(f"version {version}: every spelling agrees")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
