"""The whole product in real containers on the real node.

In order, sharing one namespace (Pod Security ``restricted``), one Helm release and
the operator pod of charts/zthumb-operator:

1. the operator is a real pod running its own image as its own ServiceAccount;
2. ``helm install`` provisions the tiny model from an in-cluster HTTP Service (the
   fetch-model init container), the server pod becomes Ready through its own probes,
   and ``helm test`` runs its pod (readyz, healthz and one real generation); the default
   install serves with the API key it generated: without it /generate and /models say 401;
3. a LoRAFinetune runs fetch, prepare, train and eval as real Jobs; mid-training the
   train pod is deleted (the Job's next pod resumes from the checkpoint its SIGTERM
   wrote: progress.jsonl holds every step exactly once) and so is the operator pod
   (its replacement adopts the run: the same Jobs, none duplicated); the Deployment
   rolls, the new pod serves the adapter, eval reaches it by its Service name with the key
   (the same Secret reference as the server's, never the key itself), the report and PNGs
   are on the volume, and the report page is served with the key and refused without;
4. a deleted server pod is replaced by one serving the same adapter (same sha256);
5. an adapter that keeps the new server pods unready is rolled back while the old
   pod keeps serving the previous adapter.

Every pod involved is checked to have run on zthumb-real-0 in containerd.
Run with ``-s`` to see the timeline.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from realnode import (
    HELM_TEST_IMAGE,
    MODEL_CONFIG,
    MODEL_PATH,
    NODE,
    OPERATOR_NS,
    TRAINER_IMAGE,
    ModelServer,
    assert_ran_on_real_node,
    get_json,
    http_in_pod,
    lft,
    log,
    operator_pods,
    pod_manifest,
    pod_ready,
    read_api_key,
    tiny_finetune,
    wait_phase,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.realnode]

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "zthumb"
RELEASE = "zthumb"
SERVER_SELECTOR = f"app.kubernetes.io/name=zthumb,app.kubernetes.io/instance={RELEASE}"
# The Secret the chart generates the server's API key into (a default install: auth.enabled).
KEY_SECRET = f"{RELEASE}-api-key"
KEY_REF = {"secretKeyRef": {"name": KEY_SECRET, "key": "api-key"}}
DATASET = "datasets/real"
RUN = "real-style"
BAD_RUN = "real-bad"
STEPS = 240
CHECKPOINT_EVERY = 40

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@dataclass
class Shared:
    """What the ordered tests hand on to each other."""

    ns: str
    model: ModelServer
    installed: bool = False
    api_key: str | None = None
    succeeded: bool = False
    adapter_sha256: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def shared(real_ns: str, tiny_model_server: ModelServer, operator: str) -> Iterator[Shared]:
    state = Shared(ns=real_ns, model=tiny_model_server)
    yield state
    log(f"timings: {json.dumps({k: round(v) for k, v in state.timings.items()})}")


def need(condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(f"needs {what}, which an earlier test in this module did not get to", pytrace=False)


# --------------------------------------------------------------------------- helpers


def server_pods(kubectl: Kubectl, ns: str) -> list[dict[str, Any]]:
    pods = get_json(kubectl, "pods", "-n", ns, "-l", SERVER_SELECTOR)["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def ready_server_pod(kubectl: Kubectl, ns: str) -> dict[str, Any]:
    ready = [p for p in server_pods(kubectl, ns) if pod_ready(p)]
    assert ready, "no Ready server pod"
    return ready[0]


def in_pod(kubectl: Kubectl, ns: str, pod: str, *command: str, check: bool = True) -> str:
    return kubectl("exec", "-n", ns, pod, "-c", "zthumb", "--", *command, check=check).stdout


def volume(kubectl: Kubectl, ns: str, *command: str, check: bool = True) -> str:
    """Run a command in a Ready server pod, which mounts the shared volume at /data."""
    return in_pod(kubectl, ns, ready_server_pod(kubectl, ns)["metadata"]["name"], *command, check=check)


def server_get(kubectl: Kubectl, ns: str, pod: str, path: str, key: str | None = None) -> dict[str, Any]:
    """GET on the server's loopback from inside its own pod (no port leaves the node)."""
    code, body = http_in_pod(kubectl, ns, pod, f"GET {path}", key=key)
    assert code == 200, f"GET {path}: HTTP {code}: {body[:1000]}"
    return json.loads(body)


