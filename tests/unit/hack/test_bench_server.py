"""The server benchmark's --tiny mode: every row (multi-adapter ones included) runs and is reported."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "hack" / "bench_server.py"


def _load(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_server", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_server", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # about a minute of tiny-model generations on a busy 2-core CPU
def test_tiny_run_reports_every_row_and_ratio(monkeypatch, capsys):
    module = _load(monkeypatch)

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


@pytest.mark.slow  # compiles the tiny UNet (seconds with inductor's cache warm, a minute or two cold)
def test_tiny_run_with_the_compiled_engine(monkeypatch, capsys):
    """--compile: the compiled rows (fuse: several adapters too), 0 recompiles, and issue 12's ratio."""
    module = _load(monkeypatch)
    assert module.main(["--tiny", "--compile", "default"]) == 0

    out = capsys.readouterr().out
    rows = dict(re.findall(r"^\| (\([a-e]\d?\) compiled)\s+\|\s+([0-9.]+) \|", out, flags=re.MULTILINE))
    assert set(rows) == {f"({row}) compiled" for row in ("a", "b", "c2", "c8", "e2", "e4")}, out
    assert "0 recompiles after warm-up" in out
    ratios = re.findall(r"LoRA over the compiled base p50 = ([0-9.]+)", out)
    assert len(ratios) == 2 and all(float(ratio) > 0 for ratio in ratios), out
