"""The image builds: pins come from pyproject.toml once, and every image name agrees."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[4]
SCRIPT = ROOT / "hack" / "images" / "extra_requirements.py"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def requirements(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(ROOT / "pyproject.toml"), *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.splitlines()


def test_ml_extra_is_the_torch_stack():
    ml = requirements("ml")
    assert any(r.startswith("torch==") for r in ml)
    assert all("==" in r for r in ml)
    assert not any(r.startswith("zthumb") for r in ml)


def test_server_and_trainer_layers_leave_the_torch_stack_out():
    ml = set(requirements("ml"))
    for extra in ("server", "trainer"):
        own = requirements(extra, "--core", "--exclude", "ml")
        assert not ml & set(own), extra
        assert any(r.startswith("pydantic==") for r in own), "core dependencies missing"
        assert not any(r.startswith(("torch", "zthumb")) for r in own)


def test_operator_requirements_carry_no_ml():
    own = requirements("operator", "--core")
    assert "kopf" in {r.split("==")[0] for r in own}
    assert not {r.split("==")[0] for r in own} & {r.split("==")[0] for r in requirements("ml")}


def test_image_names_agree_everywhere():
    script = (ROOT / "hack" / "images" / "build-images.sh").read_text()
    for name in ("zthumb", "trainer", "operator", "helm-test", "torch-base"):
        assert f'[{name}]="${{REGISTRY}}/{name}:${{TAG}}"' in script
    assert 'REGISTRY="${ZTHUMB_IMAGE_REGISTRY:-ghcr.io/zthumb}"' in script

    chart = yaml.safe_load((ROOT / "charts" / "zthumb" / "Chart.yaml").read_text())
    values = yaml.safe_load((ROOT / "charts" / "zthumb" / "values.yaml").read_text())
    assert chart["appVersion"] == VERSION
    assert f"{values['image']['registry']}/{values['image']['repository']}" == "ghcr.io/zthumb/zthumb"

    deployment = (ROOT / "manifests" / "operator" / "deployment.yaml").read_text()
    assert f"image: ghcr.io/zthumb/operator:{VERSION}" in deployment
    assert f"value: ghcr.io/zthumb/trainer:{VERSION}" in deployment
    config = (ROOT / "operator" / "zthumb_operator" / "config.py").read_text()
    assert f'trainer_image: str = "ghcr.io/zthumb/trainer:{VERSION}"' in config

    for dockerfile in ("images/zthumb/Dockerfile", "images/trainer/Dockerfile"):
        text = (ROOT / dockerfile).read_text()
        assert f"ARG TORCH_BASE=ghcr.io/zthumb/torch-base:{VERSION}" in text


# The Dockerfiles build-images.sh builds: the only ones there are (no untested variant).
BUILT = {
    "torch-base": "images/base/Dockerfile",
    "zthumb": "images/zthumb/Dockerfile",
    "trainer": "images/trainer/Dockerfile",
    "operator": "operator/Dockerfile",
    "helm-test": "images/helm-test/Dockerfile",
}
# The Dockerfiles on a registry base; zthumb and trainer are built FROM torch-base.
ON_DEBIAN = ("images/base/Dockerfile", "operator/Dockerfile", "images/helm-test/Dockerfile")
PINNED_DEBIAN = re.compile(r"^ARG BASE_IMAGE=debian:(bookworm)-\d{8}-slim@sha256:[0-9a-f]{64}$", re.M)


def test_every_dockerfile_is_one_the_build_builds():
    script = (ROOT / "hack" / "images" / "build-images.sh").read_text()
    table = dict(re.findall(r"^  \[([\w-]+)\]=(\S+/Dockerfile\S*)$", script, re.M))
    assert table == BUILT
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files"], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    found = {path for path in tracked if Path(path).name.startswith("Dockerfile")}
    assert found == set(BUILT.values())


def test_the_default_base_is_the_pinned_debian_release_the_build_makes():
    pins = set()
    for dockerfile in ON_DEBIAN:
        match = PINNED_DEBIAN.search((ROOT / dockerfile).read_text())
        assert match, f"{dockerfile}: BASE_IMAGE is not a digest-pinned debian:bookworm-<date>-slim"
        pins.add(match.group(0))
    assert len(pins) == 1, f"the Dockerfiles disagree on the base: {pins}"
    suite = PINNED_DEBIAN.search((ROOT / ON_DEBIAN[0]).read_text()).group(1)
    script = (ROOT / "hack" / "images" / "build-images.sh").read_text()
    assert f"\nDEBIAN_SUITE={suite}\n" in script


def test_the_build_passes_no_build_argument_but_the_base():
    """Only the base differs from `docker build`: no argument that switches packages or Python."""
    script = (ROOT / "hack" / "images" / "build-images.sh").read_text()
    calls = re.findall(r"(?:^ *|then )build ([\w-]+) \"\S+\" (.*?)(?:;|$)", script, re.M)
    assert {name for name, _ in calls} == set(BUILT)
    for name, args in calls:
        names = set(re.findall(r'"(\w+)=', args))
        assert names <= {"BASE_IMAGE", "TORCH_BASE", "EXTRA_PIP"}, (name, names)
        assert names & {"BASE_IMAGE", "TORCH_BASE"}, name


def test_the_gpu_base_requires_the_cuda_major_of_the_pinned_torch(hack_script):
    """The torch wheel's own metadata pins its CUDA (cuda-toolkit==13.x.y); the NVIDIA runtime's
    requirement in the image must be that major."""
    toolkit = [r for r in importlib.metadata.requires("torch") or [] if r.startswith("cuda-toolkit")]
    assert toolkit, "torch's metadata pins no cuda-toolkit: not the CUDA wheel the images install"
    cuda = re.search(r"==(\d+\.\d+)", toolkit[0]).group(1)
    required = hack_script("image_checks").cuda_requirement(cuda)
    base = (ROOT / "images" / "base" / "Dockerfile").read_text()
    assert f'NVIDIA_REQUIRE_CUDA="{required}"' in base
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in base
    assert "NVIDIA_VISIBLE_DEVICES" not in base.replace("No NVIDIA_VISIBLE_DEVICES", "")


def test_operator_image_takes_nothing_of_the_ml_images():
    text = (ROOT / "operator" / "Dockerfile").read_text()
    copies = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ")]
    sources = [s for c in copies for s in c if not s.startswith("--")]
    assert "images" not in sources
    assert not [s for s in sources if s.startswith(("images/zthumb", "images/base"))]
    for src in sources:
        if src.startswith("images/"):
            # Only the shared contract (the spec model and the step definitions).
            assert re.fullmatch(r"images/trainer/zthumb_trainer/(__init__|spec|steps)\.py", src), src
