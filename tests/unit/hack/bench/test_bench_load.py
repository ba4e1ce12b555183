"""The load benchmark's --tiny mode: the real server on loopback, a few cancelled requests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_tiny_run_passes_every_check(tmp_path, hack_script):
    module = hack_script("bench_load")

    rc = module.main(["--tiny", "--out", str(tmp_path)])

    report = json.loads((tmp_path / "bench_load.json").read_text())
    assert report["checks"] and all(report["checks"].values()), (report["checks"], report["errors"])
    assert rc == 0
    outcomes = report["outcomes"]
    assert outcomes["requests"] == 12
    assert outcomes["200"] >= 1 and outcomes["5xx"] == 0
    # A cancel that lands after the last denoising step still completes its generation
    # (answered 499), so generations may exceed the 200s by at most those cancels.
    generated_beyond_200s = report["server"]["generations"] - report["server"]["responses_200"]
    assert 0 <= generated_beyond_200s <= report["cancels"]["server_cancelled_while_running"]
    assert report["config"]["zthumb"] == str(Path(sys.modules["zthumb"].__file__).parent)
    assert "| 200 " in (tmp_path / "bench_load.md").read_text()
    # The throughput table: batching off and on at each client count, every request answered.
    rows = report["throughput"]
    assert [row["clients"] for row in rows] == [1, 2]
    assert all(row["requests_off"] > 0 and row["requests_on"] > 0 for row in rows)
    assert all(row["failed_off"] == 0 and row["failed_on"] == 0 for row in rows)
    assert "images/s off" in (tmp_path / "bench_load.md").read_text()
