"""One version: every file that spells it agrees with pyproject.toml (hack/release/check_versions.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[4]


@pytest.fixture
def versions(hack_script) -> ModuleType:
    return hack_script("check_versions")


def test_every_spelling_in_the_repository_agrees(versions):
    mismatches, missing = versions.check(ROOT, versions.tracked_files(ROOT))
    assert not mismatches, "these files disagree with pyproject.toml's version:\n" + "\n".join(
        map(str, mismatches)
    )
    assert not missing, f"no version found any more in {missing}: update hack/release/check_versions.py"


def test_the_checked_places_are_found(versions):
    """Each REQUIRED file and the image tags are seen (a pattern that matches nothing checks nothing)."""
    paths = versions.tracked_files(ROOT)
    assert set(versions.REQUIRED) <= set(paths)
    assert "hack/images/README-images.md" in paths and "operator/zthumb_operator/config.py" in paths
    assert not any(p.startswith("tests/") for p in paths)


def _tree(tmp_path: Path, files: dict[str, str]) -> list[str]:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    return ["pyproject.toml", *files]


def test_a_disagreeing_file_is_named_with_its_line(versions, tmp_path):
    version = versions.project_version(ROOT)
    paths = _tree(
        tmp_path,
        {
            "charts/zthumb/Chart.yaml": f'version: {version}\nappVersion: "9.9.9"\n',
            "charts/zthumb-operator/Chart.yaml": f'version: 0.0.8\nappVersion: "{version}"\n',
            "manifests/operator/deployment.yaml": (
                f'    app.kubernetes.io/version: "{version}"\n'
                f"          image: ghcr.io/zthumb/operator:{version}\n"
                "              value: ghcr.io/zthumb/trainer:0.0.9\n"
            ),
            "images/trainer/Dockerfile.cpu": f"# -t ghcr.io/zthumb/trainer:{version}-cpu .\n",
            "CHANGELOG.md": f"## [Unreleased]\n## [{version}] - Unreleased\n## [0.0.1] - 2020-01-01\n",
        },
    )
    mismatches, missing = versions.check(tmp_path, paths)
    assert [str(m) for m in mismatches] == [
        "charts/zthumb/Chart.yaml:2: chart appVersion is 9.9.9",
        "charts/zthumb-operator/Chart.yaml:1: chart version is 0.0.8",
        "manifests/operator/deployment.yaml:3: image tag is 0.0.9",
    ]
    assert missing == []


def test_a_changelog_without_this_version_on_top_fails(versions, tmp_path):
    paths = _tree(tmp_path, {"CHANGELOG.md": "## [Unreleased]\n## [0.0.1] - 2020-01-01\n"})
    mismatches, _ = versions.check(tmp_path, paths)
    assert [(m.path, m.spelled) for m in mismatches] == [("CHANGELOG.md", "0.0.1")]


def test_a_required_file_that_spells_no_version_is_reported(versions, tmp_path):
    paths = _tree(
        tmp_path,
        {
            "charts/zthumb/Chart.yaml": "version: {{ .Version }}\n",
            "charts/zthumb-operator/Chart.yaml": "name: zthumb-operator\n",
        },
    )
    mismatches, missing = versions.check(tmp_path, paths)
    assert mismatches == [] and missing == ["charts/zthumb/Chart.yaml", "charts/zthumb-operator/Chart.yaml"]


def test_a_longer_version_is_not_taken_for_this_one(versions, tmp_path):
    version = versions.project_version(ROOT)
    paths = _tree(tmp_path, {"docs/x.md": f"ghcr.io/zthumb/zthumb:{version}1\n"})
    mismatches, _ = versions.check(tmp_path, paths)
    assert [m.spelled for m in mismatches] == [f"{version}1"]
