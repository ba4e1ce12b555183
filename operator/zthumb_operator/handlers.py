"""kopf handlers: thin adapters from watch events to the ``Controller`` (reconcile.py).

Only ``on.event`` handlers are used: kopf then writes nothing to the watched
objects (no finalizers, no progress annotations), so a LoRAFinetune can be
deleted while the operator is down, and the operator needs no ``patch`` on the
LoRAFinetune itself, only on its status.
"""

from __future__ import annotations

from typing import Any

import kopf
from zthumb_contract.crd import GROUP, PLURAL, VERSION

from zthumb_operator import builders as b
from zthumb_operator import runtime

MANAGED = {b.LABEL_MANAGED_BY: b.MANAGED_BY}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Tune kopf and start the controller."""
    await runtime.start(settings, memo)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the controller's timers and workers."""
    runtime.stop(memo)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def run_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """A LoRAFinetune changed: cache it and reconcile it."""
    memo.controller.on_run_event(event["type"], dict(event["object"]))


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
async def job_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """One of our Jobs changed: cache it and reconcile its run."""
    memo.controller.on_job_event(event["type"], dict(event["object"]))


@kopf.on.event("", "v1", "pods", labels=MANAGED)
async def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """A pod of our Jobs changed (scheduling, termination message): reconcile its run."""
    memo.controller.on_pod_event(event["type"], dict(event["object"]))
