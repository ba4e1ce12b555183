"""Multi-node training in real pods: a LoRAFinetune with ``resources.nodes: 2``
and ``gpus: 1`` trains the tiny model as an Indexed Job of two pods on the real node (which
advertises ``nvidia.com/gpu: 2``; nothing is a GPU, so each pod trains one gloo process on its
CPU). Pod 1 finds pod 0 by its DNS name through the run's headless Service (CoreDNS, kube-proxy
and the CNI bridge all real), torchrun's static rendezvous joins them into one world of two, and
rank 0 exports the adapter.

Before that, the API server itself refuses ``nodes: 2`` with ``gpus: 0``, naming the field.
Then a second two-node run loses node 1's training process (SIGKILL) mid-training: the Job
fails as a whole at once, node 0 is stopped instead of waiting for its peer, and the run's
status names node 1, its pod and its exit code.

Uses the module fixtures of conftest.py (namespace, operator, tiny model server) and a volume of
its own, so it runs alone (``-k multinode``) as well as after the pipeline module.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from realnode import (
    TRAINER_IMAGE,
    ModelServer,
    assert_ran_on_real_node,
    get_json,
    log,
    pod_manifest,
    tiny_finetune,
    wait_phase,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.realnode]

Kubectl = Callable[..., subprocess.CompletedProcess[str]]

RUN = "multi-style"
BROKEN_RUN = "multi-broken"
CLAIM = "multi-data"
DATASET = "datasets/multi"
STEPS = 6
VOLUME_POD = "multi-volume"


def _finetune(ns: str, model: ModelServer, name: str, resources: dict[str, Any]) -> dict[str, Any]:
    return tiny_finetune(
        ns, model, name, dataset=DATASET, steps=STEPS, checkpoint_every=3,
        resources={"nodeSelector": {"zthumb.io/pool": "gpu"}, "cpu": "500m", "memory": "3Gi", **resources},
        storage={"claimName": CLAIM}, deploy={"enabled": False}, eval={"enabled": False},
    )  # fmt: skip


def _on_volume(kubectl: Kubectl, ns: str, *command: str) -> str:
    return kubectl("exec", "-n", ns, VOLUME_POD, "--", *command).stdout


@pytest.fixture(scope="module")
def volume(real_ns: str, cluster: Any) -> Iterator[str]:
    """A volume both pods mount (the provisioner's claims are ReadWriteMany on the one node), with
    the dataset on it, and a pod that holds it for looking inside."""
    ns, kubectl = real_ns, cluster.kubectl
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": CLAIM},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    script = (
        "from pathlib import Path\n"
        "from zthumb_trainer.tiny.synthetic_dataset import write_synthetic_dataset\n"
        f"print(len(write_synthetic_dataset(Path('/data/{DATASET}'), count=4, size=(256, 256))), 'images')\n"
        "import time; time.sleep(900)\n"
    )
    holder = pod_manifest(
        VOLUME_POD,
        image=TRAINER_IMAGE,
        command=["python3", "-c", script],
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": CLAIM}}],
        mounts=[{"name": "data", "mountPath": "/data"}],
    )
    kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [claim, holder]}),
    )
    wait_until(
        lambda: "4 images" in kubectl("logs", "-n", ns, VOLUME_POD, check=False).stdout,
        180,
        "the dataset on the volume",
        2,
    )

    yield ns
    kubectl("delete", "pod", VOLUME_POD, "-n", ns, "--wait=false", check=False)


@pytest.mark.timeout(900)
def test_two_node_finetune_runs_as_an_indexed_job_of_two_real_pods(
    volume: str, tiny_model_server: ModelServer, operator: str, kubectl: Kubectl
) -> None:
    ns, started = volume, time.monotonic()

    # --- the API server refuses several nodes without GPUs, naming the field
    bad = _finetune(ns, tiny_model_server, "multi-bad", {"nodes": 2, "gpus": 0})
    refused = kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
    assert refused.returncode != 0, refused.stdout
    assert "spec.resources.nodes" in refused.stderr and "nodes > 1 needs gpus >= 1" in refused.stderr, (
        refused.stderr
    )

    # --- the two-node run
    kubectl(
        "apply", "-f", "-", input=json.dumps(_finetune(ns, tiny_model_server, RUN, {"nodes": 2, "gpus": 1}))
    )

    obj = wait_phase(kubectl, ns, RUN, {"Succeeded", "Failed"}, 600, interval=2)
    seconds = time.monotonic() - started
    status = obj["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    assert status["adapterPath"].endswith(f"models/lora/{RUN}")

    job_name = status["jobs"]["train"]
    job = get_json(kubectl, "job", job_name, "-n", ns)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["backoffLimit"] == 0 and spec["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
    assert job["status"].get("succeeded") == 2 and job["status"].get("completedIndexes") == "0,1"
    service = get_json(kubectl, "service", job_name, "-n", ns)
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]

    pods = get_json(kubectl, "pods", "-n", ns, "-l", f"batch.kubernetes.io/job-name={job_name}")["items"]
    by_index = {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p for p in pods}
    assert sorted(by_index) == ["0", "1"] and len(pods) == 2, [p["metadata"]["name"] for p in pods]
    for index, pod in sorted(by_index.items()):
        assert_ran_on_real_node(pod, completed=True)  # zthumb-real-0, containerd://, exit code 0
        assert pod["spec"]["hostname"] == f"{job_name}-{index}" and pod["spec"]["subdomain"] == job_name
        out = kubectl("logs", "-n", ns, pod["metadata"]["name"]).stdout
        assert f"node {index} of 2: static rendezvous on {job_name}-0.{job_name}.{ns}.svc:29500" in out, out[
            -3000:
        ]
        assert re.search(rf"process {index} of 2 \(local 0\) on cpu(:0)?, backend gloo", out), out[-3000:]
        (summary,) = [
            json.loads(line) for line in out.splitlines() if line.startswith("{") and "world_size" in line
        ]
        assert (summary["process_index"], summary["world_size"]) == (int(index), 2), summary
        (container,) = pod["status"]["containerStatuses"]
        log(
            f"{pod['metadata']['name']}: node {pod['spec']['nodeName']}, {container['containerID']}, "
            f"exit code {container['state']['terminated']['exitCode']}"
        )

    # One adapter, every step once in progress.jsonl: rank 0 wrote, both trained.
    weights = _on_volume(kubectl, ns, "ls", "-l", f"/data/models/lora/{RUN}/pytorch_lora_weights.safetensors")
    assert "pytorch_lora_weights.safetensors" in weights
    progress = _on_volume(kubectl, ns, "cat", f"/data/outputs/lora/{RUN}/progress.jsonl").splitlines()
    assert [json.loads(line)["step"] for line in progress] == list(range(1, STEPS + 1))
    log(f"two-node fine-tune: apply to Succeeded {seconds:.0f}s")


# Kills the training process (torchrun's worker, not torchrun itself) of the container it runs in.
KILL_WORKER = (
    "import os, signal\n"
    "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "    argv = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
    "    if b'zthumb_trainer.cli' in argv and b'torch.distributed.run' not in argv:\n"
    "        os.kill(int(pid), signal.SIGKILL); print('killed', pid)\n"
)


@pytest.mark.timeout(600)
def test_a_failed_node_fails_the_whole_job_at_once_and_the_status_names_it(
    volume: str, tiny_model_server: ModelServer, operator: str, kubectl: Kubectl
) -> None:
    ns = volume
    run = _finetune(ns, tiny_model_server, BROKEN_RUN, {"nodes": 2, "gpus": 1})
    run["spec"]["training"].update({"maxTrainSteps": 100000, "checkpointingSteps": 100000})
    kubectl("apply", "-f", "-", input=json.dumps(run))

    def node_one_training() -> dict[str, Any] | None:
        pods = get_json(kubectl, "pods", "-n", ns, "-l", f"zthumb.io/run={BROKEN_RUN},zthumb.io/step=train")
        for pod in pods["items"]:
            index = pod["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index")
            if index == "1" and pod["status"].get("phase") == "Running":
                out = kubectl("logs", "-n", ns, pod["metadata"]["name"], check=False).stdout
                if "process 1 of 2" in out:
                    return pod
        return None

    pod1 = wait_until(node_one_training, 300, "node 1 training", 1)

    def steps_done() -> int:  # rank 0's progress.jsonl: one line per step, a collective each
        return len(
            _on_volume(kubectl, ns, "cat", f"/data/outputs/lora/{BROKEN_RUN}/progress.jsonl").splitlines()
        )

    # A few steps in: both ranks are inside the training loop's collectives.
    wait_until(lambda: steps_done() >= 3, 120, "three training steps", 0.5)
    killed_at = time.monotonic()
    out = kubectl("exec", "-n", ns, pod1["metadata"]["name"], "--", "python3", "-c", KILL_WORKER).stdout
    assert "killed" in out, out

    status = wait_phase(kubectl, ns, BROKEN_RUN, {"Failed", "Succeeded"}, 120)["status"]
    failed_after = time.monotonic() - killed_at
    assert (status["phase"], status["reason"]) == ("Failed", "TrainFailed"), json.dumps(status, indent=1)
    message = status["message"]
    assert f"node 1 (pod {pod1['metadata']['name']}) failed first: exit code 1" in message, message
    job_name = status["jobs"]["train"]
    # FailureTarget at once (the operator acts on it), Failed once every pod has terminated.
    job = get_json(kubectl, "job", job_name, "-n", ns)
    (target,) = [c for c in job["status"]["conditions"] if c["type"] == "FailureTarget"]
    assert target["reason"] == "PodFailurePolicy" and pod1["metadata"]["name"] in target["message"], target

    # Node 0 is not left waiting for its peer: the Job controller stops it (bounded by its grace period).
    def nothing_runs() -> bool:
        pods = get_json(kubectl, "pods", "-n", ns, "-l", f"batch.kubernetes.io/job-name={job_name}")["items"]
        return all(p["status"].get("phase") in ("Succeeded", "Failed") for p in pods)

    wait_until(nothing_runs, 90, "every pod of the failed Job stopped", 1)
    stopped_after = time.monotonic() - killed_at
    job = wait_until(
        lambda: (
            (job := get_json(kubectl, "job", job_name, "-n", ns))
            and any(c["type"] == "Failed" for c in job["status"].get("conditions") or [])
            and job
        ),
        60,
        f"Job {job_name} Failed",
        1,
    )
    assert not job["status"].get("active"), job["status"]
    log(f"node 1 killed: run Failed after {failed_after:.0f}s, every pod stopped after {stopped_after:.0f}s")
    log(f"status message: {message}")
