"""The server benchmark's --tiny mode: every row (multi-adapter ones included) runs and is reported."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "hack" / "bench_server.py"


@pytest.mark.slow  # about a minute of tiny-model generations on a busy 2-core CPU
def test_tiny_run_reports_every_row_and_ratio(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("bench_server", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_server", module)
    spec.loader.exec_module(module)

    assert module.main(["--tiny"]) == 0

    out = capsys.readouterr().out
    rows = dict(re.findall(r"^\| (\([a-e]\d?\) [^|]+?)\s+\|\s+([0-9.]+) \|", out, flags=re.MULTILINE))
    assert set(rows) == {
        "(a) no adapter",
        "(b) env-default adapter",
        "(c2) alternate 2 cached",
        "(c8) alternate 8 cached",
        "(d) naive load+unload",
        "(e2) 2 adapters combined",
        "(e4) 4 adapters combined",
    }, out
    assert all(float(p50) > 0 for p50 in rows.values())
    for key in ("(e2) 2 adapters combined", "(e4) 4 adapters combined"):
        assert re.search(re.escape(key) + r": \(e\)/\(b\) = [0-9.]+", out), out
