"""How ``zthumb-train train`` relaunches itself under torchrun: one process per GPU on one node,
or one node of several with a static rendezvous on node 0 (``spec.resources.nodes`` > 1).

In a multi-node Job every pod runs the same command line; what differs comes from the pod's env
(``zthumb_contract.env``): its node rank (``JOB_COMPLETION_INDEX``, set by Kubernetes) and pod
0's DNS name and port (set by the operator). Pure functions, a bounded wait for that name, and
``relaunch``, which runs torchrun.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Rendezvous:
    """Where the nodes of a multi-node run meet (torchrun's static rendezvous)."""

    nodes: int
    node_rank: int
    master_addr: str
    master_port: int
    timeout_seconds: int


def processes_per_node(gpus: int, cuda_devices: int) -> int:
    """One process per GPU, or one on a machine without CUDA (it trains on the CPU, gloo)."""
    if cuda_devices == 0:
        return 1
    return max(1, min(gpus, cuda_devices))


def torchrun_argv(argv: Sequence[str], nproc: int, rendezvous: Rendezvous | None = None) -> list[str]:
    """``python -m torch.distributed.run ... -m zthumb_trainer.cli <argv>``.

    Without ``rendezvous``: one node (``--standalone``). With it: node ``node_rank`` of
    ``nodes``, static rendezvous on ``master_addr:master_port``; node 0's TCPStore waits at most
    ``timeout_seconds`` for the others and the others as long to reach it, so a pod that never
    comes fails the rest instead of leaving them hanging. No restarts: a static rendezvous cannot
    take a replacement, so a failed process fails the node (and the Job, all of it).
    """
    command = [sys.executable, "-m", "torch.distributed.run"]
    if rendezvous is None:
        command += ["--standalone", f"--nproc-per-node={nproc}"]
    else:
        command += [
            f"--nnodes={rendezvous.nodes}",
            f"--nproc-per-node={nproc}",
            f"--node-rank={rendezvous.node_rank}",
            "--rdzv-backend=static",
            f"--master-addr={rendezvous.master_addr}",
            f"--master-port={rendezvous.master_port}",
            f"--rdzv-conf=timeout={rendezvous.timeout_seconds}",
        ]
    return [*command, "--max-restarts=0", "-m", "zthumb_trainer.cli", *argv]


def wait_for_host(
    host: str,
    timeout_seconds: float,
    *,
    resolve: Callable[..., object] = socket.getaddrinfo,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Wait until ``host`` resolves. Pod 0's DNS record appears only once its pod has an IP and
    the endpoint controller and DNS have seen it, which can be after a fast pod starts; torch's
    TCPStore does not retry a name that does not resolve. Raises TimeoutError past the timeout."""
    deadline = clock() + timeout_seconds
    while True:
        try:
            resolve(host, None)
            return
        except OSError as error:
            if clock() >= deadline:
                raise TimeoutError(
                    f"{host} did not resolve within {timeout_seconds:.0f}s: {error}"
                ) from error
        sleep(1.0)


def relaunch(gpus: int, rendezvous: Rendezvous | None, argv: Sequence[str]) -> int | None:
    """Re-run ARGV (this very command) under torchrun and return its exit status: one process per
    GPU (one on a CPU-only node of a multi-node run: gloo), and with ``rendezvous`` as one node of
    several. None when there is nothing to launch (fewer GPUs than asked on a single node): the
    caller trains in its own process. Raises TimeoutError when node 0 never resolves."""
    # torch only here: the launcher's planning above runs (and is tested) without it.
    import torch

    available = torch.cuda.device_count()
    if available < gpus:
        if rendezvous is None:
            print(
                f"warning: --gpus {gpus} but {available} CUDA device(s) visible; one process", file=sys.stderr
            )
            return None
        print(
            f"warning: --gpus {gpus} but {available} CUDA device(s) visible; "
            f"{processes_per_node(gpus, available)} process(es) on this node",
            file=sys.stderr,
        )
    if rendezvous is not None:
        wait_for_host(rendezvous.master_addr, rendezvous.timeout_seconds)
        print(
            f"node {rendezvous.node_rank} of {rendezvous.nodes}: static rendezvous on "
            f"{rendezvous.master_addr}:{rendezvous.master_port}",
            file=sys.stderr,
        )
    return subprocess.call(torchrun_argv(argv, processes_per_node(gpus, available), rendezvous))
