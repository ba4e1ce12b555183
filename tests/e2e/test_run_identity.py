"""Per-run identity and the operator's own admission checks on the local control plane
(operator/zthumb_operator/identity.py, admission.py).

As in test_operator.py: a fresh namespace enforcing Pod Security ``restricted``, the operator as a
local process behind the namespaced Role of manifests/operator/namespaced/, kwok running the pods.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_harness import (
    PHASE_TIMEOUT,
    Kubectl,
    Operator,
    example,
    jobs,
    lft,
    service_account_credentials,
    wait_phase,
)
from zthumb_contract import crd

pytestmark = pytest.mark.e2e

RUN_A, RUN_B = "run-a", "run-b"
PROGRESS = {"progress": {"step": 1, "totalSteps": 1000, "percent": 0}}
FORGED = {
    "conditions": [
        {"type": "Trained", "status": "True", "reason": "Forged", "message": "x",
         "lastTransitionTime": "2026-01-01T00:00:00Z"}
    ]
}  # fmt: skip
StatusPatch = Callable[[str, dict[str, Any]], int]


def apply_run(kubectl: Kubectl, ns: str, name: str, **spec: Any) -> None:
    doc = json.loads(example(ns, **spec))
    doc["metadata"]["name"] = name
    kubectl("apply", "-f", "-", input=json.dumps(doc))


def status_patcher(kubectl: Kubectl, server: str, ns: str, account: str) -> StatusPatch:
    """Patches a run's status as the train pod does (reporting.py in the trainer: one merge PATCH of
    ``/status``, nothing else), with a token of ``account``; returns the HTTP status."""
    token, ca = service_account_credentials(kubectl, ns, account, "10m")
    configuration = client.Configuration(
        host=server, api_key={"authorization": f"Bearer {token}"}, ca_cert_data=base64.b64decode(ca).decode()
    )
    api = client.CustomObjectsApi(client.ApiClient(configuration))

    def patch(run: str, status: dict[str, Any]) -> int:
        try:
            api.patch_namespaced_custom_object_status(
                crd.GROUP, crd.VERSION, ns, crd.PLURAL, run, {"status": status},
                _content_type="application/merge-patch+json",
            )  # fmt: skip
        except ApiException as exc:
            return int(exc.status)
        return 200

    return patch


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_a_runs_identity_patches_its_own_status_and_no_other_runs(
    setup: Callable[..., Operator],
    cluster: Any,
    namespace: str,
    kubectl: Kubectl,
    wait_until: Callable[..., Any],
) -> None:
    ns = namespace
    op = setup()
    # gpus: 16 fits no node: each run waits at its train Job, whose identity exists by then.
    for name in (RUN_A, RUN_B):
        apply_run(kubectl, ns, name, resources__gpus=16)
    for name in (RUN_A, RUN_B):
        wait_until(
            lambda name=name: "train" in ((lft(kubectl, ns, name).get("status") or {}).get("jobs") or {}),
            timeout=2 * PHASE_TIMEOUT,  # fetch-model and prepare-dataset first
            description=f"the train Job of {name}",
        )
    account = f"{RUN_A}-trainer"
    run_a = lft(kubectl, ns, RUN_A)
    for kind in ("serviceaccount", "role", "rolebinding"):
        obj = json.loads(kubectl("get", kind, account, "-n", ns, "-o", "json").stdout)
        assert [ref["uid"] for ref in obj["metadata"]["ownerReferences"]] == [run_a["metadata"]["uid"]]
    (train,) = [j for j in jobs(kubectl, ns) if j["metadata"]["name"] == f"{RUN_A}-train"]
    assert train["spec"]["template"]["spec"]["serviceAccountName"] == account
    assert train["spec"]["template"]["spec"]["automountServiceAccountToken"] is True

    patch = status_patcher(kubectl, cluster.server, ns, account)
    for status in (PROGRESS, FORGED):  # another run's progress, or a forged Trained condition
        assert patch(RUN_B, status) == 403
    assert lft(kubectl, ns, RUN_B)["status"]["progress"]["step"] == 0
    assert patch(RUN_A, PROGRESS) == 200
    assert lft(kubectl, ns, RUN_A)["status"]["progress"]["step"] == 1
    denied = kubectl("get", "secrets", "-n", ns, f"--as=system:serviceaccount:{ns}:{account}", check=False)
    assert denied.returncode != 0  # and nothing else

    # Deleting the run deletes its identity (owner references + garbage collector).
    kubectl("delete", "lft", RUN_A, "-n", ns)
    wait_until(
        lambda: (
            kubectl("get", "serviceaccount,role,rolebinding", account, "-n", ns, check=False).stdout.strip()
            == ""
        ),
        timeout=60,
        description="the identity garbage-collected",
    )
    assert "forbidden" not in op.log().lower(), op.log()


@pytest.mark.parametrize("namespace", ["restricted"], indirect=True)
def test_an_unlabelled_secret_fails_the_run_naming_the_field_before_any_job(
    setup: Callable[..., Operator], namespace: str, kubectl: Kubectl, wait_until: Callable[..., Any]
) -> None:
    ns = namespace
    op = setup()
    kubectl("create", "secret", "generic", "hf-token", "-n", ns, "--from-literal=token=not-a-token")
    kubectl("apply", "-f", "-", input=example(ns, baseModel__tokenSecretRef={"name": "hf-token"}))
    obj = wait_phase(kubectl, wait_until, ns, "Failed", op)
    assert obj["status"]["reason"] == "NotAllowed", obj["status"]
    assert "spec.baseModel.tokenSecretRef: Secret hf-token is not labelled" in obj["status"]["message"]
    assert not jobs(kubectl, ns)

    # Labelled by an admin, the Secret may be used by a run.
    kubectl("label", "secret", "hf-token", "-n", ns, "zthumb.io/allow-runs=true")
    apply_run(kubectl, ns, RUN_B, baseModel__tokenSecretRef={"name": "hf-token"})
    wait_until(
        lambda: "fetch-model" in ((lft(kubectl, ns, RUN_B).get("status") or {}).get("jobs") or {}),
        timeout=PHASE_TIMEOUT,
        description="the labelled Secret's run to start",
    )
    assert "forbidden" not in op.log().lower(), op.log()
