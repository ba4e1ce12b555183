"""The server benchmark's --tiny mode: every row (multi-adapter ones included) runs and is reported."""

from __future__ import annotations

import re

import pytest


@pytest.mark.slow  # about a minute of tiny-model generations on a busy 2-core CPU
def test_tiny_run_reports_every_row_and_ratio(hack_script, capsys):
    module = hack_script("bench_server")

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
def test_tiny_run_with_the_compiled_engine(hack_script, capsys):
    """--compile: the compiled rows (fuse: several adapters too), 0 recompiles, and LoRA / base."""
    module = hack_script("bench_server")
    assert module.main(["--tiny", "--compile", "default"]) == 0

    out = capsys.readouterr().out
    rows = dict(re.findall(r"^\| (\([a-e]\d?\) compiled)\s+\|\s+([0-9.]+) \|", out, flags=re.MULTILINE))
    assert set(rows) == {f"({row}) compiled" for row in ("a", "b", "c2", "c8", "e2", "e4")}, out
    assert "0 recompiles after warm-up" in out
    ratios = re.findall(r"LoRA over the compiled base p50 = ([0-9.]+)", out)
    assert len(ratios) == 2 and all(float(ratio) > 0 for ratio in ratios), out
