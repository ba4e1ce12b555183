"""Which MLflow run a training run logs to (``spec.training.tracking.mlflow``), and its params.

One MLflow run per LoRAFinetune run: ``mlflow_run.json`` in the run dir holds a tracking id
(written before the run is created, and set as the run's tag ``zthumb.trackingId``) and, once
created, the run's id, so a resumed pod finds the same MLflow run (even if the first pod died
between creating it and writing its id). Another server or experiment in the spec starts a new one.

MLflow cannot delete points, and a resumed pod trains the steps after its checkpoint again, so the
steps the run already has are read back per metric (``FoundRun.last_steps``): the sender skips a
point at or below them. MLflow refuses to change a param: a resumed pod logs only the missing ones.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zthumb_contract.spec import TrainingSpec
from zthumb_contract.tracking_spec import MlflowTrackingSpec

from zthumb_trainer.atomic import write_text_atomically

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"
TRACKING_ID_TAG = "zthumb.trackingId"
RUN_NAME_TAG = "zthumb.run"
PARAMS_BATCH = 100  # MLflow's limit of params per log_batch
PARAM_VALUE_MAX = 6000  # and of a param value's length
# A run id read back from the volume goes into the server's URLs: only an id's characters.
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,256}")


def spec_params(config: TrainingSpec, trigger_word: str, base_model_sha256: str) -> dict[str, str]:
    """The training spec as MLflow params: camelCase names, nested sections flattened with dots
    (``validation.steps``), lists and null as JSON; the tracking section itself left out."""
    params: dict[str, str] = {"triggerWord": trigger_word, "baseModelSha256": base_model_sha256}

    def add(name: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                add(f"{name}.{key}", item)
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            params[name] = text[:PARAM_VALUE_MAX]

    fields = set(TrainingSpec.model_fields) - {"tracking"}
    for name, value in config.model_dump(by_alias=True, mode="json", include=fields).items():
        add(name, value)
    return params


@dataclass(frozen=True)
class FoundRun:
    run_id: str
    experiment_id: str
    last_steps: dict[str, int]  # per metric: the last step the run already has (empty: a new run)


def find_or_create_run(
    client: Any, spec: MlflowTrackingSpec, run_dir: Path, run_name: str, params: Mapping[str, str]
) -> FoundRun:
    """This run's MLflow run, found again or created, RUNNING, with its params logged."""
    from mlflow.entities import Param
    from mlflow.exceptions import RestException

    experiment = client.get_experiment_by_name(spec.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(spec.experiment)
    identity = _identity(run_dir / RUN_FILE, spec, experiment_id)
    run = None
    if identity.get("runId"):
        try:
            run = client.get_run(identity["runId"])
        except RestException:  # deleted for good on the server: a new one
            run = None
        if run is not None and run.info.lifecycle_stage != "active":
            run = None
    else:
        tagged = f"tags.`{TRACKING_ID_TAG}` = '{identity['trackingId']}'"
        found = client.search_runs([experiment_id], tagged, max_results=1)
        run = found[0] if found else None
    last_steps: dict[str, int] = {}
    if run is None:
        tags = {TRACKING_ID_TAG: identity["trackingId"], RUN_NAME_TAG: run_name}
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    else:
        client.update_run(run.info.run_id, status="RUNNING")
        for key in run.data.metrics:
            last_steps[key] = max(point.step for point in client.get_metric_history(run.info.run_id, key))
    run_id = run.info.run_id
    write_text_atomically(run_dir / RUN_FILE, json.dumps({**identity, "runId": run_id}) + "\n")
    logged = run.data.params
    for key, value in params.items():
        if key in logged and logged[key] != value:
            log.warning("MLflow run %s keeps param %s=%r (this pod has %r)", run_id, key, logged[key], value)
    missing = [Param(key, value) for key, value in params.items() if key not in logged]
    for start in range(0, len(missing), PARAMS_BATCH):
        client.log_batch(run_id, params=missing[start : start + PARAMS_BATCH], synchronous=True)
    log.info("MLflow run %s in experiment %s at %s", run_id, spec.experiment, spec.tracking_uri)
    return FoundRun(run_id, experiment_id, last_steps)


def _identity(path: Path, spec: MlflowTrackingSpec, experiment_id: str) -> dict[str, str]:
    """This run's tracking id (and MLflow run id, once known) for this server and experiment: the
    run file's, or a new id written before any run is created."""
    place = {"trackingUri": spec.tracking_uri, "experimentId": str(experiment_id)}
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    same_place = isinstance(stored, dict) and all(stored.get(key) == value for key, value in place.items())
    if same_place and isinstance(stored.get("trackingId"), str):
        return {key: str(value) for key, value in stored.items()}
    identity = {**place, "trackingId": uuid.uuid4().hex}
    write_text_atomically(path, json.dumps(identity) + "\n")
    return identity


def recorded_run_id(run_dir: Path, spec: MlflowTrackingSpec) -> str | None:
    """The MLflow run the train step logged to on this server (its run file's), for the steps after
    it (the eval's report); None when it created none there."""
    try:
        stored = json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("trackingUri") != spec.tracking_uri:
        return None
    run_id = stored.get("runId")
    return run_id if isinstance(run_id, str) and RUN_ID.fullmatch(run_id) else None
