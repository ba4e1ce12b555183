"""KubeApi's requests for the runs' identities and the Secrets' labels, against a stand-in API
server on 127.0.0.1: the paths, the bodies, and a Secret read as metadata only."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kube_standin import StandIn
from kubernetes import client
from lft_helpers import make_run
from zthumb_operator import identity, metrics
from zthumb_operator.api import METADATA_ONLY, ConflictError, ForbiddenError, KubeApi

SECRET_PATH = "/api/v1/namespaces/ml/secrets/"


def test_a_secrets_labels_are_read_as_metadata_only(api: KubeApi) -> None:
    StandIn.objects[SECRET_PATH + "hf"] = {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"name": "hf", "namespace": "ml", "labels": {"zthumb.io/allow-runs": "true"}},
    }
    assert asyncio.run(api.get_secret_labels("ml", "hf")) == {"zthumb.io/allow-runs": "true"}
    (_, path, headers, _) = StandIn.requests[-1]
    assert path.startswith(SECRET_PATH + "hf")
    assert headers["Accept"] == METADATA_ONLY
    assert asyncio.run(api.get_secret_labels("ml", "missing")) is None


@pytest.mark.parametrize(
    ("build", "collection"),
    [
        (identity.build_service_account, "/api/v1/namespaces/ml/serviceaccounts"),
        (identity.build_role, "/apis/rbac.authorization.k8s.io/v1/namespaces/ml/roles"),
        (identity.build_role_binding, "/apis/rbac.authorization.k8s.io/v1/namespaces/ml/rolebindings"),
    ],
)
def test_identity_objects_are_created_read_and_conflict_where_kubernetes_keeps_them(
    api: KubeApi, build: Any, collection: str
) -> None:
    body = build(make_run())
    kind, name = body["kind"], body["metadata"]["name"]
    assert asyncio.run(api.get_namespaced(kind, "ml", name)) is None
    asyncio.run(api.create_namespaced(kind, "ml", body))
    (method, path, _, sent) = StandIn.requests[-1]
    assert (method, path.split("?")[0]) == ("POST", collection)
    assert "fieldManager=zthumb-operator" in path
    assert sent == body
    assert asyncio.run(api.get_namespaced(kind, "ml", name)) == body
    with pytest.raises(ConflictError):
        asyncio.run(api.create_namespaced(kind, "ml", body))


def requests_after(count: int) -> list[tuple[str, str, dict[str, str], Any]]:
    return StandIn.requests[count:]


def api_requests(verb: str, resource: str) -> float:
    return metrics.API_REQUESTS.labels(verb=verb, resource=resource)._value.get()


JOBS = "/apis/batch/v1/namespaces/ml/jobs"


def test_a_job_is_created_read_listed_and_deleted_in_the_background(api: KubeApi) -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "r-train", "namespace": "ml"}}
    created = api_requests("create", "jobs")
    assert asyncio.run(api.create_job("ml", job))["metadata"]["name"] == "r-train"
    (method, path, _, sent) = StandIn.requests[-1]
    assert (method, path.split("?")[0], sent) == ("POST", JOBS, job)
    assert "fieldManager=zthumb-operator" in path
    # Every request is counted by verb and resource.
    assert api_requests("create", "jobs") == created + 1
    assert asyncio.run(api.get_job("ml", "r-train"))["kind"] == "Job"
    assert StandIn.requests[-1][1] == f"{JOBS}/r-train"
    assert asyncio.run(api.get_job("ml", "missing")) is None

    StandIn.objects["/api/v1/namespaces/ml/pods"] = {
        "kind": "PodList",
        "apiVersion": "v1",
        "items": [{"metadata": {"name": "r-train-0"}}],
    }
    pods = asyncio.run(api.list_job_pods("ml", "r-train"))
    assert [p["metadata"]["name"] for p in pods] == ["r-train-0"]
    query = parse_qs(urlsplit(StandIn.requests[-1][1]).query)
    assert query["labelSelector"] == ["batch.kubernetes.io/job-name=r-train"]

    count = len(StandIn.requests)
    asyncio.run(api.delete_job("ml", "r-train"))
    [(method, path, _, body)] = requests_after(count)
    assert (method, path.split("?")[0]) == ("DELETE", f"{JOBS}/r-train")
    # Background: the Job's pods go with it, and the call does not wait for them.
    assert body["propagationPolicy"] == "Background"
    # A Job that is gone already is what delete wanted.
    asyncio.run(api.delete_job("ml", "missing"))


def test_a_service_is_created_and_read(api: KubeApi) -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "r-train", "namespace": "ml"}}
    assert asyncio.run(api.create_service("ml", service))["kind"] == "Service"
    (method, path, _, sent) = StandIn.requests[-1]
    assert (method, path.split("?")[0], sent) == ("POST", "/api/v1/namespaces/ml/services", service)
    assert "fieldManager=zthumb-operator" in path
    assert asyncio.run(api.get_service("ml", "r-train"))["metadata"]["name"] == "r-train"
    assert asyncio.run(api.get_service("ml", "missing")) is None


def test_the_run_status_is_a_merge_patch_of_the_status_subresource(api: KubeApi) -> None:
    path = "/apis/zthumb.io/v1alpha1/namespaces/ml/lorafinetunes/r"
    StandIn.objects[path] = {"apiVersion": "zthumb.io/v1alpha1", "kind": "LoRAFinetune", "status": {}}
    patched = asyncio.run(api.patch_run_status("ml", "r", {"phase": "Training"}))
    assert patched["kind"] == "LoRAFinetune"
    (method, sent_path, headers, body) = StandIn.requests[-1]
    assert (method, sent_path.split("?")[0], body) == (
        "PATCH",
        f"{path}/status",
        {"status": {"phase": "Training"}},
    )
    assert headers["Content-Type"] == "application/merge-patch+json"
    assert "fieldManager=zthumb-operator" in sent_path


def test_a_deployment_is_read_and_strategic_merge_patched(api: KubeApi) -> None:
    path = "/apis/apps/v1/namespaces/ml/deployments/zthumb"
    StandIn.objects[path] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "zthumb"},
        "spec": {"selector": {"matchLabels": {"app": "zthumb"}}, "template": {"metadata": {}}},
    }
    assert asyncio.run(api.get_deployment("ml", "zthumb"))["kind"] == "Deployment"
    assert asyncio.run(api.get_deployment("ml", "missing")) is None
    patch = {"spec": {"template": {"metadata": {"annotations": {"a": "b"}}}}}
    assert asyncio.run(api.patch_deployment("ml", "zthumb", patch))["kind"] == "Deployment"
    (method, sent_path, headers, body) = StandIn.requests[-1]
    assert (method, sent_path.split("?")[0], body) == ("PATCH", path, patch)
    assert headers["Content-Type"] == "application/strategic-merge-patch+json"
    assert "fieldManager=zthumb-operator" in sent_path


def test_an_event_names_the_run_and_bounds_its_name_and_message(api: KubeApi) -> None:
    run = {"metadata": {"name": "r" * 250, "namespace": "ml", "uid": "u-1"}}
    asyncio.run(api.post_event(run, "Warning", "EvalGateFailed", "m" * 2000, "2026-01-01T00:00:00+00:00"))
    (method, path, _, body) = StandIn.requests[-1]
    assert (method, path.split("?")[0]) == ("POST", "/api/v1/namespaces/ml/events")
    assert body["metadata"] == {"generateName": "r" * 200 + ".", "namespace": "ml"}
    assert body["involvedObject"] == {
        "apiVersion": "zthumb.io/v1alpha1",
        "kind": "LoRAFinetune",
        "name": "r" * 250,
        "namespace": "ml",
        "uid": "u-1",
    }
    assert (body["type"], body["reason"], body["message"]) == ("Warning", "EvalGateFailed", "m" * 1024)
    assert body["source"] == {"component": "zthumb-operator"}
    assert (body["reportingComponent"], body["reportingInstance"]) == (
        "zthumb.io/operator",
        socket.gethostname(),
    )
    assert (body["firstTimestamp"], body["lastTimestamp"], body["count"]) == (
        "2026-01-01T00:00:00+00:00",
        "2026-01-01T00:00:00+00:00",
        1,
    )


def test_kueue_queues_are_read_cluster_wide_or_in_a_namespace(api: KubeApi) -> None:
    cluster = "/apis/kueue.x-k8s.io/v1beta1/clusterqueues/gpus"
    local = "/apis/kueue.x-k8s.io/v1beta1/namespaces/ml/localqueues/team"
    StandIn.objects[cluster] = {"kind": "ClusterQueue"}
    StandIn.objects[local] = {"kind": "LocalQueue"}
    assert asyncio.run(api.get_kueue_object("clusterqueues", "gpus")) == {"kind": "ClusterQueue"}
    assert asyncio.run(api.get_kueue_object("localqueues", "team", "ml")) == {"kind": "LocalQueue"}
    # Kueue not installed (or no such queue): None, not an error.
    assert asyncio.run(api.get_kueue_object("clusterqueues", "missing")) is None


@pytest.mark.parametrize(
    ("code", "error"), [(403, ForbiddenError), (409, ConflictError), (500, client.ApiException)]
)
def test_api_errors_become_the_operators_exceptions(api: KubeApi, code: int, error: type) -> None:
    StandIn.errors[f"{JOBS}/r-train"] = code
    with pytest.raises(error):
        asyncio.run(api.get_job("ml", "r-train"))
    # Only a 404 means "not there": any other failure reaches the caller.
    with pytest.raises(error):
        asyncio.run(api.delete_job("ml", "r-train"))


def test_requests_run_on_the_apis_own_bounded_thread_pool() -> None:
    """Not on the event loop's default executor: the pool is sized to the client's connection pool
    (``api_workers``), and its threads are named for the thread dumps of a stuck operator."""
    kube = KubeApi(client.ApiClient(client.Configuration(host="http://127.0.0.1:9")), workers=2)
    try:
        name = asyncio.run(kube._call("get", "jobs", lambda: threading.current_thread().name))
        assert name.startswith("kube-api_")
        assert kube._pool._max_workers == 2
    finally:
        kube.close()
