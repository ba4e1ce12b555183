"""Rendering charts/zthumb for the template tests: the real `helm` binary (built from Go modules by
hack/cluster/build-k8s.sh; CI puts its bin dir on PATH), `helm template` parsed into documents, and
NOTES.txt made visible. Without helm on PATH the tests that need it skip locally (``needs_helm``),
but with CI set they fail: CI must not go green by testing nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]


CHART = REPO / "charts" / "zthumb"


OPERATOR_CHART = REPO / "charts" / "zthumb-operator"


VALUES = CHART / "values.yaml"


SCHEMA = CHART / "values.schema.json"


HELM = shutil.which("helm")


IN_CI = bool(os.environ.get("CI"))


RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


needs_helm = pytest.mark.skipif(
    HELM is None and not IN_CI,
    reason="helm is not on PATH (build it with hack/cluster/build-k8s.sh and put "
    "~/.cache/zthumb/k8s-v1.36.3/bin on PATH); with CI set this is a failure instead",
)


def helm(helm_env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    proc = subprocess.run(
        [HELM, *args], capture_output=True, text=True, env=helm_env, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"helm {' '.join(args)} failed rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def set_args(values: dict[str, str] | None) -> list[str]:
    out: list[str] = []
    for key, value in (values or {}).items():
        out += ["--set", f"{key}={value}"]
    return out


class Rendered:
    """Parsed `helm template` output, indexed by (kind, name)."""

    def __init__(self, text: str) -> None:
        self.docs = [d for d in yaml.safe_load_all(text) if d]
        self.text = text

    def kinds(self) -> list[str]:
        return sorted(d["kind"] for d in self.docs)

    def get(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [
            d for d in self.docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
        ]
        assert len(found) == 1, f"expected one {kind}/{name}, got {[d['metadata']['name'] for d in found]}"
        return found[0]

    def has(self, kind: str) -> bool:
        return any(d["kind"] == kind for d in self.docs)

    @property
    def deployment(self) -> dict[str, Any]:
        return self.get("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def server(self) -> dict[str, Any]:
        (container,) = [c for c in self.pod["containers"] if c["name"] == "zthumb"]
        return container

    @property
    def env(self) -> dict[str, Any]:
        return {e["name"]: e.get("value", e.get("valueFrom")) for e in self.server["env"]}


def render(
    helm_env: dict[str, str],
    values: dict[str, str] | None = None,
    *extra: str,
    release: str = "zthumb",
    namespace: str = "ml",
) -> Rendered:
    proc = helm(
        helm_env,
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        "1.36.3",
        *set_args(values),
        *extra,
    )
    return Rendered(proc.stdout)


def render_fails(helm_env: dict[str, str], values: dict[str, str], *extra: str) -> str:
    proc = helm(
        helm_env,
        "template",
        "zthumb",
        str(CHART),
        "--kube-version",
        "1.36.3",
        *set_args(values),
        *extra,
        check=False,
    )
    assert proc.returncode != 0, f"expected helm template to fail for {values}, it rendered:\n{proc.stdout}"
    return proc.stderr


NOTES_PROBE = """apiVersion: v1
kind: ConfigMap
metadata:
  name: notes
data:
  notes: {{ tpl (.Files.Get "notes-probe.txt") . | quote }}
"""


def render_notes(helm_env: dict[str, str], tmp_path: Path, values: dict[str, str] | None = None) -> str:
    """NOTES.txt as `helm install` prints it.

    `helm template` skips NOTES.txt and `helm install --dry-run` needs a
    cluster, so a copy of the chart renders it through `tpl` into a ConfigMap.
    """
    chart = tmp_path / "zthumb"
    if not chart.exists():
        shutil.copytree(CHART, chart)
        shutil.copy(CHART / "templates" / "NOTES.txt", chart / "notes-probe.txt")
        (chart / "templates" / "notes-probe.yaml").write_text(NOTES_PROBE)
    proc = helm(
        helm_env,
        "template",
        "zthumb",
        str(chart),
        "-n",
        "ml",
        "--kube-version",
        "1.36.3",
        "--show-only",
        "templates/notes-probe.yaml",
        *set_args(values),
    )
    return yaml.safe_load(proc.stdout)["data"]["notes"]
