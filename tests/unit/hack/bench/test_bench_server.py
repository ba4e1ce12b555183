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
    assert "image encoding, 64x64" in out and "| server png (" in out, out


def _encoding_rows(out: str) -> dict[str, tuple[float, int]]:
    found = re.findall(
        r"^\| ((?:server|png|jpeg|webp) [^|]+?)\s+\|\s+([0-9.]+) \|[^|]+\|\s+([0-9,]+) \|", out, re.M
    )
    return {name: (float(p50), int(size.replace(",", ""))) for name, p50, size in found}


def test_the_encoding_table_times_the_servers_settings_and_the_alternatives(hack_script, capsys):
    """--encoding-only: every format at the server's own settings (from zthumb.serving) and every
    alternative, each with its time and output bytes; no model is loaded."""
    from zthumb.serving import SAVE_OPTIONS

    module = hack_script("bench_server")
    bench = hack_script("bench_image_encoding")
    assert module.main(["--encoding-only", "--encoding-size", "32", "--encoding-rounds", "2"]) == 0

    out = capsys.readouterr().out
    rows = _encoding_rows(out)
    expected = {label for label, _, _ in bench.ALTERNATIVES} | {
        f"server {fmt} ({', '.join(f'{k}={v}' for k, v in options.items())})"
        for fmt, (_, options) in SAVE_OPTIONS.items()
    }
    assert set(rows) == expected, out
    assert all(seconds >= 0 and size > 0 for seconds, size in rows.values()), out
    assert "lossless" in out and "32x32" in out


def test_the_benchmark_image_is_deterministic_and_not_trivial(hack_script):
    import numpy as np

    bench = hack_script("bench_image_encoding")
    first, again = (
        np.asarray(bench.realistic_image(64, seed=3)),
        np.asarray(bench.realistic_image(64, seed=3)),
    )
    assert np.array_equal(first, again) and first.shape == (64, 64, 3)
    assert len(np.unique(first.reshape(-1, 3), axis=0)) > 1000  # neither flat nor a plain gradient


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
