"""The image builds: pins come from pyproject.toml once, and every image name agrees."""

from __future__ import annotations

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


def test_production_bases_stay_the_defaults():
    base = (ROOT / "images" / "base" / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=nvidia/cuda:\S+-ubuntu24\.04$", base, re.M)
    operator = (ROOT / "operator" / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_BASE=python:3\.11\.\d+-slim-bookworm$", operator, re.M)


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
