"""The one-command local run, end to end: real processes, real HTTP fetch, the real ZThumb server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_local_run_end_to_end(tmp_path):
    pytest.importorskip("zthumb.cli")
    executable = Path(sys.executable).parent / "zthumb-train"
    started = time.monotonic()
    completed = subprocess.run(
        [str(executable), "run", "--local", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert f"adapter: {tmp_path}/models/lora/demo" in completed.stdout
    assert f"report:  {tmp_path}/outputs/lora_eval/demo/report.md" in completed.stdout

    adapter = tmp_path / "models" / "lora" / "demo"
    assert (adapter / "pytorch_lora_weights.safetensors").exists()
    assert json.loads((adapter / "adapter.json").read_text())["steps"] == 30
    summary = json.loads((tmp_path / "outputs" / "lora_eval" / "demo" / "summary.json").read_text())
    assert summary["requests"] == 4
    assert summary["min_pixel_difference"] > 0  # the adapter changed every pair
    assert summary["adapter"]["sha256"]
    assert (tmp_path / "outputs" / "lora" / "demo" / "progress.jsonl").exists()
    # The train step's numbers reach the report through --train-summary.
    assert summary["training"]["memoryKind"] == "ProcessMaxRSS" and summary["training"]["stepsPerSecond"] > 0
    assert "- Training on `cpu`:" in (tmp_path / "outputs" / "lora_eval" / "demo" / "report.md").read_text()
    # The demo's validation samples: midway and at the end, in the train summary and the report.
    samples = tmp_path / "outputs" / "lora" / "demo" / "samples"
    assert (samples / "step-15.png").exists() and (samples / "step-30.png").exists()
    assert summary["validation"]["passes"] == 2
    assert (
        "![step 15](samples/step-15.png)"
        in (tmp_path / "outputs" / "lora_eval" / "demo" / "report.md").read_text()
    )
    assert seconds < 180, f"local run took {seconds:.0f}s"
