"""Every KubeApi request is counted once under its verb and resource, and an API error keeps the
API server's reason."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from kube_standin import StandIn
from lft_helpers import make_run
from zthumb_operator import identity, metrics
from zthumb_operator.api import ConflictError, ForbiddenError, KubeApi, NotFoundError


def counts() -> dict[tuple[str, str], float]:
    return {
        (s.labels["verb"], s.labels["resource"]): s.value
        for m in metrics.API_REQUESTS.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }


def counted(call: Awaitable[Any]) -> dict[tuple[str, str], float]:
    """What one request added to the counter."""
    before = counts()
    asyncio.run(call)  # type: ignore[arg-type]
    after = counts()
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}


JOB = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "ml"}}
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "ml"}}
DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "d"},
    "spec": {"selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {}}},
}
RUN = {"metadata": {"name": "r", "namespace": "ml", "uid": "u"}}

REQUESTS: list[tuple[str, Callable[[KubeApi], Awaitable[Any]], tuple[str, str]]] = [
    ("create job", lambda api: api.create_job("ml", JOB), ("create", "jobs")),
    ("get job", lambda api: api.get_job("ml", "j"), ("get", "jobs")),
    ("delete job", lambda api: api.delete_job("ml", "j"), ("delete", "jobs")),
    ("list pods", lambda api: api.list_job_pods("ml", "j"), ("list", "pods")),
    ("create service", lambda api: api.create_service("ml", SERVICE), ("create", "services")),
    ("get service", lambda api: api.get_service("ml", "s"), ("get", "services")),
    ("patch status", lambda api: api.patch_run_status("ml", "r", {}), ("patch", "lorafinetunes/status")),
    ("get deployment", lambda api: api.get_deployment("ml", "d"), ("get", "deployments")),
    ("patch deployment", lambda api: api.patch_deployment("ml", "d", {}), ("patch", "deployments")),
    (
        "event",
        lambda api: api.post_event(RUN, "Normal", "R", "m", "2026-01-01T00:00:00+00:00"),
        ("create", "events"),
    ),
    ("kueue", lambda api: api.get_kueue_object("clusterqueues", "q"), ("get", "clusterqueues")),
    ("secret", lambda api: api.get_secret_labels("ml", "hf"), ("get", "secrets")),
    (
        "create role",
        lambda api: api.create_namespaced("Role", "ml", identity.build_role(make_run())),
        ("create", "roles"),
    ),
    (
        "get service account",
        lambda api: api.get_namespaced("ServiceAccount", "ml", "x"),
        ("get", "serviceaccounts"),
    ),
    ("get role binding", lambda api: api.get_namespaced("RoleBinding", "ml", "x"), ("get", "rolebindings")),
]


@pytest.mark.parametrize(
    ("request_", "label"), [(r[1], r[2]) for r in REQUESTS], ids=[r[0] for r in REQUESTS]
)
def test_each_request_is_counted_under_its_verb_and_resource(
    api: KubeApi, request_: Callable[[KubeApi], Awaitable[Any]], label: tuple[str, str]
) -> None:
    StandIn.objects["/api/v1/namespaces/ml/pods"] = {"kind": "PodList", "apiVersion": "v1", "items": []}
    StandIn.objects["/apis/zthumb.io/v1alpha1/namespaces/ml/lorafinetunes/r"] = {"kind": "LoRAFinetune"}
    StandIn.objects["/apis/apps/v1/namespaces/ml/deployments/d"] = DEPLOYMENT
    assert counted(request_(api)) == {label: 1}


def test_an_event_is_a_core_v1_event(api: KubeApi) -> None:
    asyncio.run(api.post_event(RUN, "Normal", "R", "m", "2026-01-01T00:00:00+00:00"))
    body = StandIn.requests[-1][3]
    assert (body["apiVersion"], body["kind"]) == ("v1", "Event")


@pytest.mark.parametrize(
    ("code", "error", "reason"),
    [(403, ForbiddenError, "Forbidden"), (404, NotFoundError, "Not Found"), (409, ConflictError, "Conflict")],
)
def test_an_api_error_keeps_the_reason(api: KubeApi, code: int, error: type, reason: str) -> None:
    StandIn.errors["/apis/apps/v1/namespaces/ml/deployments/d"] = code
    with pytest.raises(error, match=reason):
        asyncio.run(api.patch_deployment("ml", "d", {}))
