"""hack/lib/log.sh: the log line format, die, timed and the bounded wait_until every script uses."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

LOG_SH = Path(__file__).resolve().parents[4] / "hack" / "lib" / "log.sh"


def bash(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f'set -euo pipefail; source "{LOG_SH}"; {script}'],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_log_prefixes_the_tag_on_stderr_only():
    result = bash('LOG_TAG=cluster; log "up" "now"')
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "[cluster] up now\n")


def test_log_clock_puts_the_time_of_day_after_the_tag():
    result = bash("LOG_TAG=images LOG_CLOCK=1; log building")
    assert re.fullmatch(r"\[images\] \d\d:\d\d:\d\d building\n", result.stderr)


def test_die_logs_its_word_and_exits_1():
    assert bash("LOG_TAG=release; die broken; echo unreachable").stderr == "[release] ERROR: broken\n"
    result = bash("LOG_TAG=images-test DIE_WORD=FAIL; die broken")
    assert (result.returncode, result.stderr) == (1, "[images-test] FAIL: broken\n")


def test_timed_runs_the_command_and_logs_its_seconds():
    result = bash('LOG_TAG=build-k8s; timed "built etcd" echo made; echo "took ${TIMED_SECONDS}"')
    seconds = re.fullmatch(r"made\ntook (\d+)\n", result.stdout)
    assert seconds, result.stdout
    assert result.stderr == f"[build-k8s] built etcd in {seconds[1]}s\n"


def test_timed_stops_the_script_when_the_command_fails():
    result = bash("timed step false; echo unreachable")
    assert (result.returncode, result.stdout, result.stderr) == (1, "", "")


def test_wait_until_returns_once_the_command_succeeds(tmp_path):
    flag = tmp_path / "flag"
    # The command creates the flag on its first run and succeeds from the second on.
    result = bash(
        f'wait_until 30 0.01 "the flag" bash -c \'[[ -e "{flag}" ]] || {{ touch "{flag}"; false; }}\''
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_wait_until_gives_up_after_its_timeout_and_says_what_it_waited_for():
    result = bash('LOG_TAG=cluster; wait_until 0 0.01 "etcd health" false || echo "rc=$?"')
    assert result.stdout == "rc=1\n"
    assert result.stderr == "[cluster] timed out after 0s waiting for etcd health\n"
