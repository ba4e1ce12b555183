"""Cache: which watch events it keeps, which it drops as stale, and which runs they bring back."""

from __future__ import annotations

from typing import Any

from zthumb_operator.cache import Cache

KEY = ("ml", "r")


class Queue:
    def __init__(self) -> None:
        self.requested: list[tuple[str, str]] = []
        self.forgotten: list[tuple[str, str]] = []

    def request(self, key: tuple[str, str], delay: float = 0.0) -> None:
        self.requested.append(key)

    def forget(self, key: tuple[str, str]) -> None:
        self.forgotten.append(key)


def run(rv: str, uid: str = "u1", phase: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"namespace": "ml", "name": "r", "uid": uid, "resourceVersion": rv}}
    if phase:
        obj["status"] = {"phase": phase}
    return obj


def job(rv: str, name: str = "r-train", owner: str | None = "r", api_version: str = "zthumb.io/v1alpha1"):
    meta: dict[str, Any] = {"namespace": "ml", "name": name, "resourceVersion": rv}
    if owner:
        meta["ownerReferences"] = [
            {"kind": "ConfigMap", "apiVersion": "v1", "name": "other"},
            {"kind": "LoRAFinetune", "apiVersion": api_version, "name": owner},
        ]
    return {"metadata": meta}


def pod(name: str, labels: dict[str, str] | None) -> dict[str, Any]:
    return {"metadata": {"namespace": "ml", "name": name, "labels": labels}}


def test_a_run_event_is_cached_and_reconciled_unless_stale_or_finished() -> None:
    queue = Queue()
    cache = Cache(queue)
    cache.on_run_event("ADDED", run("5"))
    assert cache.runs[KEY]["metadata"]["resourceVersion"] == "5"
    assert queue.requested == [KEY]
    # An event older than what is cached (our own write came back first) is dropped.
    cache.on_run_event("MODIFIED", run("4"))
    assert cache.runs[KEY]["metadata"]["resourceVersion"] == "5"
    assert queue.requested == [KEY]
    # The same version again is kept (and looked at).
    cache.on_run_event("MODIFIED", run("5"))
    assert queue.requested == [KEY, KEY]
    # A run deleted and created again under the same name starts its own versions.
    cache.on_run_event("ADDED", run("2", uid="u2"))
    assert cache.runs[KEY]["metadata"]["uid"] == "u2"
    # A finished run is cached but not reconciled again.
    cache.on_run_event("MODIFIED", run("9", uid="u2", phase="Succeeded"))
    cache.on_run_event("MODIFIED", run("10", uid="u2", phase="Failed"))
    assert cache.runs[KEY]["metadata"]["resourceVersion"] == "10"
    assert queue.requested == [KEY, KEY, KEY]
    cache.on_run_event("MODIFIED", run("11", uid="u2", phase="Training"))
    assert queue.requested == [KEY, KEY, KEY, KEY]
    cache.on_run_event("DELETED", run("12", uid="u2"))
    assert KEY not in cache.runs
    assert queue.forgotten == [KEY]
    assert queue.requested == [KEY, KEY, KEY, KEY]


def test_only_a_lorafinetune_of_this_group_owns_a_job() -> None:
    assert Cache.owner_run(job("1")) == KEY
    assert Cache.owner_run(job("1", owner=None)) is None
    assert Cache.owner_run(job("1", api_version="other.io/v1alpha1")) is None
    # A group whose name only starts like ours is another group.
    assert Cache.owner_run(job("1", api_version="zthumb.io.evil/v1")) is None
    assert Cache.owner_run({}) is None
    assert Cache.owner_run({"metadata": {"ownerReferences": None}}) is None
    # A reference without an apiVersion (malformed) owns nothing, and is no crash.
    no_version = {"metadata": {"namespace": "ml", "ownerReferences": [{"kind": "LoRAFinetune", "name": "r"}]}}
    assert Cache.owner_run(no_version) is None


