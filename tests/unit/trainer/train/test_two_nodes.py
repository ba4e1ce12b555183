"""Two "nodes" on localhost: the train CLI launched twice, as node 0 and node 1 of a static
torchrun rendezvous on 127.0.0.1 (gloo, one process each), exactly as the pods of a multi-node
train Job launch it, train the tiny model together and export one adapter."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from zthumb_trainer.dataset.prepare import prepare_dataset
from zthumb_trainer.export.adapter import DIFFUSERS_WEIGHTS
from zthumb_trainer.tiny.synthetic_dataset import write_synthetic_dataset

STEPS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _summary(output: str) -> dict:
    """The JSON summary line every process prints at the end."""
    lines = [line for line in output.splitlines() if line.startswith("{") and '"world_size"' in line]
    assert len(lines) == 1, output[-3000:]
    return json.loads(lines[0])


@pytest.mark.slow
def test_two_nodes_on_localhost_train_together_and_export_one_adapter(tmp_path: Path, tiny_model) -> None:
    data, run_dir, export_dir = tmp_path / "data", tmp_path / "run", tmp_path / "adapter"
    write_synthetic_dataset(data, count=4, size=(64, 64))
    prepare_dataset(data, run_dir, resolution=64, trigger_word="zt")
    args = [
        "train",
        "--run-name", "multi",
        "--base-model", str(tiny_model.single_file),
        "--model-config", str(tiny_model.diffusers_dir),
        "--run-dir", str(run_dir),
        "--export-dir", str(export_dir),
        "--gpus", "0",
        "--nodes", "2",
        "--rank", "4", "--alpha", "4", "--learning-rate", "0.001",
        "--max-train-steps", str(STEPS), "--checkpointing-steps", "2",
        "--mixed-precision", "no", "--no-gradient-checkpointing", "--no-progress",
    ]  # fmt: skip
    port = str(_free_port())
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("LOCAL_RANK", None)
    # What a pod's env says in a cluster (JOB_COMPLETION_INDEX from Kubernetes, the rest from the
    # operator); here on the command line, as flags, the other way the CLI takes them.
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "zthumb_trainer.cli",
                *args,
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                port,
                "--rendezvous-timeout",
                "120",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for rank in (0, 1)
    ]
    started = time.monotonic()
    try:
        outputs = [node.communicate(timeout=400)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    seconds = time.monotonic() - started
    for rank, (node, output) in enumerate(zip(nodes, outputs, strict=True)):
        assert node.returncode == 0, f"node {rank}:\n{output[-4000:]}"
        # The launcher's own line, then the trainer's: this node's process is rank <rank> of 2.
        assert f"node {rank} of 2: static rendezvous on 127.0.0.1:{port}" in output, output[-3000:]
        assert re.search(rf"process {rank} of 2 \(local 0\) on cpu(:0)?, backend gloo", output), output[
            -3000:
        ]
        summary = _summary(output)
        assert (summary["process_index"], summary["world_size"]) == (rank, 2)
        assert summary["steps_this_run"] == STEPS

    # One adapter, one progress line per step, one set of checkpoints: rank 0 wrote them all.
    assert (export_dir / DIFFUSERS_WEIGHTS).stat().st_size > 0
    assert json.loads((export_dir / "adapter.json").read_text())["steps"] == STEPS
    steps = [json.loads(line)["step"] for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))
    print(f"two nodes trained {STEPS} steps in {seconds:.0f}s")
