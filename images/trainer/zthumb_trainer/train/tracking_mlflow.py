"""The run's MLflow run (``spec.training.tracking.mlflow``): params, the TensorBoard points, the
validation grids and, at the end, the adapter and ``summary.json``, on a tracking server of the user's.

Rank 0 only (the loop opens none on the other ranks). ``MlflowRun`` takes ``SummaryWriter``'s calls
(``add_scalar``, ``add_image``, ``flush``, ``close``) as ``TensorBoardLog``'s mirror, so MLflow gets
the same points at the same steps as the event files. Every call only queues: one thread of its own
talks to the server, so a slow or dead server never slows a step. Each request is bounded
(``MLFLOW_HTTP_REQUEST_TIMEOUT``, no retries inside the client); a failed one is retried after a
growing pause while the points wait in a bounded queue (the oldest dropped past ``MAX_PENDING``),
and the problem is logged once and shown in ``status.progress.trackingWarning`` and the summary.

Which MLflow run (one per LoRAFinetune run, continued by a resumed pod without a step logged twice)
and its params: ``tracking_mlflow_run.py``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zthumb_contract.tracking_spec import MlflowTrackingSpec

from zthumb_trainer.reporting import StatusReporter
from zthumb_trainer.train.tracking_mlflow_run import find_or_create_run, spec_params

log = logging.getLogger(__name__)

# Per request: a server that does not answer costs the tracking thread this, never a step.
REQUEST_TIMEOUT_SECONDS = 10
MAX_PENDING = 100_000  # points waiting for the server (a bounded memory); the oldest go first
MAX_PENDING_IMAGES = 2  # validation grids can be large arrays
BATCH = 1000  # MLflow's limit of metrics per log_batch
RETRY_SECONDS = (2.0, 60.0)  # the first pause after a failure, doubled up to the second
FINISH_SECONDS = 300.0  # the end waits this long at most for the last points and the adapter
# After SIGTERM the pod has its grace period (30 s by default) and its checkpoint is written.
INTERRUPTED_FINISH_SECONDS = 15.0
WARNING_MAX = 1000


def prepare_client_env() -> None:
    """Bounded requests, no telemetry, before the client reads its env (a value the pod sets wins)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(REQUEST_TIMEOUT_SECONDS))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    # MLflow 3's client reports usage to MLflow's own endpoint unless told not to: a train pod talks
    # to the user's server only.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


