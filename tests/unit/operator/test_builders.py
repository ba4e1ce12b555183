"""Pure builders: Jobs from the shared step definitions (the Deployment's patches: test_deployments.py;
conditions: test_conditions.py)."""

from __future__ import annotations

from typing import Any

import pytest
from lft_helpers import make_run
from reconcile_harness import Harness
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.spec_base import SecretKeyRef
from zthumb_contract.stages import build_steps
from zthumb_operator import builders as b

SETTINGS = b.JobSettings(image="registry.example/trainer:1")


def jobs_for(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = LoRAFinetuneSpec.from_manifest(run)
    steps = build_steps(run["metadata"]["name"], spec, spec.storage.mount_path, "http://zthumb.ml.svc:8080")
    return {s.name: b.build_job(s, run=run, spec=spec, settings=SETTINGS) for s in steps}


def container(job: dict[str, Any]) -> dict[str, Any]:
    (c,) = job["spec"]["template"]["spec"]["containers"]
    return c


def test_one_job_per_step_with_the_shared_command_and_args(run: dict[str, Any]) -> None:
    spec = LoRAFinetuneSpec.from_manifest(run)
    steps = build_steps("z-style", spec, "/data", "http://zthumb.ml.svc:8080")
    jobs = jobs_for(run)
    assert list(jobs) == ["fetch-model", "prepare-dataset", "train", "eval"]
    for step in steps:
        c = container(jobs[step.name])
        assert c["command"] == list(step.command)
        assert c["args"] == list(step.args)
        assert [*c["command"], *c["args"]] == step.argv
        assert jobs[step.name]["metadata"]["name"] == f"z-style-{step.name}"


def test_gpu_only_on_train(run: dict[str, Any]) -> None:
    jobs = jobs_for(run)
    for name, job in jobs.items():
        res = container(job)["resources"]
        has_gpu = "nvidia.com/gpu" in res.get("limits", {})
        assert has_gpu == (name == "train"), name
    train = container(jobs["train"])["resources"]
    assert train["requests"]["nvidia.com/gpu"] == "1" == train["limits"]["nvidia.com/gpu"]
    pod = jobs["train"]["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert "tolerations" not in jobs["fetch-model"]["spec"]["template"]["spec"]


def test_gpu_count_resource_name_node_selector_and_tolerations() -> None:
    run = make_run(
        {
            "resources": {
                "gpus": 4,
                "gpuResourceName": "amd.com/gpu",
                "nodeSelector": {"zthumb.io/pool": "gpu"},
                "tolerations": [
                    {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
                ],
            }
        }
    )
    jobs = jobs_for(run)
    pod = jobs["train"]["spec"]["template"]["spec"]
    assert container(jobs["train"])["resources"]["limits"]["amd.com/gpu"] == "4"
    assert pod["nodeSelector"] == {"zthumb.io/pool": "gpu"}
    keys = [t["key"] for t in pod["tolerations"]]
    assert keys == ["dedicated", "amd.com/gpu"]
    # CPU steps run anywhere
    assert "nodeSelector" not in jobs["prepare-dataset"]["spec"]["template"]["spec"]


def test_every_step_pod_pulls_with_the_spec_s_pull_secrets_and_none_without() -> None:
    jobs = jobs_for(
        make_run(
            {
                "images": {
                    "trainer": "registry.team.example/zthumb/trainer:1",
                    "pullSecrets": ["team-registry"],
                }
            }
        )
    )
    for step, job in jobs.items():
        assert job["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "team-registry"}], step
    for step, job in jobs_for(make_run({})).items():
        assert "imagePullSecrets" not in job["spec"]["template"]["spec"], step


def test_secret_env_is_a_secret_key_ref_never_a_value() -> None:
    run = make_run({"baseModel": {"tokenSecretRef": {"name": "hf", "key": "tok"}}})
    env = container(jobs_for(run)["fetch-model"])["env"]
    (hf,) = [e for e in env if e["name"] == "HF_TOKEN"]
    assert hf == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "tok"}}}
    assert SecretKeyRef(name="hf").key == "token"


@pytest.mark.parametrize("job", ["train", "eval"])  # eval logs its report to the same MLflow run
def test_mlflow_credentials_reach_the_train_and_eval_jobs_as_optional_secret_keys(job: str) -> None:
    tracking = {"mlflow": {"trackingUri": "https://mlflow.example", "credentialsSecretRef": {"name": "ml"}}}
    env = {
        e["name"]: e for e in container(jobs_for(make_run({"training": {"tracking": tracking}}))[job])["env"]
    }
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        # optional: a Secret with a token only (or a username and password only) starts the pod
        assert env[key] == {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": "ml", "key": key, "optional": True}},
        }
    plain = container(jobs_for(make_run({}))[job])["env"]
    assert not [e for e in plain if e["name"].startswith("MLFLOW_")]


def test_a_remote_dataset_s_credentials_reach_the_prepare_job_from_their_secret() -> None:
    source = {"s3": {"bucket": "my-data", "endpoint": "http://s3.local:9000",
                     "credentialsSecretRef": {"name": "s3-creds"}}}  # fmt: skip
    job = jobs_for(make_run({"dataset": {"source": source}}))["prepare-dataset"]
    env = {e["name"]: e for e in container(job)["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "accessKeyId"}
    }
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "secretAccessKey"}
    }
    args = container(job)["args"]
    assert "s3-creds" in args[args.index("--source") + 1]  # the Secret's name; its values only in env
    assert args[args.index("--dataset-cache") + 1] == "/data/datasets/cache"


