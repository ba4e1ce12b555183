"""The Kubernetes calls the reconciler makes, as coroutines over the official client.

The sync client runs in a bounded thread pool so that kopf's event loop never
blocks. Errors come back as ``ConflictError``/``NotFoundError`` or the client's ``ApiException``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from zthumb_contract import crd

from zthumb_operator import builders, metrics
from zthumb_operator.queues import KUEUE_GROUP, KUEUE_VERSION

T = TypeVar("T")
# A Secret's metadata without its data (the API server's PartialObjectMetadata response).
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
# Named in managedFields of everything the operator writes (the train pod writes as "zthumb-trainer").
FIELD_MANAGER = "zthumb-operator"


class Api(Protocol):
    """What the controller needs from the API server (``KubeApi``; an in-memory fake in the tests)."""

    async def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...
    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def delete_job(self, namespace: str, name: str) -> None: ...
    async def list_job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]: ...
    async def create_service(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...
    async def get_service(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def patch_run_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]: ...
    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def patch_deployment(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...
    async def post_event(
        self, run: dict[str, Any], type_: str, reason: str, message: str, now: str
    ) -> None: ...
    async def get_kueue_object(
        self, plural: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None: ...
    async def create_namespaced(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...
    async def get_namespaced(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def get_secret_labels(self, namespace: str, name: str) -> dict[str, str] | None: ...


class ConflictError(Exception):
    """409: the object exists already, or a precondition (resourceVersion) failed."""


class NotFoundError(Exception):
    """404."""


class ForbiddenError(Exception):
    """403: RBAC does not let the operator do this (e.g. read ClusterQueues from a namespaced install)."""


def load_client_config(workers: int) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG)."""
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = workers
    return client.ApiClient(configuration)


class KubeApi:
    """Async facade: every method is one API request (counted in metrics)."""

    def __init__(self, api_client: client.ApiClient, workers: int = 16) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube-api")
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._apps = client.AppsV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._rbac = client.RbacAuthorizationV1Api(api_client)
        # The run's identity objects (identity.py), by kind: (resource, create, read).
        self._namespaced: dict[str, tuple[str, Callable[..., Any], Callable[..., Any]]] = {
            "ServiceAccount": (
                "serviceaccounts",
                self._core.create_namespaced_service_account,
                self._core.read_namespaced_service_account,
            ),
            "Role": ("roles", self._rbac.create_namespaced_role, self._rbac.read_namespaced_role),
            "RoleBinding": (
                "rolebindings",
                self._rbac.create_namespaced_role_binding,
                self._rbac.read_namespaced_role_binding,
            ),
        }
        self._sanitize = api_client.sanitize_for_serialization
        self._instance = socket.gethostname()

    async def _call(self, verb: str, resource: str, fn: Callable[[], T]) -> T:
        metrics.API_REQUESTS.labels(verb=verb, resource=resource).inc()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn)
        except ApiException as exc:
            if exc.status == 409:
                raise ConflictError(exc.reason) from exc
            if exc.status == 404:
                raise NotFoundError(exc.reason) from exc
            if exc.status == 403:
                raise ForbiddenError(exc.reason) from exc
            raise

    def _dict(self, obj: Any) -> dict[str, Any]:
        return obj if isinstance(obj, dict) else self._sanitize(obj)

    async def create_job(self, namespace: str, body: Any) -> dict[str, Any]:
        res = await self._call(
            "create",
            "jobs",
            lambda: self._batch.create_namespaced_job(namespace, body, field_manager=FIELD_MANAGER),
        )
        return self._dict(res)

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            res = await self._call("get", "jobs", lambda: self._batch.read_namespaced_job(name, namespace))
        except NotFoundError:
            return None
        return self._dict(res)

    async def delete_job(self, namespace: str, name: str) -> None:
        body = client.V1DeleteOptions(propagation_policy="Background")
        with contextlib.suppress(NotFoundError):
            await self._call(
                "delete", "jobs", lambda: self._batch.delete_namespaced_job(name, namespace, body=body)
            )

    async def list_job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        res = await self._call(
            "list",
            "pods",
            lambda: self._core.list_namespaced_pod(
                namespace, label_selector=f"{builders.JOB_NAME_LABEL}={job}"
            ),
        )
        return list(self._dict(res).get("items") or [])

    async def create_service(self, namespace: str, body: Any) -> dict[str, Any]:
        res = await self._call(
            "create",
            "services",
            lambda: self._core.create_namespaced_service(namespace, body, field_manager=FIELD_MANAGER),
        )
        return self._dict(res)

    async def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            res = await self._call(
                "get", "services", lambda: self._core.read_namespaced_service(name, namespace)
            )
        except NotFoundError:
            return None
        return self._dict(res)

    async def patch_run_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        def call() -> Any:
            return self._custom.patch_namespaced_custom_object_status(
                crd.GROUP,
                crd.VERSION,
                namespace,
                crd.PLURAL,
                name,
                {"status": status},
                field_manager=FIELD_MANAGER,
                _content_type="application/merge-patch+json",
            )

        return self._dict(await self._call("patch", "lorafinetunes/status", call))

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            res = await self._call(
                "get", "deployments", lambda: self._apps.read_namespaced_deployment(name, namespace)
            )
        except NotFoundError:
            return None
        return self._dict(res)

    async def patch_deployment(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        def call() -> Any:
            return self._apps.patch_namespaced_deployment(
                name,
                namespace,
                patch,
                field_manager=FIELD_MANAGER,
                _content_type="application/strategic-merge-patch+json",
            )

        return self._dict(await self._call("patch", "deployments", call))

    async def post_event(self, run: dict[str, Any], type_: str, reason: str, message: str, now: str) -> None:
        meta = run["metadata"]
        body: Any = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name'][:200]}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": crd.API_VERSION,
                "kind": crd.KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": builders.MANAGED_BY},
            "reportingComponent": "zthumb.io/operator",
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self._call(
            "create", "events", lambda: self._core.create_namespaced_event(meta["namespace"], body)
        )

    async def get_kueue_object(
        self, plural: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        """A Kueue LocalQueue (namespaced) or ClusterQueue; None when it, or Kueue, is not there."""

        def call() -> Any:
            if namespace is None:
                return self._custom.get_cluster_custom_object(KUEUE_GROUP, KUEUE_VERSION, plural, name)
            return self._custom.get_namespaced_custom_object(
                KUEUE_GROUP, KUEUE_VERSION, namespace, plural, name
            )

        try:
            return self._dict(await self._call("get", plural, call))
        except NotFoundError:
            return None

    async def create_namespaced(self, kind: str, namespace: str, body: Any) -> dict[str, Any]:
        resource, create, _ = self._namespaced[kind]
        res = await self._call(
            "create", resource, lambda: create(namespace, body, field_manager=FIELD_MANAGER)
        )
        return self._dict(res)

    async def get_namespaced(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        resource, _, read = self._namespaced[kind]
        try:
            return self._dict(await self._call("get", resource, lambda: read(name, namespace)))
        except NotFoundError:
            return None

    async def get_secret_labels(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's labels (None: no such Secret). Its metadata only: the data never leaves the
        API server."""

        def call() -> Any:
            # Not preloaded: the raw response (the client would parse it as a whole Secret).
            response: Any = self._core.read_namespaced_secret(
                name, namespace, _preload_content=False, _headers={"Accept": METADATA_ONLY}
            )
            return json.loads(response.data)

        try:
            found = await self._call("get", "secrets", call)
        except NotFoundError:
            return None
        return dict((found.get("metadata") or {}).get("labels") or {})

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
