"""manifests/operator/ is the operator chart rendered (hack/release/render_operator_manifests.py, `make
manifests`): a checked-in file that differs from a fresh render fails here."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
from chart_render import HELM, REPO, needs_helm

pytestmark = needs_helm


@pytest.fixture(scope="module")
def renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_operator_manifests", REPO / "hack" / "release" / "render_operator_manifests.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_the_checked_in_manifests_are_a_fresh_render_of_the_chart(helm_bin, renderer) -> None:
    assert renderer.stale(HELM) == [], "manifests/operator/ differs from the chart: run `make manifests`"


def test_a_hand_edit_or_a_missing_file_is_found(helm_bin, renderer, tmp_path: Path) -> None:
    out = tmp_path / "operator"
    shutil.copytree(renderer.OUT, out)
    deployment = out / "deployment.yaml"
    deployment.write_text(deployment.read_text().replace("replicas: 1", "replicas: 2"))
    (out / "namespaced" / "role.yaml").unlink()
    assert renderer.stale(HELM, out) == ["deployment.yaml", "namespaced/role.yaml"]


def test_every_rendered_file_is_one_the_repository_references(renderer) -> None:
    # The e2e tests and docs apply these paths: a render that moved one would break them silently.
    rendered = {path for _, targets in renderer.RENDERS for path in targets.values()}
    hand_written = {"00-namespace.yaml", "namespaced/deployment-patch.yaml"}
    on_disk = {str(p.relative_to(renderer.OUT)) for p in renderer.OUT.rglob("*.yaml")}
    assert on_disk == rendered | hand_written
