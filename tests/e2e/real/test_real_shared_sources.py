"""Two LoRAFinetunes at once on one volume, sharing one dataset archive and one base model.

A team shares a namespace and its volume: two people start runs at the same moment that fetch
the same base model (same URL and ``path``) and the same ``spec.dataset.source.http`` archive.
Every step pod is PID 1, so the writers differ only by their tokens (``zthumb_trainer.atomic``).
Both runs must reach Succeeded, each trained on the whole dataset (its summary counts every
image), the dataset cache entry must hold every file of the archive, the base model must be the
verified one, and nothing a writer staged may be left beside the published entries.

The archive is served over HTTP by a pod of the trainer image (a synthetic dataset of many small
files, so unpacking takes long enough for the two prepare steps to overlap). The test checks that
the two runs' steps really ran at the same time: otherwise it would prove nothing.

Uses the module fixtures of conftest.py (namespace, operator, tiny model server) and a volume of
its own, so it runs alone (``-k shared_sources``) as well as after the pipeline module.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from realnode import (
    MODEL_PATH,
    ModelServer,
    assert_ran_on_real_node,
    get_json,
    http_file_server,
    log,
    pod_ready,
    tiny_finetune,
    wait_phase,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.realnode]

Kubectl = Callable[..., subprocess.CompletedProcess[str]]

RUNS = ("team-a", "team-b")
CLAIM = "team-data"
ARCHIVE_POD = "team-archive"
IMAGES = 120  # with their captions: 240 files in the archive
STEPS = 4
SHARED_STEPS = ("fetch-model", "prepare-dataset")


@pytest.fixture(scope="module")
def archive(real_ns: str, cluster: Any) -> Iterator[tuple[str, str]]:
    """The volume both runs use, and an HTTP server of the dataset archive; yields its URL and
    SHA256. The server's pod mounts the volume too, for looking inside it afterwards."""
    ns, kubectl = real_ns, cluster.kubectl
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": CLAIM},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    script = (
        "python3 -c 'from pathlib import Path\n"
        "from zthumb_trainer.tiny.synthetic_dataset import write_synthetic_dataset\n"
        f'write_synthetic_dataset(Path("/srv/team"), count={IMAGES}, size=(256, 256))\'\n'
        "tar -C /srv/team -czf /srv/team.tar.gz . && rm -rf /srv/team\n"
        "sha256sum /srv/team.tar.gz > /srv/team.sha256\n"
        "cd /srv && exec python3 -m http.server 8000 --bind 0.0.0.0"
    )
    data = {"name": "data", "persistentVolumeClaim": {"claimName": CLAIM}}
    items = [
        claim,
        *http_file_server(
            ARCHIVE_POD, script, volumes=[data], mounts=[{"name": "data", "mountPath": "/data"}]
        ),
    ]
    kubectl(
        "apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    )
    wait_until(
        lambda: pod_ready(get_json(kubectl, "pod", ARCHIVE_POD, "-n", ns)), 300, "the archive server Ready", 2
    )
    sha256 = on_volume(kubectl, ns, "cat", "/srv/team.sha256").split()[0]
    assert len(sha256) == 64, sha256
    yield f"http://{ARCHIVE_POD}.{ns}.svc/team.tar.gz", sha256
    kubectl("delete", "pod", ARCHIVE_POD, "-n", ns, "--wait=false", check=False)


def on_volume(kubectl: Kubectl, ns: str, *command: str) -> str:
    return kubectl("exec", "-n", ns, ARCHIVE_POD, "--", *command).stdout


def finetune(ns: str, model: ModelServer, name: str, url: str, sha256: str) -> dict[str, Any]:
    run = tiny_finetune(
        ns, model, name, dataset=f"datasets/{name}", steps=STEPS, checkpoint_every=STEPS,
        resources={"nodeSelector": {"zthumb.io/pool": "gpu"}, "cpu": "500m", "memory": "3Gi"},
        storage={"claimName": CLAIM}, deploy={"enabled": False}, eval={"enabled": False},
    )  # fmt: skip
    run["spec"]["dataset"]["source"] = {"http": {"url": url, "sha256": sha256}}
    return run


def step_pod(kubectl: Kubectl, ns: str, run: str, step: str) -> dict[str, Any]:
    """The one pod of ``run``'s Job for ``step`` (a retried step would show as a second pod)."""
    selector = f"zthumb.io/run={run},zthumb.io/step={step}"
    (job,) = get_json(kubectl, "jobs", "-n", ns, "-l", selector)["items"]
    job_name = job["metadata"]["name"]
    pods = get_json(kubectl, "pods", "-n", ns, "-l", f"batch.kubernetes.io/job-name={job_name}")["items"]
    assert len(pods) == 1, f"{run} {step}: {len(pods)} pods, {[p['metadata']['name'] for p in pods]}"
    return pods[0]


def ran_from_to(pod: dict[str, Any]) -> tuple[datetime, datetime]:
    """When the pod's (last) container started and finished, from the kubelet's own record."""
    (status,) = pod["status"]["containerStatuses"]
    done = status["state"]["terminated"]
    return datetime.fromisoformat(done["startedAt"]), datetime.fromisoformat(done["finishedAt"])


def staged_leftovers(kubectl: Kubectl, ns: str) -> list[str]:
    """Names a writer stages under (``.<name>.<purpose>-<token>``, ``<file>.part-<token>``) in the
    shared areas; a published entry's own marker ``.complete`` is not one."""
    out = on_volume(
        kubectl, ns, "find", "/data/models", "/data/datasets/cache", "-maxdepth", "2",
        "(", "-name", ".*", "-o", "-name", "*.part*", ")", "!", "-name", ".complete",
    )  # fmt: skip
    return sorted(line for line in out.splitlines() if line.strip())


@pytest.mark.timeout(900)
def test_two_runs_fetch_one_archive_and_one_model_at_once_and_both_train_on_all_of_it(
    archive: tuple[str, str], real_ns: str, tiny_model_server: ModelServer, operator: str, kubectl: Kubectl
) -> None:
    ns, (url, sha256), started = real_ns, archive, time.monotonic()
    runs = [finetune(ns, tiny_model_server, name, url, sha256) for name in RUNS]
    # One request: the operator sees both at once, as two people pressing enter together.
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": runs}))
    done = {name: wait_phase(kubectl, ns, name, {"Succeeded", "Failed"}, 600, interval=2) for name in RUNS}
    log(f"both runs finished {time.monotonic() - started:.0f}s after apply")
    for obj in done.values():
        assert obj["status"]["phase"] == "Succeeded", json.dumps(obj["status"], indent=1)

    # Every step of both runs was one real pod on the real node that exited 0 (no retries).
    overlaps = {}
    for step in (*SHARED_STEPS, "train"):
        pods = [step_pod(kubectl, ns, name, step) for name in RUNS]
        for pod in pods:
            assert_ran_on_real_node(pod, completed=True)
        (a_start, a_end), (b_start, b_end) = (ran_from_to(pod) for pod in pods)
        overlaps[step] = (min(a_end, b_end) - max(a_start, b_start)).total_seconds()
    log(f"seconds the two runs' steps ran at the same time: {overlaps}")
    assert any(overlaps[step] > 0 for step in SHARED_STEPS), (
        f"the two runs fetched one after the other ({overlaps}): nothing was concurrent"
    )

    # Each run trained on the whole dataset: the same content hash, every image.
    summaries = {
        name: json.loads(on_volume(kubectl, ns, "cat", f"/data/outputs/lora/{name}/summary.json"))
        for name in RUNS
    }
    assert {s["images"] for s in summaries.values()} == {IMAGES}, summaries
    assert len({s["dataset_hash"] for s in summaries.values()}) == 1, summaries
    for name in RUNS:
        assert (
            on_volume(kubectl, ns, "test", "-s", f"/data/models/lora/{name}/pytorch_lora_weights.safetensors")
            == ""
        )

    # One published cache entry, named by the archive's SHA256, holding every file of it.
    entries = on_volume(kubectl, ns, "ls", "-A", "/data/datasets/cache").split()
    assert sha256 in entries, entries
    files = on_volume(kubectl, ns, "find", f"/data/datasets/cache/{sha256}", "-type", "f").split()
    names = {path.rsplit("/", 1)[1] for path in files}
    assert ".complete" in names
    assert len([n for n in names if n.endswith(".png")]) == IMAGES, sorted(names)
    assert len([n for n in names if n.endswith(".txt")]) == IMAGES, sorted(names)

    # The base model both fetched is the verified one, and no writer's staging is left behind.
    model = on_volume(kubectl, ns, "sha256sum", f"/data/{MODEL_PATH}").split()[0]
    assert model == tiny_model_server.sha256
    assert staged_leftovers(kubectl, ns) == []
