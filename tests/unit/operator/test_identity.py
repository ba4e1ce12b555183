"""The train pod's identity: a ServiceAccount, Role and RoleBinding per run (identity.py), and the
Jobs that use it."""

from __future__ import annotations

import re
from typing import Any

import kopf
import pytest
from lft_helpers import make_run
from reconcile_harness import Harness
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.stages import build_steps
from zthumb_operator import builders as b
from zthumb_operator import identity
from zthumb_operator import multinode as mn

SETTINGS = b.JobSettings(image="registry.example/trainer:1")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
IDENTITY = ["serviceaccount/z-style-trainer", "role/z-style-trainer", "rolebinding/z-style-trainer"]


def pod_specs(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = LoRAFinetuneSpec.from_manifest(run)
    steps = build_steps(run["metadata"]["name"], spec, spec.storage.mount_path, "http://zthumb.ml.svc:8080")
    out = {}
    for step in steps:
        build = mn.build_indexed_job if step.nodes > 1 else b.build_job
        out[step.name] = build(step, run=run, spec=spec, settings=SETTINGS)["spec"]["template"]["spec"]
    return out


def test_the_three_objects_grant_patch_on_this_runs_status_only(run: dict[str, Any]) -> None:
    account, role, binding = (build(run) for build in identity.BUILDERS)
    for obj in (account, role, binding):
        assert obj["metadata"]["name"] == "z-style-trainer"
        assert obj["metadata"]["namespace"] == "ml"
        assert obj["metadata"]["ownerReferences"] == [b.owner_reference(run)]  # deleted with the run
        assert obj["metadata"]["labels"][b.LABEL_RUN] == "z-style"
    assert account["kind"] == "ServiceAccount" and account["automountServiceAccountToken"] is False
    assert account["apiVersion"] == "v1"
    assert role["apiVersion"] == binding["apiVersion"] == "rbac.authorization.k8s.io/v1"
    assert role["kind"] == "Role"
    assert role["rules"] == [
        {
            "apiGroups": ["zthumb.io"],
            "resources": ["lorafinetunes/status"],
            "resourceNames": ["z-style"],
            "verbs": ["patch"],
        }
    ]
    assert binding["kind"] == "RoleBinding"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "z-style-trainer",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "z-style-trainer", "namespace": "ml"}]


@pytest.mark.parametrize(
    "run_name",
    ["a", "z.style.v2", "x" * 60, "y" * 253, ("team.a-" * 36)[:253].rstrip("-.")],
)
def test_identity_names_are_valid_bounded_and_deterministic(run_name: str) -> None:
    name = b.run_service_account(run_name)
    assert len(name) <= b.MAX_NAME
    assert DNS_SUBDOMAIN.match(name), name  # a ServiceAccount name
    assert name == b.run_service_account(run_name)
    assert identity.build_role(make_run(name=run_name))["rules"][0]["resourceNames"] == [run_name]


def test_two_long_run_names_with_one_prefix_get_two_identities() -> None:
    first, second = "p" * 80 + "-one", "p" * 80 + "-two"
    assert b.run_service_account(first) != b.run_service_account(second)


def test_only_the_train_pod_mounts_a_token_and_it_is_the_runs_own(run: dict[str, Any]) -> None:
    pods = pod_specs(run)
    assert pods["train"]["serviceAccountName"] == "z-style-trainer"
    assert pods["train"]["automountServiceAccountToken"] is True
    for step in ("fetch-model", "prepare-dataset", "eval"):
        assert pods[step]["serviceAccountName"] == b.NO_TOKEN_SERVICE_ACCOUNT, step
        assert pods[step]["automountServiceAccountToken"] is False, step


def test_every_pod_of_a_multi_node_train_job_is_the_runs_identity() -> None:
    pods = pod_specs(make_run({"resources": {"nodes": 3, "gpus": 2}}))
    assert pods["train"]["serviceAccountName"] == "z-style-trainer"
    assert pods["train"]["automountServiceAccountToken"] is True
    assert pods["fetch-model"]["automountServiceAccountToken"] is False


def to_train_job(h: Harness) -> None:
    h.reconcile()
    h.complete("fetch-model")
    h.reconcile()
    h.complete("prepare-dataset")
    h.reconcile()


def test_the_identity_is_created_just_before_the_train_job() -> None:
    h = Harness()
    h.reconcile()
    h.complete("fetch-model")
    h.reconcile()
    assert not any("/" in name for name in h.api.creates)  # no identity for the CPU steps
    h.complete("prepare-dataset")
    h.reconcile()
    assert h.api.creates[-4:] == [*IDENTITY, "z-style-train"]
    job = h.api.jobs[("ml", "z-style-train")]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "z-style-trainer"
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        obj = h.api.namespaced[(kind, "ml", "z-style-trainer")]
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_a_multi_node_run_gets_its_identity_before_its_service_and_job() -> None:
    h = Harness({"resources": {"nodes": 2, "gpus": 1}})
    to_train_job(h)
    assert h.api.creates[-5:] == [*IDENTITY, "service/z-style-train", "z-style-train"]


def test_an_identity_of_this_run_is_adopted_after_a_restart() -> None:
    h = Harness()
    for build in identity.BUILDERS:  # created by a pass before the operator restarted
        obj = build(h.api.runs[("ml", "z-style")])
        h.api.namespaced[(obj["kind"], "ml", obj["metadata"]["name"])] = obj
    to_train_job(h)
    assert "z-style-train" in h.api.creates
    assert not any(name.startswith(("serviceaccount/", "role")) for name in h.api.creates)


def test_an_identity_of_an_earlier_run_of_the_same_name_is_waited_for() -> None:
    h = Harness()
    earlier = identity.build_role(make_run())
    earlier["metadata"]["ownerReferences"][0]["uid"] = "uid-of-the-deleted-run"
    h.api.namespaced[("Role", "ml", "z-style-trainer")] = earlier
    with pytest.raises(kopf.TemporaryError) as waiting:
        to_train_job(h)
    assert str(waiting.value) == (
        "Role z-style-trainer belongs to an earlier LoRAFinetune of the same name and is still being "
        "deleted; waiting for the garbage collector"
    )
    assert waiting.value.delay == 5
    assert "z-style-train" not in h.api.creates


def test_an_identity_object_deleted_between_create_and_read_is_tried_again_soon() -> None:
    h = Harness()
    conflicting = identity.build_service_account(make_run())
    h.api.namespaced[("ServiceAccount", "ml", "z-style-trainer")] = conflicting

    async def gone(kind: str, namespace: str, name: str) -> None:
        return None  # the create saw it; by the read, the garbage collector had removed it

    h.api.get_namespaced = gone  # type: ignore[method-assign]
    with pytest.raises(kopf.TemporaryError) as retry:
        to_train_job(h)
    assert str(retry.value) == "ServiceAccount z-style-trainer vanished while being adopted"
    assert retry.value.delay == 1


def test_someone_elses_object_under_the_identity_name_is_never_adopted() -> None:
    h = Harness()
    h.api.namespaced[("RoleBinding", "ml", "z-style-trainer")] = {
        "metadata": {"name": "z-style-trainer", "namespace": "ml"}  # no owner: not ours
    }
    to_train_job(h)
    status = h.status()
    assert status["phase"] == "Failed" and status["reason"] == "InvalidSpec"
    assert status["message"].endswith(
        "RoleBinding z-style-trainer already exists and does not belong to this run; the train pod's "
        "identity cannot be created (delete that object, or rename the LoRAFinetune)"
    )
    assert "z-style-train" not in h.api.creates