def test_a_job_event_keeps_the_newest_version_and_wakes_its_run() -> None:
    queue = Queue()
    cache = Cache(queue)
    jkey = ("ml", "r-train")
    cache.on_job_event("ADDED", job("3"))
    assert cache.jobs[jkey]["metadata"]["resourceVersion"] == "3"
    assert queue.requested == [KEY]
    cache.on_job_event("MODIFIED", job("2"))
    assert cache.jobs[jkey]["metadata"]["resourceVersion"] == "3"
    cache.on_job_event("MODIFIED", job("3", name="r-train"))
    cache.on_job_event("MODIFIED", job("4"))
    assert cache.jobs[jkey]["metadata"]["resourceVersion"] == "4"
    # A Job that is not a run's wakes nothing.
    cache.on_job_event("ADDED", job("1", name="x", owner=None))
    assert ("ml", "x") in cache.jobs
    assert queue.requested == [KEY] * 4
    cache.pods[jkey] = {"p": {}}
    cache.on_job_event("DELETED", job("5"))
    assert jkey not in cache.jobs
    assert jkey not in cache.pods
    assert queue.requested == [KEY] * 5


def test_a_pod_event_is_filed_under_its_job_and_wakes_the_jobs_run() -> None:
    queue = Queue()
    cache = Cache(queue)
    jkey = ("ml", "r-train")
    # The Job is not cached yet: the pod is kept, nobody to wake.
    cache.on_pod_event("ADDED", pod("r-train-0", {"batch.kubernetes.io/job-name": "r-train"}))
    assert set(cache.pods[jkey]) == {"r-train-0"}
    assert queue.requested == []
    cache.on_job_event("ADDED", job("1"))
    queue.requested.clear()
    # The older label is read too.
    cache.on_pod_event("ADDED", pod("r-train-1", {"job-name": "r-train"}))
    assert set(cache.pods[jkey]) == {"r-train-0", "r-train-1"}
    assert queue.requested == [KEY]
    cache.on_pod_event("DELETED", pod("r-train-0", {"job-name": "r-train"}))
    assert set(cache.pods[jkey]) == {"r-train-1"}
    assert queue.requested == [KEY, KEY]
    # A pod of no Job is ignored.
    cache.on_pod_event("ADDED", pod("lonely", None))
    cache.on_pod_event("ADDED", pod("lonely", {"app": "x"}))
    assert set(cache.pods) == {jkey}
    assert queue.requested == [KEY, KEY]
    # A Job that is no run's wakes nothing.
    cache.on_job_event("ADDED", job("1", name="x", owner=None))
    cache.on_pod_event("ADDED", pod("x-0", {"job-name": "x"}))
    assert queue.requested == [KEY, KEY]


def test_our_own_writes_are_cached_unless_a_newer_version_is() -> None:
    cache = Cache(Queue())
    cache.store_run(KEY, run("5"))
    cache.store_run(KEY, run("4"))
    assert cache.runs[KEY]["metadata"]["resourceVersion"] == "5"
    cache.store_run(KEY, run("5", uid="same-version"))
    assert cache.runs[KEY]["metadata"]["uid"] == "same-version"
    cache.store_job(KEY, job("7"))
    cache.store_job(KEY, job("6"))
    assert cache.jobs[KEY]["metadata"]["resourceVersion"] == "7"
    cache.store_job(KEY, job("7", name="same-version"))
    assert cache.jobs[KEY]["metadata"]["name"] == "same-version"


def test_deleting_what_was_never_cached_is_no_error() -> None:
    queue = Queue()
    cache = Cache(queue)
    cache.on_run_event("DELETED", run("1"))
    cache.on_job_event("DELETED", job("1", owner=None))
    cache.on_pod_event("DELETED", pod("p", {"job-name": "r-train"}))
    assert queue.forgotten == [KEY]
    assert (cache.runs, cache.jobs) == ({}, {})
    assert "p" not in cache.pods.get(("ml", "r-train"), {})


def test_a_pod_event_keeps_the_pod_itself() -> None:
    cache = Cache(Queue())
    obj = pod("r-train-0", {"job-name": "r-train"})
    cache.on_pod_event("MODIFIED", obj)
    assert cache.pods[("ml", "r-train")]["r-train-0"] is obj
