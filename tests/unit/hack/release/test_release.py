"""hack/release/release.sh without the image build (--skip-images): chart, SBOMs, SHA256SUMS and
the push commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[4]
SCRIPT = ROOT / "hack" / "release" / "release.sh"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
CHART = f"zthumb-{VERSION}.tgz"
OPERATOR_CHART = f"zthumb-operator-{VERSION}.tgz"


def _helm_bindir() -> str:
    return subprocess.run(
        [str(ROOT / "hack" / "cluster" / "cluster.sh"), "bindir"], check=True, capture_output=True, text=True
    ).stdout.strip()


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    """The script's environment: helm's cache bindir and this interpreter's cyclonedx-py."""
    return {
        **os.environ,
        "PATH": f"{_helm_bindir()}:{os.environ['PATH']}",
        "ZTHUMB_CYCLONEDX": str(Path(sys.executable).parent / "cyclonedx-py"),
        "HELM_CACHE_HOME": str(tmp / "helm" / "cache"),
        "HELM_CONFIG_HOME": str(tmp / "helm" / "config"),
        "HELM_DATA_HOME": str(tmp / "helm" / "data"),
        **extra,
    }


def release(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, env=_env(tmp, **env), timeout=600, check=False
    )


def _pins(extra: str) -> set[str]:
    return {r for r in PYPROJECT["project"]["optional-dependencies"][extra] if "==" in r}


@pytest.fixture(scope="module")
def skip_images_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One --skip-images run into a dist/ that holds an earlier run's leftovers and a file of ours."""
    tmp = tmp_path_factory.mktemp("release")
    if not (Path(_helm_bindir()) / "helm").exists() and shutil.which("helm") is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but there is no helm (hack/cluster/build-k8s.sh builds it)", pytrace=False)
        pytest.skip("no helm: hack/cluster/build-k8s.sh builds it")
    dist = tmp / "dist"
    dist.mkdir()
    (dist / f"zthumb-{VERSION}.oci.tar").write_text("an earlier run's archive")
    (dist / "zthumb-0.0.1.tgz").write_text("an earlier run's chart")
    (dist / "NOTES.txt").write_text("not the release's: kept")
    proc = release(tmp, "--skip-images", "--dist", str(dist), "--registry", "ghcr.io/example")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dist, proc.stdout


@pytest.mark.slow
def test_skip_images_writes_the_chart_sboms_and_checksums(skip_images_release):
    dist, _ = skip_images_release
    assert sorted(p.name for p in dist.iterdir()) == sorted(
        [
            CHART,
            OPERATOR_CHART,
            "SHA256SUMS",
            "NOTES.txt",
            *(f"{i}-{VERSION}.cdx.json" for i in ("zthumb", "trainer", "operator")),
        ]
    )
    listed = [line.split("  ", 1)[1] for line in (dist / "SHA256SUMS").read_text().splitlines()]
    assert listed == sorted(p.name for p in dist.iterdir() if p.name != "SHA256SUMS")
    subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=dist, check=True, capture_output=True)

    for archive, name in ((CHART, "zthumb"), (OPERATOR_CHART, "zthumb-operator")):
        chart = subprocess.run(
            ["tar", "-xOzf", str(dist / archive), f"{name}/Chart.yaml"], check=True, capture_output=True
        )
        assert f"version: {VERSION}" in chart.stdout.decode()
    # Helm installs a chart's CRDs from its crds/ folder: the archive must carry the file itself.
    crd = subprocess.run(
        ["tar", "-xOzf", str(dist / OPERATOR_CHART), "zthumb-operator/crds/lorafinetunes.zthumb.io.yaml"],
        check=True, capture_output=True,
    )  # fmt: skip
    assert crd.stdout == (ROOT / "crds" / "lorafinetunes.zthumb.io.yaml").read_bytes()


@pytest.mark.slow
def test_each_sbom_lists_the_pins_its_image_installs(skip_images_release):
    dist, _ = skip_images_release
    expected = {
        "zthumb": _pins("ml") | _pins("server"),
        "trainer": _pins("ml") | _pins("trainer"),
        "operator": _pins("operator"),
    }
    core = set(PYPROJECT["project"]["dependencies"])
    for image, pins in expected.items():
        bom = json.loads((dist / f"{image}-{VERSION}.cdx.json").read_text())
        assert bom["bomFormat"] == "CycloneDX"
        assert bom["metadata"]["component"]["version"] == VERSION
        listed = {f"{c['name']}=={c['version']}" for c in bom["components"]}
        assert {p.lower() for p in listed} == {p.lower() for p in pins | core}, image
    operator = json.loads((dist / f"operator-{VERSION}.cdx.json").read_text())
    assert "torch" not in {c["name"] for c in operator["components"]}


@pytest.mark.slow
def test_the_push_commands_name_the_registry(skip_images_release):
    _, stdout = skip_images_release
    commands = [line for line in stdout.splitlines() if not line.startswith("#")]
    assert commands == [
        f"helm push {skip_images_release[0]}/{chart} oci://ghcr.io/example/charts"
        for chart in (CHART, OPERATOR_CHART)
    ]


def test_push_commands_list_each_archive_in_dist(tmp_path):
    dist = tmp_path / "dist"
    dist.mkdir()
    for name in (f"operator-{VERSION}.oci.tar", f"zthumb-{VERSION}.oci.tar", CHART, OPERATOR_CHART):
        (dist / name).write_text("x")
    proc = release(tmp_path, "push-commands", "--dist", str(dist))
    assert proc.returncode == 0, proc.stderr
    commands = [line for line in proc.stdout.splitlines() if not line.startswith("#")]
    assert commands == [
        f"skopeo copy oci-archive:{dist}/operator-{VERSION}.oci.tar docker://<registry>/operator:{VERSION}",
        f"skopeo copy oci-archive:{dist}/zthumb-{VERSION}.oci.tar docker://<registry>/zthumb:{VERSION}",
        f"helm push {dist}/{CHART} oci://<registry>/charts",
        f"helm push {dist}/{OPERATOR_CHART} oci://<registry>/charts",
    ]
    assert "--registry" in proc.stdout  # says how to fill the placeholder


@pytest.mark.parametrize("registry", ["ghcr.io/Org", "https://ghcr.io/org", "ghcr.io/org/", "r.io/$(id)"])
def test_a_registry_that_is_no_registry_path_is_refused(tmp_path, registry):
    proc = release(tmp_path, "push-commands", "--dist", str(tmp_path), "--registry", registry)
    assert proc.returncode != 0
    assert "--registry" in proc.stderr and registry in proc.stderr


def test_a_tag_that_is_not_the_version_is_refused_before_anything_is_built(tmp_path):
    dist = tmp_path / "dist"
    proc = release(tmp_path, "--skip-images", "--dist", str(dist), ZTHUMB_RELEASE_TAG="v0.0.0-other")
    assert proc.returncode != 0
    assert f"the tag v0.0.0-other is not v{VERSION}" in proc.stderr
    assert not dist.exists()


def test_help_works_from_any_directory():
    # The script changes to the repository root first; its help must not read itself by a
    # path relative to where it was started.
    result = subprocess.run(
        ["./release.sh", "--help"], cwd=SCRIPT.parent, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Package a ZThumb release into dist/" in result.stdout
