"""Where a step tells the world how it went: progress lines, status patches, termination messages.

* ``ProgressLog``: one JSON object per optimizer step in ``<run-dir>/progress.jsonl``.
* ``StatusReporter``: merge-patches the LoRAFinetune's ``status.progress`` through the
  status subresource, at most every ``min_interval`` seconds. It is a convenience for
  ``kubectl get lft``: a failure to report is logged and never stops training.
* ``write_termination_message``: the compact summary Kubernetes copies from
  ``/dev/termination-log`` into the pod status, where the operator reads it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from zthumb_contract import crd

from zthumb_trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

# The writer of status.progress in the LoRAFinetune's managedFields (the operator: "zthumb-operator").
FIELD_MANAGER = "zthumb-trainer"
# The ProgressLog of a run, in its run dir (the eval step draws the report's curves from it).
PROGRESS_LOG = "progress.jsonl"
# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096


class ProgressLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


class StatusReporter:
    """Patches ``status.progress`` of one LoRAFinetune, rate-limited; never raises."""

    def __init__(self, name: str, namespace: str, api: Any = None, min_interval: float = 10.0) -> None:
        self.name = name
        self.namespace = namespace
        self.min_interval = min_interval
        self._api = api
        self._last_sent = -float("inf")
        self.sent = 0
        # Set by the MLflow run (train/tracking_mlflow.py) while its server does not take the
        # points; sent with every report, None (which removes it) once all is well again.
        self.tracking_warning: str | None = None

    @classmethod
    def from_env(cls, min_interval: float = 10.0) -> StatusReporter | None:
        """A reporter when the operator set the run name and namespace, else None (local runs)."""
        settings = TrainerSettings()
        name, namespace = settings.run_name, settings.namespace
        if not name or not namespace:
            return None
        return cls(name, namespace, min_interval=min_interval)

    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            config.load_incluster_config()
            self._api = client.CustomObjectsApi()
        return self._api

    def report(
        self, step: int, total: int, loss: float | None, remaining_seconds: float | None, force: bool = False
    ) -> bool:
        """Patch ``status.progress``; ``remaining_seconds`` is the steady-state estimate
        (``train/measure.py``), None before there is one."""
        now = time.monotonic()
        if not force and now - self._last_sent < self.min_interval:
            return False
        self._last_sent = now
        progress = {
            "step": step,
            "totalSteps": total,
            "loss": None if loss is None else round(float(loss), 6),
            "estimatedRemainingSeconds": None if remaining_seconds is None else round(remaining_seconds),
            "lastUpdateTime": crd.utc_now(),
            "trackingWarning": self.tracking_warning,
        }
        try:
            self._client().patch_namespaced_custom_object_status(
                crd.GROUP,
                crd.VERSION,
                self.namespace,
                crd.PLURAL,
                self.name,
                {"status": {"progress": progress}},
                field_manager=FIELD_MANAGER,
            )
        except Exception as error:  # any failure (RBAC, network, no config) is only worth a log line
            log.warning("could not report progress to %s/%s: %s", self.namespace, self.name, error)
            return False
        self.sent += 1
        return True


def _scalar(value: object) -> bool:
    return isinstance(value, int | float | str | bool) or value is None


def termination_log_path() -> Path:
    return TrainerSettings().termination_log


def write_termination_message(summary: dict[str, Any]) -> bool:
    """Write ``summary`` as compact JSON to the termination log if that file exists."""
    path = termination_log_path()
    if not path.exists():
        return False
    message = json.dumps(summary, separators=(",", ":"), default=str)
    if len(message.encode()) > TERMINATION_MESSAGE_LIMIT:
        # Keep only the scalar fields and flat objects of scalars (the train step's ``training``
        # block, which becomes status.training): the operator needs numbers, not lists.
        scalars = {
            k: v
            for k, v in summary.items()
            if _scalar(v) or (isinstance(v, dict) and all(map(_scalar, v.values())))
        }
        message = json.dumps(scalars, separators=(",", ":"))[:TERMINATION_MESSAGE_LIMIT]
    try:
        path.write_text(message)
    except OSError as error:
        log.warning("could not write the termination message to %s: %s", path, error)
        return False
    return True