def generate_through_service(kubectl: Kubectl, ns: str, pod: str, key: str | None) -> tuple[int, str]:
    """A tiny POST /generate from ``pod`` through the Service, as an in-cluster client makes it."""
    body = {"prompt": "a photo of zthumb", "steps": 1, "width": 64, "height": 64, "seed": 0, "num_images": 1}
    url = f"http://{RELEASE}.{ns}.svc:8080/generate"
    return http_in_pod(kubectl, ns, pod, f"POST {url}", key=key, body=json.dumps(body))


def run_jobs(kubectl: Kubectl, ns: str, run: str) -> dict[str, dict[str, Any]]:
    items = get_json(kubectl, "jobs", "-n", ns, "-l", f"zthumb.io/run={run}")["items"]
    by_step: dict[str, dict[str, Any]] = {}
    for job in items:
        step = job["metadata"]["labels"]["zthumb.io/step"]
        assert step not in by_step, (
            f"two Jobs for step {step}: {by_step[step]['metadata']['name']}, {job['metadata']['name']}"
        )
        by_step[step] = job
    return by_step


def job_pods(kubectl: Kubectl, ns: str, job: str) -> list[dict[str, Any]]:
    pods = get_json(kubectl, "pods", "-n", ns, "-l", f"batch.kubernetes.io/job-name={job}")["items"]
    return sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"])


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == ctype:
            return cond
    return {}


def phase_of(kubectl: Kubectl, ns: str, run: str) -> str:
    return (lft(kubectl, ns, run).get("status") or {}).get("phase") or ""


def finetune(ns: str, model: ModelServer, name: str, **overrides: Any) -> dict[str, Any]:
    sections: dict[str, Any] = {
        "training": {"checkpointsTotalLimit": 2},
        # gpus: 1 + the GPU pool's label: the train pod goes where a GPU pod would.
        "resources": {"gpus": 1, "nodeSelector": {"zthumb.io/pool": "gpu"}, "cpu": "500m", "memory": "4Gi"},
        "storage": {"claimName": f"{RELEASE}-data"},
        "deploy": {"deployment": RELEASE, "loraScale": 0.8, "rolloutTimeoutSeconds": 300},
        "eval": {
            "prompts": ["a photo of {trigger}"],
            "seeds": [0],
            "scales": [0.0, 0.8],
            "steps": 2,
            "width": 64,
            "height": 64,
            # The tiny CLIP from the same in-cluster server: fetched, verified and cached by the eval pod.
            "clip": {
                "url": f"{model.url}/tiny_clip.safetensors",
                "sha256": model.clip_sha256,
                "path": "models/tiny_clip.safetensors",
                "configUrl": f"{model.url}/tiny_clip-config/",
                "configPath": "models/tiny_clip-config",
            },
        },
    }
    for key, value in overrides.items():
        sections[key] = {**sections.get(key, {}), **value}
    return tiny_finetune(
        ns, model, name, dataset=DATASET, steps=STEPS, checkpoint_every=CHECKPOINT_EVERY, **sections
    )


def helm_values(model: ModelServer) -> dict[str, Any]:
    registry, _, rest = HELM_TEST_IMAGE.partition("/")
    repository, _, tag = rest.rpartition(":")
    return {
        "image": {"pullPolicy": "Never"},
        "gpu": {"enabled": False},
        "server": {"device": "cpu"},
        "nodeSelector": {"zthumb.io/node": "real"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "4Gi"}},
        "model": {
            "path": MODEL_PATH,
            "config": MODEL_CONFIG,
            "fetch": {
                "url": f"{model.url}/tiny_sdxl.safetensors",
                "sha256": model.sha256,
                "configUrl": f"{model.url}/diffusers/",
                "image": {"pullPolicy": "Never"},
            },
        },
        "persistence": {"size": "2Gi"},
        # The tiny model loads in seconds: probe often so the tests do not wait for nothing.
        "startupProbe": {"initialDelaySeconds": 2, "periodSeconds": 2, "failureThreshold": 150},
        "readinessProbe": {"periodSeconds": 2},
        "terminationGracePeriodSeconds": 5,
        "tests": {
            "image": {"registry": registry, "repository": repository, "tag": tag, "pullPolicy": "Never"},
            "timeoutSeconds": 60,
            "generate": {"enabled": True, "steps": 1, "size": 64},
        },
    }