class MlflowRun:
    def __init__(
        self,
        spec: MlflowTrackingSpec,
        *,
        run_dir: Path,
        run_name: str,
        params: Mapping[str, str],
        reporter: StatusReporter | None = None,
        client: Any = None,  # tests: an MlflowClient of their own
    ) -> None:
        prepare_client_env()
        from mlflow.tracking import MlflowClient  # the trainer imports mlflow only when tracking

        self.spec, self.run_dir, self.run_name, self.params = spec, run_dir, run_name, dict(params)
        self.reporter = reporter
        self._client = client or MlflowClient(tracking_uri=spec.tracking_uri)
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.problem: str | None = None
        self.dropped = 0  # points dropped (queue full) or refused by the server
        self._floor: dict[str, int] = {}  # per metric: the last step the run had when this pod began
        self._ops: deque[tuple[str, Any]] = deque()
        self._images = 0
        self._busy = False
        self._closing = False  # finish(): send what is left, then stop
        self._abandoned = False  # give up now (the server is away at the end, or refused the run)
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="mlflow-tracking", daemon=True)
        self._thread.start()

    # --- SummaryWriter's calls (TensorBoardLog's mirror): queue and return --------------------

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        self._put("metric", Metric(tag, float(value), int(time.time() * 1000), int(step)))

    def add_image(self, tag: str, image: Any, step: int, dataformats: str = "HWC") -> None:
        if dataformats != "HWC":
            raise ValueError(f"MLflow images are HWC arrays, not {dataformats}")
        self._put("image", (f"{tag}/step-{step:06d}.png", image))

    def flush(self) -> None:
        """Nothing to do: the tracking thread sends as soon as the server takes the points."""

    def close(self) -> None:
        """Nothing to do: ``finish`` ends the MLflow run (with its status and artifacts)."""

    # --- the end ---------------------------------------------------------------------------------

    def log_artifact(self, path: Path, artifact_path: str | None) -> None:
        self._put("artifact", (path, artifact_path))

    def finish(self, status: str, timeout: float = FINISH_SECONDS) -> None:
        """End the MLflow run with ``status`` (FINISHED, KILLED, FAILED) after what is queued, waiting
        at most ``timeout`` seconds, and not at all while the server does not answer."""
        self._put("end", status)
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while (self._ops or self._busy) and self.problem is None and not self._abandoned:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 1.0))
            unsent = len(self._ops)
            self._abandoned = True
            self._cond.notify_all()
        if unsent:
            log.warning("MLflow tracking ended with %d items unsent: %s", unsent, self.problem or "timed out")
        self._thread.join(timeout=REQUEST_TIMEOUT_SECONDS * 2)

    def summary(self) -> dict[str, Any]:
        """The ``tracking`` block of the train summary."""
        return {
            "mlflow": {
                "trackingUri": self.spec.tracking_uri,
                "experimentId": self.experiment_id,
                "runId": self.run_id,
                "warning": self.problem,
                "dropped": self.dropped,
            }
        }

    # --- the tracking thread ---------------------------------------------------------------------

    def _put(self, kind: str, item: Any) -> None:
        with self._cond:
            if self._abandoned:
                return
            if kind == "image":
                if self._images >= MAX_PENDING_IMAGES:
                    self.dropped += 1
                    return
                self._images += 1
            self._ops.append((kind, item))
            if len(self._ops) > MAX_PENDING:
                dropped_kind, _ = self._ops.popleft()
                self.dropped += 1
                self._images -= dropped_kind == "image"
            self._cond.notify_all()

    def _take(self) -> list[tuple[str, Any]] | None:
        """The next request's items (up to BATCH metrics, or one other item); None: stop."""
        with self._cond:
            while not self._ops and not self._abandoned and not self._closing:
                self._cond.wait()
            if self._abandoned or not self._ops:
                return None
            batch = [self._ops.popleft()]
            while (
                batch[0][0] == "metric" and self._ops and self._ops[0][0] == "metric" and len(batch) < BATCH
            ):
                batch.append(self._ops.popleft())
            self._images -= batch[0][0] == "image"
            self._busy = True
            return batch

    def _work(self) -> None:
        pause = RETRY_SECONDS[0]
        while (batch := self._take()) is not None:
            try:
                if self.run_id is None:
                    self._start()
                self._send(batch)
            except Exception as error:
                from mlflow.exceptions import RestException

                if isinstance(error, RestException):  # the server answered no: retrying will not help
                    self._report(f"MLflow server at {self.spec.tracking_uri} refused: {error}")
                    with self._cond:
                        self.dropped += len(batch)
                        self._abandoned = self.run_id is None  # no run to log to
                        self._busy = False
                        self._cond.notify_all()
                    continue
                self._report(f"MLflow server at {self.spec.tracking_uri} unreachable: {error}")
                with self._cond:
                    self._ops.extendleft(reversed(batch))
                    self._images += batch[0][0] == "image"
                    self._busy = False
                    self._cond.notify_all()
                    self._cond.wait_for(lambda: self._abandoned, timeout=pause)
                pause = min(pause * 2, RETRY_SECONDS[1])
            else:
                pause = RETRY_SECONDS[0]
                self._report(None)
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _report(self, problem: str | None) -> None:
        problem = problem[:WARNING_MAX] if problem else None
        if problem == self.problem:
            return
        if problem is None:
            log.info("MLflow server at %s takes the points again", self.spec.tracking_uri)
        elif self.problem is None:
            log.warning("%s (training goes on; %d points wait)", problem, len(self._ops))
        with self._cond:
            self.problem = problem
            self._cond.notify_all()
        if self.reporter is not None:
            self.reporter.tracking_warning = problem

    def _send(self, batch: list[tuple[str, Any]]) -> None:
        kind, item = batch[0]
        assert self.run_id is not None
        if kind == "metric":
            fresh = [metric for _, metric in batch if metric.step > self._floor.get(metric.key, 0)]
            if fresh:
                self._client.log_batch(self.run_id, metrics=fresh, synchronous=True)
        elif kind == "image":
            self._client.log_image(self.run_id, item[1], artifact_file=item[0])
        elif kind == "artifact":
            self._client.log_artifact(self.run_id, str(item[0]), artifact_path=item[1])
        elif kind == "end":
            self._client.set_terminated(self.run_id, status=item)

    def _start(self) -> None:
        found = find_or_create_run(self._client, self.spec, self.run_dir, self.run_name, self.params)
        self.experiment_id, self._floor = found.experiment_id, found.last_steps
        self.run_id = found.run_id  # last: the run is ready for points


def open_mlflow_run(config: Any, reporter: StatusReporter | None) -> MlflowRun | None:
    """The MLflow run of a training config (a ``TrainConfig``), or None without tracking."""
    spec = config.tracking.mlflow
    if spec is None:
        return None
    params = spec_params(config, config.trigger_word, config.base_model_sha256)
    try:
        return MlflowRun(
            spec, run_dir=config.run_dir, run_name=config.run_name, params=params, reporter=reporter
        )
    except ImportError as error:  # a trainer image without the client: train, and say so
        warning = f"no MLflow tracking (training goes on): the MLflow client is not installed: {error}"
        log.warning("%s", warning)
        if reporter is not None:
            reporter.tracking_warning = warning
        return None


def log_run_artifacts(run: MlflowRun, adapter_dir: Path | None, summary: Path) -> None:
    """The end of a finished training: the exported adapter's files and the train summary as
    artifacts (the eval report is written later, by the eval step, and is not among them), then
    the MLflow run FINISHED."""
    if adapter_dir is not None and adapter_dir.is_dir():
        for path in sorted(adapter_dir.iterdir()):
            if path.is_file():
                run.log_artifact(path, "adapter")
    run.log_artifact(summary, None)
    run.finish("FINISHED")
