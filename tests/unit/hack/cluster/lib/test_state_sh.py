"""hack/cluster/lib/state.sh: the local cluster's state layout and helpers, sourced on its own."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

STATE_SH = Path(__file__).resolve().parents[5] / "hack" / "cluster" / "lib" / "state.sh"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The caller's environment without ZTHUMB_* settings, the cache and state in tmp_path."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ZTHUMB_")}
    clean |= {"ZTHUMB_CACHE": str(tmp_path / "cache"), "ZTHUMB_CLUSTER_DIR": str(tmp_path / "state")}
    return clean


def bash(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f'set -euo pipefail; source "{STATE_SH}"; {script}'],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_sourced_alone_it_lays_out_the_state_dir_and_logs_as_cluster(env, tmp_path):
    result = bash('echo "${STATE_DIR} ${PKI_DIR} ${PID_DIR} ${LOG_DIR} ${KUBECONFIG_FILE}"; log hello', env)
    state = tmp_path / "state"
    expected = [str(state), *(f"{state}/{name}" for name in ("pki", "pids", "logs", "kubeconfig"))]
    assert result.stdout.split() == expected
    assert result.stderr == "[cluster] hello\n"


def test_sourcing_it_twice_changes_nothing(env):
    # Everything the file defines (variables and functions), after one and after two sourcings;
    # build-cache.sh sets LOG_TAG to its own on every sourcing.
    changing = "BASH[A-Z_]*|_|SECONDS|RANDOM|SRANDOM|LINENO|EPOCH[A-Z]*"
    dump = f"declare -p | grep -vE '^declare [^ ]+ ({changing})='; declare -f"
    once = bash(dump, env)
    twice = bash(f'source "{STATE_SH}"; {dump}', env)
    assert once.returncode == 0, once.stderr
    assert 'LOG_TAG="cluster"' in once.stdout
    assert twice.stdout == once.stdout


@pytest.mark.parametrize(
    ("files", "override", "expected"),
    [
        ([".zthumb-cluster", ".real-node"], "0", "1 https://10.88.0.1:16443"),
        ([".zthumb-cluster"], "1", "0 https://127.0.0.1:16443"),
        ([], "0", "0 https://127.0.0.1:16443"),
        ([], "1", "1 https://10.88.0.1:16443"),
    ],
)
def test_a_running_cluster_keeps_its_mode_whatever_the_override(env, tmp_path, files, override, expected):
    state = tmp_path / "state"
    state.mkdir()
    for name in files:
        (state / name).touch()
    result = bash('echo "${REAL_NODE} ${APISERVER_URL}"', env | {"ZTHUMB_REAL_NODE": override})
    assert result.stdout == f"{expected}\n"


def test_pid_of_names_only_live_processes_of_this_state_dir(env, tmp_path):
    state = tmp_path / "state"
    (state / "pids").mkdir(parents=True)
    # Two waiters (bash's builtin read: no child left behind), one whose command line names the
    # state dir (ours), one whose does not.
    wait = "read -r -t 60 || true"
    ours = subprocess.Popen(["bash", "-c", wait, str(state)], stdin=subprocess.PIPE)
    other = subprocess.Popen(["bash", "-c", wait], stdin=subprocess.PIPE)
    try:
        (state / "pids" / "ours.pid").write_text(f"{ours.pid}\n")
        (state / "pids" / "other.pid").write_text(f"{other.pid}\n")
        (state / "pids" / "junk.pid").write_text("1; rm -rf /\n")
        result = bash('for n in ours other junk missing; do echo "$n=$(pid_of $n || echo no)"; done', env)
    finally:
        ours.kill()
        other.kill()
        ours.wait()
        other.wait()
    assert result.stdout.split() == [f"ours={ours.pid}", "other=no", "junk=no", "missing=no"]


def test_sign_cert_and_write_kubeconfig_make_a_standalone_kubeconfig(env, tmp_path):
    pki = tmp_path / "state" / "pki"
    pki.mkdir(parents=True)
    script = (
        f'openssl req -x509 -new -nodes -newkey rsa:2048 -keyout "{pki}/ca.key" -out "{pki}/ca.crt"'
        " -days 1 -subj /CN=test-ca 2>/dev/null; "
        'sign_cert admin "/O=system:masters/CN=zthumb-admin" "extendedKeyUsage=clientAuth"; '
        'openssl verify -CAfile "${PKI_DIR}/ca.crt" "${PKI_DIR}/admin.crt"; '
        'write_kubeconfig "${KUBECONFIG_FILE}" zthumb-admin admin; ls "${PKI_DIR}"'
    )
    result = bash(script, env | {"ZTHUMB_REAL_NODE": "0"})
    assert result.returncode == 0, result.stderr
    files = ["admin.crt", "admin.key", "ca.crt", "ca.key", "ca.srl"]
    assert result.stdout.split() == [f"{pki}/admin.crt:", "OK", *files]
    kubeconfig = (tmp_path / "state" / "kubeconfig").read_text()
    assert "    server: https://127.0.0.1:16443\n" in kubeconfig
    assert "- name: zthumb-admin\n" in kubeconfig
    assert oct((tmp_path / "state" / "kubeconfig").stat().st_mode & 0o777) == "0o600"
