"""The eval's report in the train step's MLflow run (``spec.training.tracking.mlflow``).

The train step keeps its MLflow run's id in ``<run-dir>/mlflow_run.json``
(``train/tracking_mlflow_run.py``); the eval logs to that same run, under ``report/``, the report's
``report.md``, ``summary.json`` and the PNGs of ``curves/`` and ``pairs/`` (at most ``MAX_FILES``
files and ``MAX_BYTES`` bytes, the text first, then the curves, then the pairs), and the numbers of
its ``EvalSummary`` as metrics ``eval/<name>``.

Tracking never fails the eval: each request is bounded as the train side's
(``prepare_client_env``), the whole upload by ``UPLOAD_SECONDS``, and a problem is logged and kept
in the summary's ``tracking.mlflow.warning``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from zthumb_contract.eval_report import EvalReport
from zthumb_contract.tracking_spec import MlflowTrackingSpec

from zthumb_trainer.train.tracking_mlflow import WARNING_MAX, prepare_client_env
from zthumb_trainer.train.tracking_mlflow_run import RUN_FILE, recorded_run_id

log = logging.getLogger(__name__)

ARTIFACT_DIR = "report"
TEXT_FILES = ("report.md", "summary.json")
IMAGE_DIRS = ("curves", "pairs")
MAX_FILES = 200
MAX_BYTES = 200 * 1024**2
UPLOAD_SECONDS = 300.0


def report_files(report_dir: Path) -> tuple[list[Path], int]:
    """The files to log, in order, within the bounds; and how many were left out by them."""
    candidates = [report_dir / name for name in TEXT_FILES]
    for folder in IMAGE_DIRS:
        if (report_dir / folder).is_dir() and not (report_dir / folder).is_symlink():
            candidates += sorted((report_dir / folder).glob("*.png"))
    chosen: list[Path] = []
    total = 0
    present = [path for path in candidates if path.is_file() and not path.is_symlink()]
    for path in present:
        size = path.stat().st_size
        if len(chosen) >= MAX_FILES or total + size > MAX_BYTES:
            continue
        chosen.append(path)
        total += size
    return chosen, len(present) - len(chosen)


def summary_metrics(report: EvalReport) -> dict[str, float]:
    """The compact summary's numbers (not its flags or texts) as ``eval/<name>``."""
    numbers = report.summary().model_dump(mode="json", exclude_none=True)
    return {
        f"eval/{name}": float(value)
        for name, value in numbers.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def log_report(
    spec: MlflowTrackingSpec,
    run_dir: Path,
    report_dir: Path,
    report: EvalReport,
    client: Any = None,  # tests: an MlflowClient of their own
) -> dict[str, Any]:
    """Log ``report_dir`` to the run's MLflow run; the summary's ``tracking`` block, never raising."""
    result: dict[str, Any] = {"runId": None, "artifacts": 0, "leftOut": 0, "warning": None}
    run_id = recorded_run_id(run_dir, spec)
    if run_id is None:
        result["warning"] = f"no MLflow run of {spec.tracking_uri} in {run_dir / RUN_FILE}"
        log.warning("eval report not tracked: %s", result["warning"])
        return {"mlflow": result}
    result["runId"] = run_id
    files, result["leftOut"] = report_files(report_dir)
    if result["leftOut"]:
        log.warning("MLflow run %s: %d report files left out (bounds)", run_id, result["leftOut"])
    prepare_client_env()
    deadline = time.monotonic() + UPLOAD_SECONDS
    try:
        from mlflow.entities import Metric  # the trainer imports mlflow only when tracking
        from mlflow.tracking import MlflowClient

        client = client or MlflowClient(tracking_uri=spec.tracking_uri)
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, 0) for key, value in summary_metrics(report).items()]
        if metrics:
            client.log_batch(run_id, metrics=metrics, synchronous=True)
        for path in files:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the upload took over {UPLOAD_SECONDS:.0f}s")
            folder = path.parent.relative_to(report_dir).as_posix()
            artifact_path = ARTIFACT_DIR if folder == "." else f"{ARTIFACT_DIR}/{folder}"
            client.log_artifact(run_id, str(path), artifact_path)
            result["artifacts"] += 1
    except Exception as error:  # any tracker failure is the eval's warning, never its failure
        result["warning"] = f"{type(error).__name__}: {error}"[:WARNING_MAX]
        log.warning("eval report to MLflow run %s: %s", run_id, result["warning"])
    else:
        log.info("eval report: %d files to MLflow run %s", result["artifacts"], run_id)
    return {"mlflow": result}
