"""The GPU benchmark's --tiny mode: the same code that runs full SDXL on a lent GPU."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "hack" / "gpu_bench.py"


@pytest.mark.slow
def test_tiny_run_measures_every_section(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is created.
    monkeypatch.setitem(sys.modules, "gpu_bench", module)
    spec.loader.exec_module(module)

    assert module.main(["--tiny", "--out", str(tmp_path)]) == 0

    report = json.loads((tmp_path / "gpu_bench.json").read_text())
    sections = {row["section"] for row in report["rows"]}
    assert {"1 inference", "2 turbo", "3 adapter switching", "4 training"} <= sections
    variants = {row["variant"] for row in report["rows"] if row["section"] == "1 inference"}
    assert variants == {"SDPA (default)", "+ LoRA r16 unfused", "+ LoRA r16 fused"}
    for row in report["rows"]:
        if row["section"] == "4 training":
            assert row["it_per_s"] > 0
        if row["section"] == "1 inference":
            assert row["s_per_image"] > 0
    assert "| 4 training |" in (tmp_path / "gpu_bench.md").read_text()
