"""The collector benchmark's --tiny mode runs and reports its rows (the timings are its output, not
asserted here)."""

from __future__ import annotations

import gc
import importlib.util
import re
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "hack" / "bench_gc.py"


def test_tiny_run_reports_each_state_and_leaves_nothing_frozen(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("bench_gc", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_gc", module)
    spec.loader.exec_module(module)

    assert module.main(["--tiny", "--repeats", "1"]) == 0

    out = capsys.readouterr().out
    timings = r"[0-9.]+ / [0-9.]+ \| [0-9.]+ / [0-9.]+ \| [0-9.]+"
    rows = re.findall(rf"^\| ([^|]+?) \| (\d+) \| {timings} \|$", out, re.M)
    assert [label for label, _ in rows] == ["torch + diffusers imported", "+ the tiny pipeline"], out
    assert int(rows[1][1]) > int(rows[0][1])  # the pipeline's objects are tracked
    assert gc.get_freeze_count() == 0
