"""The operator's state machine against an in-memory fake of the API: the fake, a harness that
drives one run through its stages, and the helpers the reconcile tests share."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from lft_helpers import make_run
from zthumb_operator import builders as b
from zthumb_operator.api import ConflictError, ForbiddenError
from zthumb_operator.config import OperatorConfig
from zthumb_operator.reconcile import Controller

KEY = ("ml", "z-style")


def merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)


class FakeApi:
    def __init__(self) -> None:
        self.rv = 100
        self.runs: dict[tuple[str, str], dict[str, Any]] = {}
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[tuple[str, str, str]] = []
        self.creates: list[str] = []
        self.deleted: list[str] = []
        self.pods: dict[str, list[dict[str, Any]]] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        # Kueue objects by (plural, namespace or None, name); ``kueue_forbidden``: RBAC says no.
        self.kueue: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.kueue_forbidden = False
        # The runs' identity objects by (kind, namespace, name); Secrets' labels by (namespace, name).
        self.namespaced: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.secret_labels: dict[tuple[str, str], dict[str, str]] = {}

    def bump(self, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    async def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        key = (namespace, body["metadata"]["name"])
        if key in self.jobs:
            raise ConflictError("AlreadyExists")
        job = copy.deepcopy(body)
        job["status"] = {}
        self.bump(job)
        self.jobs[key] = job
        self.creates.append(key[1])
        return copy.deepcopy(job)

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        job = self.jobs.get((namespace, name))
        return copy.deepcopy(job) if job else None

    async def delete_job(self, namespace: str, name: str) -> None:
        self.jobs.pop((namespace, name), None)
        self.deleted.append(name)

    async def list_job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return self.pods.get(job, [])

    async def create_service(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        key = (namespace, body["metadata"]["name"])
        if key in self.services:
            raise ConflictError("AlreadyExists")
        self.services[key] = copy.deepcopy(body)
        self.creates.append(f"service/{key[1]}")
        return copy.deepcopy(body)

    async def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        service = self.services.get((namespace, name))
        return copy.deepcopy(service) if service else None

    async def patch_run_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        run = self.runs[(namespace, name)]
        run.setdefault("status", {})
        merge(run["status"], status)
        self.bump(run)
        return copy.deepcopy(run)

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        d = self.deployments.get((namespace, name))
        return copy.deepcopy(d) if d else None

    async def patch_deployment(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        d = self.deployments[(namespace, name)]
        meta = patch.get("metadata") or {}
        if meta.get("resourceVersion") and meta["resourceVersion"] != d["metadata"]["resourceVersion"]:
            raise ConflictError("the object has been modified")
        annotations = d["metadata"].setdefault("annotations", {})
        for k, v in (meta.get("annotations") or {}).items():
            if v is None:
                annotations.pop(k, None)
            else:
                annotations[k] = v
        before = copy.deepcopy(d["spec"])
        for c_patch in patch.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            (c,) = [c for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == c_patch["name"]]
            env = c.setdefault("env", [])
            for e in c_patch.get("env", []):
                env[:] = [x for x in env if x["name"] != e["name"]]
                if e.get("$patch") != "delete":
                    env.append(e)
        if d["spec"] != before:
            d["metadata"]["generation"] += 1
        self.bump(d)
        return copy.deepcopy(d)

    async def get_kueue_object(
        self, plural: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        if self.kueue_forbidden:
            raise ForbiddenError("forbidden")
        found = self.kueue.get((plural, namespace, name))
        return copy.deepcopy(found) if found else None

    async def create_namespaced(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        key = (kind, namespace, body["metadata"]["name"])
        if key in self.namespaced:
            raise ConflictError("AlreadyExists")
        self.namespaced[key] = copy.deepcopy(body)
        self.creates.append(f"{kind.lower()}/{key[2]}")
        return copy.deepcopy(body)

    async def get_namespaced(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.namespaced.get((kind, namespace, name))
        return copy.deepcopy(found) if found else None

    async def get_secret_labels(self, namespace: str, name: str) -> dict[str, str] | None:
        labels = self.secret_labels.get((namespace, name))
        return dict(labels) if labels is not None else None

    async def post_event(self, run: dict[str, Any], type_: str, reason: str, message: str, now: str) -> None:
        self.events.append((type_, reason, message))


def deployment(env: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "zthumb",
            "namespace": "ml",
            "labels": {"app.kubernetes.io/name": "zthumb", "app.kubernetes.io/instance": "zthumb"},
            "generation": 1,
            "resourceVersion": "5",
            "annotations": {},
        },
        "spec": {
            "replicas": 1,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "zthumb", "env": env or [{"name": "ZTHUMB_BACKEND", "value": "full"}]}
                    ]
                }
            },
        },
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
    }


class Harness:
    def __init__(self, spec: dict[str, Any] | None = None, **config: Any) -> None:
        self.api = FakeApi()
        self.now = 1_800_000_000.0
        cfg = {"simulated_eval_summary": {"requests": 8}, **config}
        self.controller = Controller(OperatorConfig(**cfg), self.api, clock=lambda: self.now)
        self.api.deployments[("ml", "zthumb")] = deployment(
            [{"name": "Z_LORA_PATH", "value": "/data/models/lora/old"}]
        )
        self.add_run(make_run(spec or {"dataset": {"triggerWord": "z"}}))

    def add_run(self, run: dict[str, Any]) -> None:
        key = (run["metadata"]["namespace"], run["metadata"]["name"])
        self.api.runs[key] = run
        self.controller.runs[key] = copy.deepcopy(run)

    def reconcile(self, key: tuple[str, str] = KEY) -> float | None:
        async def go() -> float | None:
            # jobs reach the cache through watch events in the real operator
            for jkey, job in self.api.jobs.items():
                self.controller.jobs[jkey] = copy.deepcopy(job)
            for jkey in list(self.controller.jobs):
                if jkey not in self.api.jobs:
                    self.controller.jobs.pop(jkey)
            return await self.controller.reconcile(key)

        return asyncio.run(go())

    def status(self, key: tuple[str, str] = KEY) -> dict[str, Any]:
        return self.api.runs[key].get("status") or {}

    def complete(self, step: str, run: str = "z-style") -> None:
        job = self.api.jobs[("ml", b.single_node_job_name(run, step))]
        job["status"] = {
            "conditions": [{"type": "Complete", "status": "True"}],
            "startTime": "2026-01-01T00:00:00Z",
            "completionTime": "2026-01-01T00:00:05Z",
        }
        self.api.bump(job)

    def rollout_done(self) -> None:
        d = self.api.deployments[("ml", "zthumb")]
        d["status"] = {
            "observedGeneration": d["metadata"]["generation"],
            "replicas": 1,
            "updatedReplicas": 1,
            "availableReplicas": 1,
        }