def test_the_captioner_s_token_and_volume_paths_reach_the_prepare_job_only_when_enabled() -> None:
    captioning = {"url": "https://hf.example/blip/model.safetensors", "sha256": "a" * 64,
                  "configUrl": "https://hf.example/blip/", "tokenSecretRef": {"name": "hf"}}  # fmt: skip
    off = container(jobs_for(make_run({"dataset": {"captioning": captioning}}))["prepare-dataset"])
    assert "--captioning-model" not in off["args"] and "HF_TOKEN" not in {e["name"] for e in off["env"]}
    run = make_run({"dataset": {"captioning": {**captioning, "enabled": True}}})
    on = container(jobs_for(run)["prepare-dataset"])
    env = {e["name"]: e for e in on["env"]}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    args = on["args"]
    assert args[args.index("--captioning-model") + 1] == "/data/models/captioner.safetensors"
    assert args[args.index("--captioning-config") + 1] == "/data/models/captioner-config"
    assert '"enabled":true' in args[args.index("--captioning") + 1]


def test_labels_owner_reference_and_volume(run: dict[str, Any]) -> None:
    job = jobs_for(run)["train"]
    meta = job["metadata"]
    assert meta["labels"]["zthumb.io/run"] == "z-style"
    assert meta["labels"]["zthumb.io/step"] == "train"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "zthumb-operator"
    assert meta["labels"]["app.kubernetes.io/instance"] == "z-style"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "zthumb.io/v1alpha1",
            "kind": "LoRAFinetune",
            "name": "z-style",
            "uid": "uid-1",
            "controller": True,
        }
    ]
    pod = job["spec"]["template"]["spec"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "zthumb-data"}} in pod["volumes"]
    assert {"name": "data", "mountPath": "/data"} in container(job)["volumeMounts"]
    assert job["spec"]["template"]["metadata"]["labels"]["zthumb.io/step"] == "train"
    assert job["spec"]["backoffLimit"] == SETTINGS.backoff_limit
    assert job["spec"]["activeDeadlineSeconds"] == SETTINGS.active_deadline_seconds
    assert job["spec"]["ttlSecondsAfterFinished"] == SETTINGS.ttl_seconds_after_finished
    assert job["spec"]["podReplacementPolicy"] == "Failed"
    assert "suspend" not in job["spec"]


def test_progress_env_from_the_downward_api_only_on_train(run: dict[str, Any]) -> None:
    jobs = jobs_for(run)
    env = {e["name"]: e for e in container(jobs["train"])["env"]}
    assert (
        env["ZTHUMB_RUN_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.annotations['zthumb.io/run']"
    )
    assert env["ZTHUMB_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert jobs["train"]["spec"]["template"]["metadata"]["annotations"]["zthumb.io/run"] == "z-style"
    assert jobs["train"]["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    for name in ("fetch-model", "prepare-dataset", "eval"):
        names = {e["name"] for e in container(jobs[name])["env"]}
        assert "ZTHUMB_RUN_NAME" not in names
        assert jobs[name]["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_restricted_security_context(run: dict[str, Any]) -> None:
    for job in jobs_for(run).values():
        pod = job["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = container(job)["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["restartPolicy"] == "Never"
        for vol in pod["volumes"]:
            assert set(vol) - {"name"} <= {"persistentVolumeClaim", "emptyDir"}  # no hostPath


def test_kueue_queue_label_and_suspend() -> None:
    job = jobs_for(make_run({"queueName": "team-a"}))["fetch-model"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["suspend"] is True


def test_long_names_are_hashed_deterministically_and_bounded() -> None:
    long_a = "a" * 60 + "-x"
    long_b = "a" * 60 + "-y"
    name_a = b.single_node_job_name(long_a, "prepare-dataset")
    assert len(name_a) <= 63
    assert name_a.endswith("-prepare-dataset")
    assert name_a == b.single_node_job_name(long_a, "prepare-dataset")
    assert name_a != b.single_node_job_name(long_b, "prepare-dataset")
    assert b.single_node_job_name("z-style", "train") == "z-style-train"
    assert len(b.label_value("r" * 200)) <= 63
    job = jobs_for(make_run(name="r" * 200))["train"]
    assert len(job["metadata"]["name"]) <= 63
    assert all(len(v) <= 63 for v in job["metadata"]["labels"].values())
    assert job["metadata"]["annotations"]["zthumb.io/run"] == "r" * 200


def eval_job_args(h: Harness) -> list[str]:
    """Drive the harness's run to its eval Job (the operator computes the server URL there)."""
    h.reconcile()
    for step in ("fetch-model", "prepare-dataset", "train"):
        h.complete(step)
        h.reconcile()
    h.rollout_done()
    h.reconcile()
    (c,) = h.api.jobs[("ml", "z-style-eval")]["spec"]["template"]["spec"]["containers"]
    return c["args"]


def test_eval_job_calls_the_service_url() -> None:
    args = eval_job_args(Harness({"deploy": {"serviceUrl": "http://other:9000"}}))
    assert args[args.index("--server-url") + 1] == "http://other:9000"
    # Unset: the operator's template, filled with the run's Deployment and namespace.
    template = "http://{deployment}.{namespace}.svc.cluster.local:8080"
    args = eval_job_args(Harness({"deploy": {"deployment": "zthumb"}}, eval_server_url_template=template))
    assert args[args.index("--server-url") + 1] == "http://zthumb.ml.svc.cluster.local:8080"
