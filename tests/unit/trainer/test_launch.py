"""The train CLI's torchrun launch: one node (--standalone) or one node of several (static
rendezvous from the pod's env), without running torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner
from zthumb_contract import env
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.steps import RENDEZVOUS_PORT, RENDEZVOUS_TIMEOUT_SECONDS, RunPaths, train_step
from zthumb_trainer import launch
from zthumb_trainer.cli import app
from zthumb_trainer.launch import Rendezvous, processes_per_node, torchrun_argv, wait_for_host
from zthumb_trainer.local.run import LocalRunError, run_local


def test_one_node_is_standalone_with_one_process_per_gpu() -> None:
    argv = torchrun_argv(["train", "--gpus", "4"], 4)
    assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in argv and "--nproc-per-node=4" in argv
    assert not any(a.startswith(("--nnodes", "--node-rank", "--master-addr")) for a in argv)
    assert argv[-5:] == ["-m", "zthumb_trainer.cli", "train", "--gpus", "4"]


def test_one_node_of_several_is_a_bounded_static_rendezvous() -> None:
    rdzv = Rendezvous(
        nodes=3, node_rank=2, master_addr="job-0.job.ml.svc", master_port=29500, timeout_seconds=90
    )
    argv = torchrun_argv(["train", "--nodes", "3"], 8, rdzv)
    options = argv[3 : argv.index("-m", 3)]
    assert options == [
        "--nnodes=3",
        "--nproc-per-node=8",
        "--node-rank=2",
        "--rdzv-backend=static",
        "--master-addr=job-0.job.ml.svc",
        "--master-port=29500",
        "--rdzv-conf=timeout=90",
        "--max-restarts=0",
    ]
    assert "--standalone" not in argv
    assert argv[-3:] == ["train", "--nodes", "3"]


@pytest.mark.parametrize(
    ("gpus", "cuda", "expected"), [(4, 4, 4), (4, 8, 4), (4, 2, 2), (1, 0, 1), (0, 0, 1)]
)
def test_processes_per_node(gpus: int, cuda: int, expected: int) -> None:
    assert processes_per_node(gpus, cuda) == expected


def test_waiting_for_node_zeros_name_is_bounded() -> None:
    now = [0.0]
    attempts: list[str] = []

    def never(host: str, _port: object) -> None:
        attempts.append(host)
        raise OSError("Name or service not known")

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(TimeoutError, match=r"job-0\.job\.ml\.svc did not resolve within 5s"):
        wait_for_host("job-0.job.ml.svc", 5, resolve=never, clock=lambda: now[0], sleep=sleep)
    assert 5 <= len(attempts) <= 7

    later = iter([OSError("not yet"), OSError("not yet"), None])

    def third_time(host: str, _port: object) -> None:
        outcome = next(later)
        if outcome:
            raise outcome

    now[0] = 0.0
    wait_for_host("job-0.job.ml.svc", 5, resolve=third_time, clock=lambda: now[0], sleep=sleep)
    assert now[0] == 2.0


@pytest.fixture
def relaunch(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Capture the torchrun command the CLI would run (CPU only: no CUDA device)."""
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "call", lambda command: calls.append(command) or 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(
        launch, "wait_for_host", lambda host, timeout: calls.append(["resolve", host, str(timeout)])
    )
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return calls


def _train_args(nodes: int, gpus: int = 1) -> list[str]:
    spec = LoRAFinetuneSpec.model_validate({"resources": {"nodes": nodes, "gpus": gpus}})
    return list(train_step(RunPaths("/data", "style", spec)).args)


def test_the_train_steps_argv_with_the_pods_env_launches_node_k(relaunch, monkeypatch) -> None:
    args = _train_args(nodes=2)
    monkeypatch.setattr(sys, "argv", ["zthumb-train", *args])
    pod_env = {
        env.NODE_RANK: "1",
        env.MASTER_ADDR: "style-train-0.style-train.ml.svc",
        env.MASTER_PORT: "29500",
    }
    result = CliRunner().invoke(app, args, env=pod_env)
    assert result.exit_code == 0, result.output
    resolve, command = relaunch
    assert resolve == ["resolve", "style-train-0.style-train.ml.svc", str(RENDEZVOUS_TIMEOUT_SECONDS)]
    assert "--node-rank=1" in command and "--nnodes=2" in command
    assert "--master-addr=style-train-0.style-train.ml.svc" in command
    assert f"--master-port={RENDEZVOUS_PORT}" in command
    assert "--nproc-per-node=1" in command  # no CUDA: one gloo process on this node
    assert command[command.index("zthumb_trainer.cli") + 1 :] == args
    assert "node 1 of 2: static rendezvous on style-train-0.style-train.ml.svc:29500" in result.output


def test_a_node_rank_outside_the_nodes_is_refused(relaunch, monkeypatch) -> None:
    args = _train_args(nodes=2)
    monkeypatch.setattr(sys, "argv", ["zthumb-train", *args])
    result = CliRunner().invoke(app, args, env={env.NODE_RANK: "2"})
    assert result.exit_code == 2 and "--node-rank 2 is not below --nodes 2" in result.output
    assert relaunch == []


def test_one_node_one_gpu_runs_in_process(relaunch, monkeypatch) -> None:
    """No torchrun for nodes 1 × gpus 1 (the run itself fails here: there is no base model)."""
    args = [*_train_args(nodes=1), "--run-dir", "/nonexistent-run-dir"]
    monkeypatch.setattr(sys, "argv", ["zthumb-train", *args])
    CliRunner().invoke(app, args)
    assert relaunch == []


def test_the_local_runner_refuses_several_nodes(tmp_path: Path) -> None:
    manifest = tmp_path / "lft.yaml"
    manifest.write_text(
        "apiVersion: zthumb.io/v1alpha1\nkind: LoRAFinetune\nmetadata: {name: multi}\n"
        "spec: {resources: {nodes: 2, gpus: 1}}\n"
    )
    with pytest.raises(LocalRunError, match=r"spec.resources.nodes is 2: the local runner runs on one node"):
        run_local(manifest, tmp_path / "work")
    assert not (tmp_path / "work" / "tiny-model").exists()