# --------------------------------------------------------------------------- 1. the operator


def test_operator_runs_as_a_real_pod_with_its_own_service_account(shared: Shared, kubectl: Kubectl) -> None:
    (pod,) = [p for p in operator_pods(kubectl) if not p["metadata"].get("deletionTimestamp")]
    assert pod_ready(pod)
    assert_ran_on_real_node(pod)
    assert pod["spec"]["serviceAccountName"] == "zthumb-operator"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "ghcr.io/zthumb/operator:0.1.0"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    out = wait_until(
        lambda: (
            (text := kubectl("logs", "-n", OPERATOR_NS, pod["metadata"]["name"]).stdout)
            and "Initial authentication has finished" in text
            and text
        ),
        60,
        "the operator to log in",
        1,
    )
    assert "starting (cluster-wide)" in out, out[-3000:]
    assert "orbidden" not in out, out[-3000:]


# --------------------------------------------------------------------------- 2. helm install + helm test


@pytest.mark.timeout(900)
def test_helm_install_fetches_the_model_becomes_ready_and_helm_test_passes(
    shared: Shared, kubectl: Kubectl, helm: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    ns, started = shared.ns, time.monotonic()
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(helm_values(shared.model)))
    out = helm("install", RELEASE, str(CHART), "-n", ns, "-f", str(values), timeout=120).stdout
    assert f"http://{RELEASE}.{ns}.svc:8080/generate" in out
    assert f"get secret {KEY_SECRET} -o jsonpath='{{.data.api-key}}' | base64 -d" in out  # NOTES.txt

    # The dataset the fine-tune trains on, written onto the release's volume by a pod of the
    # trainer image (while the server's init container fetches the model).
    script = (
        "from pathlib import Path\n"
        "from zthumb_trainer.tiny.synthetic_dataset import write_synthetic_dataset\n"
        f"print(len(write_synthetic_dataset(Path('/data/{DATASET}'), count=8, size=(256, 256))), 'images')\n"
    )
    writer = pod_manifest(
        "write-dataset",
        image=TRAINER_IMAGE,
        command=["python3", "-c", script],
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": f"{RELEASE}-data"}}],
        mounts=[{"name": "data", "mountPath": "/data"}],
    )
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(writer))

    kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", ns, "--timeout=600s", timeout=620)
    shared.timings["helm install to Ready"] = time.monotonic() - started
    log(f"server Ready {time.monotonic() - started:.0f}s after helm install")
    pvc = get_json(kubectl, "pvc", f"{RELEASE}-data", "-n", ns)
    assert pvc["status"]["phase"] == "Bound", pvc["status"]
    assert get_json(kubectl, "storageclass", pvc["spec"]["storageClassName"])["provisioner"]

    pod = ready_server_pod(kubectl, ns)
    assert_ran_on_real_node(pod)  # the fetch-model init container exited 0 too
    name = pod["metadata"]["name"]
    fetched = kubectl("logs", "-n", ns, name, "-c", "fetch-model").stdout
    assert "downloaded" in fetched and shared.model.sha256 in fetched, fetched
    ready = server_get(kubectl, ns, name, "/readyz")
    assert ready["ready"] is True and ready["backend_loaded"] is True, ready
    # The default install has a key, generated into the chart's Secret: read as NOTES.txt says.
    dep = get_json(kubectl, "deployment", RELEASE, "-n", ns)
    (server,) = dep["spec"]["template"]["spec"]["containers"]
    assert {"name": "ZTHUMB_API_KEY", "valueFrom": KEY_REF} in server["env"]
    shared.api_key = key = read_api_key(kubectl, ns, KEY_SECRET)
    assert key not in json.dumps(dep)
    models = server_get(kubectl, ns, name, "/models", key)
    assert models["lora_loaded"] is False and models["lora_path"] is None, models
    # Without the key, or with another one, the API refuses: loopback and through the Service.
    assert http_in_pod(kubectl, ns, name, "GET /models", key=None)[0] == 401
    for given in (None, "not-the-key"):
        code, body = generate_through_service(kubectl, ns, name, given)
        assert code == 401, f"POST /generate with key {given!r}: HTTP {code}: {body[:500]}"
    code, body = generate_through_service(kubectl, ns, name, key)
    assert code == 200 and '"images"' in body, body[:2000]
    assert get_json(kubectl, "networkpolicy", RELEASE, "-n", ns)["spec"]["ingress"][0]["from"] == [
        {"podSelector": {}}
    ]
    assert volume(kubectl, ns, "sha256sum", f"/data/{MODEL_PATH}").split()[0] == shared.model.sha256

    wait_until(
        lambda: (
            get_json(kubectl, "pod", "write-dataset", "-n", ns)["status"]["phase"] in ("Succeeded", "Failed")
        ),
        180,
        "the dataset pod to finish",
        2,
    )
    writer_pod = get_json(kubectl, "pod", "write-dataset", "-n", ns)
    assert_ran_on_real_node(writer_pod, completed=True)
    assert "8 images" in kubectl("logs", "-n", ns, "write-dataset").stdout

    started = time.monotonic()
    test = helm("test", RELEASE, "-n", ns, "--logs", "--timeout", "180s", timeout=240)
    shared.timings["helm test"] = time.monotonic() - started
    assert re.search(r"Phase:\s+Succeeded", test.stdout), test.stdout
    assert "OK: POST" in test.stdout, test.stdout  # one real generation through the Service
    test_pod = get_json(kubectl, "pod", f"{RELEASE}-test-connection", "-n", ns)
    assert test_pod["spec"]["containers"][0]["image"] == HELM_TEST_IMAGE
    assert_ran_on_real_node(test_pod, completed=True)
    shared.installed = True


