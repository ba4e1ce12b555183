"""The operator's view of the cluster: runs, their Jobs and the Jobs' pods, fed by watch events.

Every event that concerns a run asks the work queue for a reconcile of that run.
Writes that the operator makes itself come back as events too; an event older than
what is cached (a lower resourceVersion) is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from zthumb_contract import crd
from zthumb_contract.stages import TERMINAL_PHASES

from zthumb_operator import builders as b
from zthumb_operator.status import Key
from zthumb_operator.status import resource_version as _rv


class Requests(Protocol):
    def request(self, key: Key, delay: float = 0.0) -> None: ...
    def forget(self, key: Key) -> None: ...


class Cache:
    def __init__(self, queue: Requests) -> None:
        self.queue = queue
        self.runs: dict[Key, dict[str, Any]] = {}
        self.jobs: dict[Key, dict[str, Any]] = {}
        self.pods: dict[Key, dict[str, dict[str, Any]]] = {}  # (ns, job name) -> pod name -> pod

    def on_run_event(self, event_type: str | None, obj: dict[str, Any]) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if event_type == "DELETED":
            self.runs.pop(key, None)
            self.queue.forget(key)
            return
        cached = self.runs.get(key)
        same = cached is not None and cached["metadata"].get("uid") == obj["metadata"].get("uid")
        if same and cached is not None and _rv(obj) < _rv(cached):
            return  # an older event than what our own write returned
        self.runs[key] = obj
        if (obj.get("status") or {}).get("phase") not in TERMINAL_PHASES:
            self.queue.request(key)

    @staticmethod
    def owner_run(obj: Mapping[str, Any]) -> Key | None:
        meta = obj.get("metadata") or {}
        for ref in meta.get("ownerReferences") or []:
            if ref.get("kind") == crd.KIND and ref.get("apiVersion", "").startswith(crd.GROUP + "/"):
                return (meta["namespace"], ref["name"])
        return None

    def on_job_event(self, event_type: str | None, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            self.jobs.pop(key, None)
            self.pods.pop(key, None)
        elif _rv(obj) >= _rv(self.jobs.get(key) or {}):
            self.jobs[key] = obj
        owner = self.owner_run(obj)
        if owner:
            self.queue.request(owner)

    def on_pod_event(self, event_type: str | None, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        labels = meta.get("labels") or {}
        job = labels.get(b.JOB_NAME_LABEL) or labels.get("job-name")
        if not job:
            return
        jkey = (meta["namespace"], job)
        pods = self.pods.setdefault(jkey, {})
        if event_type == "DELETED":
            pods.pop(meta["name"], None)
        else:
            pods[meta["name"]] = obj
        job_obj = self.jobs.get(jkey)
        owner = self.owner_run(job_obj) if job_obj else None
        if owner:
            self.queue.request(owner)

    def store_run(self, key: Key, run: dict[str, Any]) -> None:
        """Cache what our own write returned, unless a newer version is cached already."""
        if _rv(run) >= _rv(self.runs.get(key) or {}):
            self.runs[key] = run

    def store_job(self, key: Key, job: dict[str, Any]) -> None:
        if _rv(job) >= _rv(self.jobs.get(key) or {}):
            self.jobs[key] = job
