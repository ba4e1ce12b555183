"""hack/cluster/node/real-node.sh on its own: sourced without cluster.sh, and its `status` command.

Nothing here starts a node: the state dir is a temporary one, and `status` only reads pid files
and the host-wide owner file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REAL_NODE_SH = Path(__file__).resolve().parents[5] / "hack" / "cluster" / "node" / "real-node.sh"
COMPONENTS = ["containerd", "kubelet", "kube-proxy", "coredns", "zthumb-hostpath-provisioner"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The caller's environment without ZTHUMB_* settings, the cache and state in tmp_path."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ZTHUMB_")}
    clean |= {"ZTHUMB_CACHE": str(tmp_path / "cache"), "ZTHUMB_CLUSTER_DIR": str(tmp_path / "state")}
    return clean


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False, env=env)


def test_sourced_alone_it_has_its_settings_and_every_phase(env, tmp_path):
    phases = "node_lock node_preflight node_bridge_up node_generate_pki node_write_configs node_up node_stop"
    script = (
        f'set -euo pipefail; source "{REAL_NODE_SH}"; '
        f"declare -F {phases} node_host_cleanup node_import node_cluster_objects >/dev/null; "
        'echo "${NODE_DIR} ${CONTAINERD_SOCK} ${LOG_TAG}"'
    )
    result = run(["bash", "-c", script], env)
    assert result.returncode == 0, result.stderr
    node = tmp_path / "state" / "node"
    assert result.stdout.split() == [str(node), f"{node}/run/containerd.sock", "cluster"]


def test_its_config_writers_work_without_cluster_sh(env, tmp_path):
    # The node's certificates need the cluster CA; the config files then name the state dir.
    pki = tmp_path / "state" / "pki"
    pki.mkdir(parents=True)
    script = (
        f'set -euo pipefail; source "{REAL_NODE_SH}"; '
        f'openssl req -x509 -new -nodes -newkey rsa:2048 -keyout "{pki}/ca.key" -out "{pki}/ca.crt"'
        " -days 1 -subj /CN=test-ca 2>/dev/null; "
        "node_generate_pki; node_write_configs; node_cluster_objects"
    )
    result = run(["bash", "-c", script], env | {"ZTHUMB_REAL_NODE": "1"})
    assert result.returncode == 0, result.stderr
    node = tmp_path / "state" / "node"
    assert f"tlsCertFile: {pki}/kubelet-serving.crt\n" in (node / "kubelet.yaml").read_text()
    assert "server: https://10.88.0.1:16443\n" in (node / "kubelet.kubeconfig").read_text()
    assert f'address = "{node}/run/containerd.sock"\n' in (node / "containerd.toml").read_text()
    assert "  clusterIP: 10.96.0.10\n" in result.stdout


def test_status_of_a_node_that_never_started(env, tmp_path):
    result = run([str(REAL_NODE_SH), "status"], env)
    lines = result.stdout.splitlines()
    assert result.returncode == 1
    assert lines[0] == f"zthumb-real-0: down (state {tmp_path / 'state'})"
    assert lines[1].startswith("  host state owner: ")
    assert lines[2:] == [f"  {name}: not started" for name in COMPONENTS]


def test_status_tells_running_from_dead_processes(env, tmp_path):
    pids = tmp_path / "state" / "pids"
    pids.mkdir(parents=True)
    # A live process of this state dir (its command line names it) as containerd; kubelet's pid
    # file names a process that is gone.
    waiter = ["bash", "-c", "read -r -t 60 || true", str(tmp_path / "state")]
    containerd = subprocess.Popen(waiter, stdin=subprocess.PIPE)
    try:
        (pids / "containerd.pid").write_text(f"{containerd.pid}\n")
        (pids / "kubelet.pid").write_text("999999999\n")
        result = run([str(REAL_NODE_SH), "status"], env)
    finally:
        containerd.kill()
        containerd.wait()
    assert result.returncode == 1
    assert result.stdout.splitlines()[2:4] == [
        f"  containerd: running (pid {containerd.pid})",
        f"  kubelet: DEAD (see {tmp_path / 'state'}/logs/kubelet.log)",
    ]


@pytest.mark.parametrize("args", [[], ["up"]])
def test_any_other_command_is_a_usage_error(env, args):
    result = run([str(REAL_NODE_SH), *args], env)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("usage: ")