# --------------------------------------------------------------------------- 3. the fine-tune, with faults


def _progress_steps(kubectl: Kubectl, ns: str) -> list[int]:
    text = volume(kubectl, ns, "cat", f"/data/outputs/lora/{RUN}/progress.jsonl", check=False)
    return [json.loads(line)["step"] for line in text.splitlines() if line.strip()]


def _last_step(kubectl: Kubectl, ns: str) -> int:
    out = volume(kubectl, ns, "tail", "-n", "1", f"/data/outputs/lora/{RUN}/progress.jsonl", check=False)
    return int(json.loads(out)["step"]) if out.strip() else 0


@pytest.mark.timeout(1500)
def test_finetune_runs_in_real_pods_through_train_pod_and_operator_deletion(
    shared: Shared, kubectl: Kubectl, tmp_path: Path
) -> None:
    need(shared.installed, "the Helm release")
    ns, started, key = shared.ns, time.monotonic(), shared.api_key
    assert key is not None  # the install test read it before it set installed
    old_server = ready_server_pod(kubectl, ns)["metadata"]["name"]
    kubectl("apply", "-f", "-", input=json.dumps(finetune(ns, shared.model, RUN)))

    # --- training: progress from the train pod itself, then its deletion after a checkpoint
    def training() -> dict[str, Any] | None:
        jobs = run_jobs(kubectl, ns, RUN)
        if "train" not in jobs:
            return None
        running = [p for p in job_pods(kubectl, ns, jobs["train"]["metadata"]["name"]) if pod_ready(p)]
        return running[0] if running and _last_step(kubectl, ns) > CHECKPOINT_EVERY else None

    first = wait_until(training, 600, f"the train pod past step {CHECKPOINT_EVERY}", 0.5)
    shared.timings[f"apply to step {CHECKPOINT_EVERY}"] = time.monotonic() - started
    first_name = first["metadata"]["name"]
    checkpoints = volume(kubectl, ns, "ls", f"/data/outputs/lora/{RUN}/checkpoints").split()
    assert f"step-{CHECKPOINT_EVERY}" in checkpoints, checkpoints
    obj = lft(kubectl, ns, RUN)
    assert obj["status"]["phase"] == "Training"
    progress = obj["status"]["progress"]
    assert progress["step"] >= 1 and progress["totalSteps"] == STEPS and progress["loss"] is not None, (
        progress
    )
    table = kubectl("get", "lft", RUN, "-n", ns).stdout.splitlines()
    log("kubectl get lft during training:\n" + "\n".join(table))
    assert table[1].split()[1] == "Training" and table[1].split()[2].isdigit(), table
    jobs_before = {step: job["metadata"]["uid"] for step, job in run_jobs(kubectl, ns, RUN).items()}
    assert sorted(jobs_before) == ["fetch-model", "prepare-dataset", "train"]

    # Follow the first train pod's log to its end: it says where its SIGTERM checkpoint went.
    first_log_path = tmp_path / "train-0.log"
    with first_log_path.open("w") as sink:
        follower = subprocess.Popen(
            ["kubectl", "logs", "-f", "-n", ns, first_name], stdout=sink, stderr=subprocess.STDOUT
        )
        try:
            stopped_at = _last_step(kubectl, ns)
            kubectl("delete", "pod", "-n", ns, first_name, "--wait=false")
            log(f"deleted train pod {first_name} at step ~{stopped_at}")
            (op,) = [p for p in operator_pods(kubectl) if not p["metadata"].get("deletionTimestamp")]
            kubectl("delete", "pod", "-n", OPERATOR_NS, op["metadata"]["name"], "--wait=false")
            log(f"deleted operator pod {op['metadata']['name']}")
            follower.wait(timeout=90)
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()
    first_log = first_log_path.read_text(errors="replace")
    assert "SIGTERM received" in first_log and "stopped after step" in first_log, first_log[-3000:]
    interrupted_at = int(first_log.split("stopped after step ", 1)[1].split(" ", 1)[0])
    assert interrupted_at < STEPS

    new_op = wait_until(
        lambda: [
            p
            for p in operator_pods(kubectl)
            if pod_ready(p) and p["metadata"]["name"] != op["metadata"]["name"]
        ],
        180,
        "a replacement operator pod Ready",
        2,
    )[0]
    assert_ran_on_real_node(new_op)
    log(f"replacement operator {new_op['metadata']['name']} Ready")

    # --- the rest of the pipeline
    obj = wait_phase(kubectl, ns, RUN, {"Succeeded", "Failed"}, 900)
    shared.timings["fine-tune total"] = time.monotonic() - started
    log(f"{RUN}: {obj['status']['phase']} after {time.monotonic() - started:.0f}s")
    status = obj["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    for ctype in ("ModelFetched", "DatasetPrepared", "Trained", "Deployed", "Evaluated", "Ready"):
        assert condition(obj, ctype).get("status") == "True", ctype
    assert status["adapterPath"] == f"/data/models/lora/{RUN}"
    assert status["reportPath"] == f"/data/outputs/lora_eval/{RUN}/report.md"
    assert status["progress"]["percent"] == 100
    assert status["evalSummary"], status  # from the eval pod's real termination message
    # CLIP metrics measured by the eval pod with the tiny CLIP it fetched and verified.
    assert "clipIGain" in status["evalSummary"] and "clipTDrop" in status["evalSummary"], status
    # From the train pod's real termination message: steady-state speed and the CPU's peak RSS.
    training = status["training"]
    assert training["stepsPerSecond"] > 0 and training["memoryKind"] == "ProcessMaxRSS", training
    assert training["peakMemoryBytes"] > 0, training

    # The train pod wrote status.progress itself, with its own ServiceAccount token.
    managed = json.loads(kubectl("get", "lft", RUN, "-n", ns, "-o", "json", "--show-managed-fields").stdout)[
        "metadata"
    ]["managedFields"]
    writers = {
        m["manager"]
        for m in managed
        if m.get("subresource") == "status" and '"f:loss"' in json.dumps(m.get("fieldsV1"))
    }
    assert writers == {"zthumb-trainer"}, managed

    # One Job per step, the ones that existed before the operator died adopted, not recreated.
    jobs = run_jobs(kubectl, ns, RUN)
    assert sorted(jobs) == ["eval", "fetch-model", "prepare-dataset", "train"]
    for step, uid in jobs_before.items():
        assert jobs[step]["metadata"]["uid"] == uid, f"the {step} Job was recreated"
    train_job = jobs["train"]
    assert train_job["status"].get("failed") == 1 and train_job["status"].get("succeeded") == 1, train_job[
        "status"
    ]
    train_spec = train_job["spec"]["template"]["spec"]
    # The train pod's token is the run's own identity: it may patch this run's status, nothing else.
    assert train_spec["serviceAccountName"] == f"{RUN}-trainer" and train_spec["automountServiceAccountToken"]

    # Every step ran in a real container on the real node, exited 0, and its log is readable.
    for step, job in jobs.items():
        pods = [
            p
            for p in job_pods(kubectl, ns, job["metadata"]["name"])
            if p["status"].get("phase") == "Succeeded"
        ]
        assert len(pods) == 1, f"{step}: {[p['metadata']['name'] for p in pods]}"
        assert_ran_on_real_node(pods[0], completed=True)
        text = kubectl("logs", "-n", ns, pods[0]["metadata"]["name"]).stdout
        assert text.strip(), f"{step}: empty log"
        assert "could not report progress" not in text, text[-2000:]
    (second,) = [
        p
        for p in job_pods(kubectl, ns, train_job["metadata"]["name"])
        if p["status"].get("phase") == "Succeeded"
    ]
    assert second["metadata"]["name"] != first_name
    second_log = kubectl("logs", "-n", ns, second["metadata"]["name"]).stdout
    assert f"resumed from /data/outputs/lora/{RUN}/checkpoints/step-{interrupted_at}" in second_log, (
        second_log[-3000:]
    )
    eval_args = jobs["eval"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"http://{RELEASE}.{ns}.svc:8080" in eval_args
    # The operator gave the eval Job the server's own Secret reference, not the key.
    eval_env = jobs["eval"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e for e in eval_env if e["name"] == "ZTHUMB_API_KEY"] == [
        {"name": "ZTHUMB_API_KEY", "valueFrom": KEY_REF}
    ]
    assert key not in json.dumps(jobs["eval"])

    # progress.jsonl: every step exactly once, in order, across the two train pods.
    steps = _progress_steps(kubectl, ns)
    assert steps == list(range(1, STEPS + 1)), (
        f"{len(steps)} lines; repeated: {sorted({s for s in steps if steps.count(s) > 1})[:20]}"
    )
    summary = json.loads(volume(kubectl, ns, "cat", f"/data/outputs/lora/{RUN}/summary.json"))
    assert (
        summary["resumed_from_step"] == interrupted_at and summary["steps_this_run"] == STEPS - interrupted_at
    )

    # The Deployment rolled to a new pod that serves the adapter.
    dep = get_json(kubectl, "deployment", RELEASE, "-n", ns)
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["Z_LORA_PATH"] == f"/data/models/lora/{RUN}" and env["Z_LORA_SCALE"] == "0.8"
    pod = ready_server_pod(kubectl, ns)
    assert pod["metadata"]["name"] != old_server
    assert_ran_on_real_node(pod)
    models = server_get(kubectl, ns, pod["metadata"]["name"], "/models", key)
    assert models["lora_loaded"] is True and models["lora_path"] == f"/data/models/lora/{RUN}", models
    assert models["lora_error"] is None
    shared.adapter_sha256 = models["lora_sha256"]
    adapter_file = f"/data/models/lora/{RUN}/pytorch_lora_weights.safetensors"
    assert volume(kubectl, ns, "sha256sum", adapter_file).split()[0] == models["lora_sha256"]
    # eval reached this server through the Service, with the key: its access log has the
    # generations, none of them refused.
    server_log = kubectl("logs", "-n", ns, pod["metadata"]["name"], "-c", "zthumb").stdout
    assert server_log.count("/generate") >= 2, server_log[-3000:]
    assert key not in server_log

    # The report and its images (one side-by-side pair per prompt and seed) are on the volume.
    eval_dir = f"/data/outputs/lora_eval/{RUN}"
    pngs = volume(kubectl, ns, "find", eval_dir, "-name", "*.png").split()
    assert pngs, volume(kubectl, ns, "find", eval_dir)
    report = volume(kubectl, ns, "cat", f"{eval_dir}/report.md")
    for png in pngs:
        assert png.removeprefix(f"{eval_dir}/") in report, report[:2000]
        head = volume(kubectl, ns, "python3", "-c", f"print(open({png!r}, 'rb').read(8))")
        assert "PNG" in head, head
    assert f"http://{RELEASE}.{ns}.svc:8080" in report, report[:2000]  # eval called the Service by name
    # The training curves the eval drew from the train pod's progress log are among them, and the
    # train pod's TensorBoard event files are beside its checkpoints (`tensorboard --logdir`).
    assert f"{eval_dir}/curves/loss.png" in pngs, pngs
    run_dir = f"/data/outputs/lora/{RUN}"
    events = volume(kubectl, ns, "find", f"{run_dir}/logs", "-name", "events.out.tfevents.*").split()
    assert events, volume(kubectl, ns, "find", run_dir, "-maxdepth", "2", check=False)
    # The server serves the same report as a page (the chart's ZTHUMB_REPORTS_DIR), at status.reportUrl.
    assert status["reportUrl"] == f"/reports/{RUN}/"
    name = pod["metadata"]["name"]
    code, page = http_in_pod(kubectl, ns, name, f"GET {status['reportUrl']}", key=key)
    assert code == 200, page[:2000]
    assert f"LoRA evaluation: {RUN}" in page and f'src="/reports/{RUN}/files/pairs/' in page, page[:2000]
    pair = re.search(rf'src="(/reports/{RUN}/files/pairs/[^"]+)"', page)
    assert pair, page[:2000]
    assert http_in_pod(kubectl, ns, name, f"GET {pair.group(1)}", key=key)[0] == 200
    # The report pages, the index and their files want the key too (a browser gets a login form).
    for path in (status["reportUrl"], "/reports/", pair.group(1)):
        code, body = http_in_pod(kubectl, ns, name, f"GET {path}", key=None)
        assert code == 401, f"GET {path} without the key: HTTP {code}: {body[:500]}"
    described = kubectl("describe", "lft", RUN, "-n", ns).stdout
    for reason in ("JobCreated", "TrainCompleted", "RolloutStarted", "DeployCompleted", "Succeeded"):
        assert reason in described, reason
    shared.succeeded = True


# --------------------------------------------------------------------------- 4. a deleted server pod


@pytest.mark.timeout(600)
def test_deleted_server_pod_is_replaced_by_one_serving_the_same_adapter(
    shared: Shared, kubectl: Kubectl
) -> None:
    need(shared.succeeded, f"the succeeded run {RUN}")
    ns, started = shared.ns, time.monotonic()
    old = ready_server_pod(kubectl, ns)["metadata"]["name"]
    kubectl("delete", "pod", "-n", ns, old, "--wait=false")
    new = wait_until(
        lambda: [p for p in server_pods(kubectl, ns) if pod_ready(p) and p["metadata"]["name"] != old],
        300,
        "a replacement server pod Ready",
        2,
    )[0]
    shared.timings["server pod replaced"] = time.monotonic() - started
    assert_ran_on_real_node(new)
    name = new["metadata"]["name"]
    models = server_get(kubectl, ns, name, "/models", shared.api_key)
    assert models["lora_loaded"] is True and models["lora_path"] == f"/data/models/lora/{RUN}", models
    assert models["lora_sha256"] == shared.adapter_sha256
    # The volume kept the verified model: the init container neither downloaded nor re-hashed it.
    fetched = kubectl("logs", "-n", ns, name, "-c", "fetch-model").stdout
    assert "downloaded" not in fetched and "present" in fetched, fetched


# --------------------------------------------------------------------------- 5. a bad adapter


@pytest.mark.timeout(900)
def test_adapter_that_fails_readiness_is_rolled_back_and_old_pod_keeps_serving(
    shared: Shared, kubectl: Kubectl
) -> None:
    need(shared.succeeded, f"the succeeded run {RUN}")
    ns, started = shared.ns, time.monotonic()
    # The server mounts the volume read-only: the adapter is corrupted from a pod that holds the
    # volume read-write, started beforehand so that the write lands the moment the rollout starts.
    writer = pod_manifest(
        "volume-writer",
        image=TRAINER_IMAGE,
        command=["sleep", "900"],
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": f"{RELEASE}-data"}}],
        mounts=[{"name": "data", "mountPath": "/data"}],
    )
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(writer))
    wait_until(
        lambda: pod_ready(get_json(kubectl, "pod", "volume-writer", "-n", ns)), 120, "the volume writer", 1
    )
    (old,) = [p for p in server_pods(kubectl, ns) if pod_ready(p)]
    old_name = old["metadata"]["name"]
    old_restarts = old["status"]["containerStatuses"][0]["restartCount"]
    manifest = finetune(
        ns,
        shared.model,
        BAD_RUN,
        training={"maxTrainSteps": 4, "checkpointingSteps": 2},
        deploy={"rolloutTimeoutSeconds": 60},
    )
    kubectl("apply", "-f", "-", input=json.dumps(manifest))
    phase = wait_phase(kubectl, ns, BAD_RUN, {"Deploying", "Failed", "Succeeded"}, 600, interval=0.2)
    assert phase["status"]["phase"] == "Deploying", phase["status"]
    # The adapter goes bad the moment its rollout starts: a new server pod needs many seconds
    # (init container, torch import, model load) before it reads the adapter.
    adapter = f"/data/models/lora/{BAD_RUN}/pytorch_lora_weights.safetensors"
    kubectl(
        "exec", "-n", ns, "volume-writer", "--", "sh", "-c", f"printf 'not a safetensors file' > {adapter}"
    )
    kubectl("delete", "pod", "volume-writer", "-n", ns, "--wait=false")
    log(f"{BAD_RUN}: rollout started, adapter corrupted")

    def failing_new_pod() -> str | None:
        for pod in server_pods(kubectl, ns):
            if pod["metadata"]["name"] == old_name:
                continue
            text = kubectl("logs", "-n", ns, pod["metadata"]["name"], "-c", "zthumb", check=False).stdout
            if "FAILED TO LOAD" in text:
                assert_ran_on_real_node(pod)
                assert not pod_ready(pod)
                return pod["metadata"]["name"]
        return None

    bad_pod = wait_until(failing_new_pod, 120, "a new server pod refusing the bad adapter", 2)
    log(f"{bad_pod} refuses the adapter and stays unready")
    obj = wait_phase(kubectl, ns, BAD_RUN, {"Failed", "Succeeded"}, 300)
    shared.timings["bad adapter rolled back"] = time.monotonic() - started
    status = obj["status"]
    assert status["phase"] == "Failed" and status["reason"] == "RolloutFailed", json.dumps(status, indent=1)
    assert status["deploy"]["rolledBack"] is True
    assert "RolledBack" in kubectl("describe", "lft", BAD_RUN, "-n", ns).stdout

    dep = get_json(kubectl, "deployment", RELEASE, "-n", ns)
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["Z_LORA_PATH"] == f"/data/models/lora/{RUN}"
    assert "zthumb.io/rollout-owner" not in (dep["metadata"].get("annotations") or {})
    wait_until(
        lambda: [p["metadata"]["name"] for p in server_pods(kubectl, ns)] == [old_name],
        120,
        "the unready new pod to be removed",
        2,
    )
    still = get_json(kubectl, "pod", old_name, "-n", ns)
    assert pod_ready(still) and still["status"]["containerStatuses"][0]["restartCount"] == old_restarts
    models = server_get(kubectl, ns, old_name, "/models", shared.api_key)
    assert (
        models["lora_path"] == f"/data/models/lora/{RUN}" and models["lora_sha256"] == shared.adapter_sha256
    )
    # and it still generates with it, through the Service as a client would
    code, out = generate_through_service(kubectl, ns, old_name, shared.api_key)
    assert code == 200 and '"images"' in out, out[:2000]
    assert still["spec"]["nodeName"] == NODE
