"""hack/cluster/cluster.sh's commands that need no running cluster: bindir, env, status, usage.

Nothing here starts a cluster: the cache and state dirs are temporary ones."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

CLUSTER_SH = Path(__file__).resolve().parents[4] / "hack" / "cluster" / "cluster.sh"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The caller's environment without ZTHUMB_* settings, the cache and state in tmp_path."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ZTHUMB_")}
    clean |= {"ZTHUMB_CACHE": str(tmp_path / "cache"), "ZTHUMB_CLUSTER_DIR": str(tmp_path / "state")}
    return clean


def cluster_sh(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [str(CLUSTER_SH), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=env)


def test_bindir_is_the_versioned_cache_folder(env, tmp_path):
    result = cluster_sh("bindir", env=env)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"{re.escape(str(tmp_path))}/cache/k8s-v\d+\.\d+\.\d+/bin\n", result.stdout)


def test_env_prints_the_kubeconfig_and_the_binaries_for_eval(env, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "kubeconfig").touch()
    bindir = cluster_sh("bindir", env=env).stdout.strip()
    result = cluster_sh("env", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f'export KUBECONFIG={state}/kubeconfig\nexport PATH={bindir}:"${{PATH}}"\n'


def test_env_refuses_when_the_cluster_is_not_up(env, tmp_path):
    result = cluster_sh("env", env=env)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"[cluster] ERROR: cluster not up (no {tmp_path}/state/kubeconfig); run hack/cluster/cluster.sh up\n"
    )


def test_status_says_down_and_fails_when_nothing_runs(env):
    result = cluster_sh("status", env=env)
    assert (result.returncode, result.stdout) == (1, "down\n")


@pytest.mark.parametrize("args", [[], ["start"]])
def test_any_other_command_is_a_usage_error(env, args):
    result = cluster_sh(*args, env=env)
    assert result.returncode == 2
    assert result.stderr.endswith(" up|down|env|status|bindir|import ARCHIVE...\n")
