"""The collector benchmark's --tiny mode runs and reports its rows (the timings are its output, not
asserted here)."""

from __future__ import annotations

import gc
import re
import subprocess
import sys
from pathlib import Path


def test_tiny_run_reports_each_state_and_leaves_nothing_frozen(hack_script, capsys):
    module = hack_script("bench_gc")
    # In random order a server test may have run its app's lifespan, which freezes the loaded
    # objects: start from an unfrozen collector, so the last assertion is about bench_gc alone.
    gc.unfreeze()

    assert module.main(["--tiny", "--repeats", "1"]) == 0

    out = capsys.readouterr().out
    timings = r"[0-9.]+ / [0-9.]+ \| [0-9.]+ / [0-9.]+ \| [0-9.]+"
    rows = re.findall(rf"^\| ([^|]+?) \| (\d+) \| {timings} \|$", out, re.M)
    assert [label for label, _ in rows] == ["torch + diffusers imported", "+ the tiny pipeline"], out
    # The pipeline's objects are tracked: counted in a fresh interpreter, since in a shuffled
    # suite this process's history (earlier tests' garbage) moves the counts.
    fresh = subprocess.run(
        [sys.executable, str(Path(module.__file__)), "--tiny", "--repeats", "1"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    counts = re.findall(rf"^\| [^|]+? \| (\d+) \| {timings} \|$", fresh.stdout, re.M)
    assert len(counts) == 2 and int(counts[1]) > int(counts[0]), fresh.stdout
    assert gc.get_freeze_count() == 0
