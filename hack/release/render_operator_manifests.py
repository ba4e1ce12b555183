"""Render manifests/operator/ from the operator chart (charts/zthumb-operator), for `kubectl apply`.

    python3 hack/release/render_operator_manifests.py          # rewrites them (make manifests)
    python3 hack/release/render_operator_manifests.py --check  # exit 1 naming each file that differs

The chart is the one source: the files here are `helm template` of its defaults (release
zthumb-operator in zthumb-system, cluster-wide) and, for namespaced/, of a namespace-scoped install
watching `ml`. manifests/operator/00-namespace.yaml (helm installs with --create-namespace) and
namespaced/deployment-patch.yaml (a patch, not an object) are written by hand. Needs `helm` on
PATH (hack/cluster/cluster.sh bindir). Standard library only.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "zthumb-operator"
CRD = "lorafinetunes.zthumb.io.yaml"
OUT = ROOT / "manifests" / "operator"
RELEASE = "zthumb-operator"
NAMESPACE = "zthumb-system"
KUBE_VERSION = "1.36.3"
HEADER = (
    "# Rendered from charts/zthumb-operator by `make manifests` "
    "(hack/release/render_operator_manifests.py):\n"
    "# edit the chart, not this file.\n"
)
# (values of one `helm template`, {chart template: file under manifests/operator/}).
RENDERS: tuple[tuple[tuple[str, ...], dict[str, str]], ...] = (
    (
        (),
        {
            "serviceaccount.yaml": "serviceaccount.yaml",
            "clusterrole.yaml": "clusterrole.yaml",
            "clusterrolebinding.yaml": "clusterrolebinding.yaml",
            "deployment.yaml": "deployment.yaml",
            "admission-policy.yaml": "admission/policy.yaml",
            "admission-binding.yaml": "admission/binding.yaml",
        },
    ),
    (
        ("--set", "watchNamespaces={ml}", "--set", "rbac.clusterQueues=true"),
        {
            "role.yaml": "namespaced/role.yaml",
            "rolebinding.yaml": "namespaced/rolebinding.yaml",
            "kueue-clusterqueues.yaml": "namespaced/kueue-clusterqueues.yaml",
        },
    ),
)


def split_by_source(text: str) -> dict[str, str]:
    """`helm template` output as {template file name: its documents}, the `# Source:` lines dropped."""
    sources: dict[str, list[str]] = {}
    prefix = f"# Source: {CHART.name}/templates/"
    for document in text.split("---\n"):
        first, _, body = document.partition("\n")
        if not first.startswith(prefix):
            if document.strip():
                raise ValueError(f"helm template printed a document without a Source line: {document[:200]}")
            continue
        sources.setdefault(first.removeprefix(prefix), []).append(body)
    return {name: "---\n".join(bodies) for name, bodies in sources.items()}


def render(helm: str) -> dict[str, str]:
    """{path under manifests/operator/: its text}, from the chart as it is now."""
    files: dict[str, str] = {}
    for values, targets in RENDERS:
        only = [arg for template in targets for arg in ("--show-only", f"templates/{template}")]
        proc = subprocess.run(
            [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
             "--kube-version", KUBE_VERSION, *values, *only],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"helm template failed (rc={proc.returncode}):\n{proc.stderr}")
        rendered = split_by_source(proc.stdout)
        if sorted(rendered) != sorted(targets):
            raise RuntimeError(f"expected templates {sorted(targets)}, helm rendered {sorted(rendered)}")
        for template, path in targets.items():
            files[path] = HEADER + rendered[template]
    return files


def stale(helm: str, out: Path = OUT) -> list[str]:
    """The rendered files under OUT that are missing or differ from a fresh render."""
    return sorted(
        path
        for path, text in render(helm).items()
        if not (out / path).is_file() or (out / path).read_text() != text
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report files that differ")
    args = parser.parse_args(argv)
    helm = shutil.which("helm")
    if helm is None:
        print('helm is not on PATH: PATH="$(hack/cluster/cluster.sh bindir):$PATH"', file=sys.stderr)
        return 2
    if args.check:
        differ = stale(helm)
        for path in differ:
            print(f"manifests/operator/{path} differs from the chart: run `make manifests`", file=sys.stderr)
        return 1 if differ else 0
    for path, text in render(helm).items():
        (OUT / path).parent.mkdir(parents=True, exist_ok=True)
        (OUT / path).write_text(text)
    # Helm packages a chart's crds/ only from inside the chart, and not through a symlink: the
    # chart carries a copy of crds/, refreshed here (a unit test fails while they differ).
    shutil.copyfile(ROOT / "crds" / CRD, CHART / "crds" / CRD)
    return 0


if __name__ == "__main__":
    sys.exit(main())
