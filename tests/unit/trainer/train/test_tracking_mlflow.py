"""MLflow tracking (spec.training.tracking.mlflow) against a real ``mlflow server`` on loopback
(sqlite backend, artifacts proxied by the server), read back with MLflow's own client: params from
the spec, the TensorBoard metrics at the same steps (one point per step after a stop and a resume,
in the same MLflow run), the adapter, summary and validation grids as artifacts; an unreachable
server (a closed port) never fails training and is reported; a rank other than 0 writes nothing."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from mlflow_helpers import free_port
from pydantic import ValidationError
from train_helpers import copy_into_run_dir, prepare_once, tiny_config
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.steps import RunPaths, train_step
from zthumb_contract.tracking_spec import MlflowTrackingSpec
from zthumb_trainer.reporting import StatusReporter
from zthumb_trainer.train import loop, tracking_mlflow
from zthumb_trainer.train.loop import TrainingInterrupted, run_training
from zthumb_trainer.train.tracking_mlflow import MlflowRun
from zthumb_trainer.train.tracking_mlflow_run import RUN_FILE, TRACKING_ID_TAG

TRAIN_TAGS = ("train/loss", "train/loss_smoothed", "train/learning_rate", "train/grad_norm")


@pytest.fixture(scope="module")
def prepared(synthetic_dataset, tmp_path_factory):
    return prepare_once(synthetic_dataset, tmp_path_factory.mktemp("prepared"))


@pytest.fixture
def run_dir(prepared, tmp_path):
    return copy_into_run_dir(prepared, tmp_path)


def _tracking(url: str, experiment: str) -> dict[str, Any]:
    return {"mlflow": {"trackingUri": url, "experiment": experiment}}


def _the_run(url: str, experiment: str) -> Any:
    client = MlflowClient(tracking_uri=url)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    (run,) = client.search_runs([found.experiment_id])  # one MLflow run, whatever the pods
    return client, run


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(point.step for point in client.get_metric_history(run_id, key))


def test_a_run_s_params_metrics_and_artifacts_reach_the_server(mlflow_server, run_dir, tiny_model):
    validation = {
        "prompts": ["a photo of {trigger}"],
        "everyNSteps": 3,
        "steps": 2,
        "width": 64,
        "height": 64,
    }
    config = tiny_config(
        run_dir, tiny_model, validation=validation, tracking=_tracking(mlflow_server, "full")
    )
    summary = run_training(config)

    client, run = _the_run(mlflow_server, "full")
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert summary["tracking"]["mlflow"]["runId"] == run.info.run_id
    assert summary["tracking"]["mlflow"]["warning"] is None
    params = run.data.params
    assert params["rank"] == "4" and params["learningRate"] == "0.005" and params["maxGradNorm"] == "1.0"
    assert params["validation.steps"] == "2" and params["validation.prompts"] == '["a photo of {trigger}"]'
    assert params["triggerWord"] == "zt" and "tracking.mlflow.trackingUri" not in params
    for tag in TRAIN_TAGS:
        assert _steps(client, run.info.run_id, tag) == [1, 2, 3, 4, 5, 6], tag
    assert _steps(client, run.info.run_id, "perf/peak_memory_gib") == [1, 2, 3, 4, 5, 6]
    assert _steps(client, run.info.run_id, "perf/steps_per_second") == [3, 4, 5, 6]  # as TensorBoard's
    losses = [point.value for point in client.get_metric_history(run.info.run_id, "train/loss")]
    assert summary["final_loss"] in losses
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "summary.json", "validation"} <= artifacts
    adapter = {item.path for item in client.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter/pytorch_lora_weights.safetensors", "adapter/adapter.json"} <= adapter
    grids = {item.path for item in client.list_artifacts(run.info.run_id, "validation/samples")}
    assert grids == {"validation/samples/step-000003.png", "validation/samples/step-000006.png"}


def test_a_stopped_and_resumed_run_continues_the_same_mlflow_run(mlflow_server, run_dir, tiny_model):
    # Killed after step 5 (the test hook writes no checkpoint): the last checkpoint is step 4, so
    # the resumed pod trains step 5 again; MLflow keeps the first pod's point for it.
    tracking = _tracking(mlflow_server, "resumed")
    with pytest.raises(TrainingInterrupted):
        run_training(
            tiny_config(run_dir, tiny_model, stop_after_step=5, checkpointing_steps=4, tracking=tracking)
        )
    client, first = _the_run(mlflow_server, "resumed")
    assert first.info.status == "KILLED"
    assert _steps(client, first.info.run_id, "train/loss") == [1, 2, 3, 4, 5]
    assert (run_dir / RUN_FILE).exists()

    run_training(tiny_config(run_dir, tiny_model, checkpointing_steps=4, tracking=tracking))
    client, run = _the_run(mlflow_server, "resumed")
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags[TRACKING_ID_TAG]
    for tag in TRAIN_TAGS:
        assert _steps(client, run.info.run_id, tag) == [1, 2, 3, 4, 5, 6], tag


def test_a_failure_after_the_last_step_fails_the_mlflow_run(mlflow_server, run_dir, tiny_model, monkeypatch):
    """The export (or the last validation, or the summary) failing after the loop: the MLflow run
    says FAILED, not RUNNING forever."""
    from zthumb_trainer.export import adapter

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(adapter, "export_adapter", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_training(tiny_config(run_dir, tiny_model, tracking=_tracking(mlflow_server, "export-failed")))
    _, run = _the_run(mlflow_server, "export-failed")
    assert run.info.status == "FAILED"


class _FakeStatusApi:
    def __init__(self) -> None:
        self.progress: list[dict[str, Any]] = []

    def patch_namespaced_custom_object_status(self, *args: Any, **kwargs: Any) -> None:
        self.progress.append(args[5]["status"]["progress"])


def test_an_unreachable_server_never_fails_training(run_dir, tiny_model, monkeypatch, caplog):
    api = _FakeStatusApi()
    reporter = StatusReporter("run", "ml", api=api, min_interval=0)
    monkeypatch.setattr(StatusReporter, "from_env", classmethod(lambda cls, interval: reporter))
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there any more
    caplog.set_level(logging.WARNING)

    summary = run_training(tiny_config(run_dir, tiny_model, tracking=_tracking(closed, "away")))

    assert summary["steps_this_run"] == 6 and summary["final_loss"] > 0
    assert (run_dir.parent.parent.parent / "models" / "lora" / "run" / "adapter.json").exists()
    assert "unreachable" in summary["tracking"]["mlflow"]["warning"]
    assert summary["tracking"]["mlflow"]["runId"] is None
    warned = [
        record for record in caplog.records if record.getMessage().startswith(f"MLflow server at {closed}")
    ]
    assert len(warned) == 1 and "unreachable" in warned[0].getMessage()  # once, not once per retry
    assert "unreachable" in api.progress[-1]["trackingWarning"]  # status.progress.trackingWarning


def test_a_rank_other_than_0_writes_nothing(mlflow_server, run_dir, tiny_model, monkeypatch):
    opened = loop.open_session

    class _OtherRank:
        def __init__(self, accelerator: Any) -> None:
            self._accelerator = accelerator

        is_main_process = False

        def __getattr__(self, name: str) -> Any:
            return getattr(self._accelerator, name)

    def as_rank_1(*args: Any, **kwargs: Any) -> Any:
        session = opened(*args, **kwargs)
        session.accelerator = _OtherRank(session.accelerator)
        return session

    monkeypatch.setattr(loop, "open_session", as_rank_1)
    summary = run_training(tiny_config(run_dir, tiny_model, tracking=_tracking(mlflow_server, "rank1")))

    assert "tracking" not in summary and not (run_dir / RUN_FILE).exists()
    experiment = MlflowClient(tracking_uri=mlflow_server).get_experiment_by_name("rank1")
    assert experiment is None


@pytest.mark.parametrize(
    ("mlflow", "field"),
    [
        ({"trackingUri": "file:///data/mlruns"}, "trackingUri"),
        ({"trackingUri": "sqlite:///mlflow.db"}, "trackingUri"),
        ({"trackingUri": "http://"}, "trackingUri"),
        ({"trackingUri": "https://user:pw@mlflow.example"}, "trackingUri"),
        ({"trackingUri": "https://mlflow.example/ x"}, "trackingUri"),
        ({"trackingUri": "https://mlflow.example/" + "a" * 2048}, "trackingUri"),
        ({"trackingUri": "https://mlflow.example", "experiment": ""}, "experiment"),
        ({"trackingUri": "https://mlflow.example", "experiment": "e" * 257}, "experiment"),
        ({"trackingUri": "https://mlflow.example", "experiment": "a\nb"}, "experiment"),
        ({"trackingUri": "https://mlflow.example", "credentialsSecretRef": {"name": "Bad_Name"}}, "name"),
        ({"trackingUri": "https://mlflow.example", "credentialsSecretRef": {"name": "s", "key": "k"}}, "key"),
        ({"experiment": "no-uri"}, "trackingUri"),
    ],
)
def test_refusals_name_the_field(mlflow, field):
    with pytest.raises(ValidationError) as refused:
        LoRAFinetuneSpec.model_validate({"training": {"tracking": {"mlflow": mlflow}}})
    assert field in str(refused.value)


def test_the_train_job_gets_the_credentials_from_the_secret_never_their_values():
    spec = LoRAFinetuneSpec.model_validate(
        {
            "training": {
                "tracking": {
                    "mlflow": {
                        "trackingUri": "https://mlflow.example/",
                        "credentialsSecretRef": {"name": "mlflow-creds"},
                    }
                }
            }
        }
    )
    step = train_step(RunPaths("/data", "style", spec))
    assert {name: (ref.name, ref.key) for name, ref in step.optional_secret_env.items()} == {
        "MLFLOW_TRACKING_USERNAME": ("mlflow-creds", "MLFLOW_TRACKING_USERNAME"),
        "MLFLOW_TRACKING_PASSWORD": ("mlflow-creds", "MLFLOW_TRACKING_PASSWORD"),
        "MLFLOW_TRACKING_TOKEN": ("mlflow-creds", "MLFLOW_TRACKING_TOKEN"),
    }
    tracking = step.args[step.args.index("--tracking") + 1]
    assert "mlflow-creds" in tracking and "https://mlflow.example/" in tracking
    no_tracking = train_step(RunPaths("/data", "style", LoRAFinetuneSpec()))
    assert no_tracking.optional_secret_env == {} and "--tracking" not in no_tracking.args


def test_points_wait_in_a_bounded_queue_while_the_server_does_not_answer(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking_mlflow, "MAX_PENDING", 10)
    entered, release = threading.Event(), threading.Event()

    class _Hanging:  # the first request hangs until released, then fails as a refused connection would
        def get_experiment_by_name(self, name: str) -> None:
            entered.set()
            release.wait(timeout=60)
            raise ConnectionError("connection refused")

    spec = MlflowTrackingSpec(tracking_uri="http://127.0.0.1:9")
    run = MlflowRun(spec, run_dir=tmp_path, run_name="run", params={}, client=_Hanging())
    run.add_scalar("train/loss", 1.0, 1)
    assert entered.wait(timeout=60)  # the tracking thread holds step 1 in its hanging request
    for step in range(2, 101):  # the training thread goes on: every call returns at once
        run.add_scalar("train/loss", 1.0, step)
    assert run.dropped == 89 and len(run._ops) == 10  # steps 91-100 wait, the oldest went first
    release.set()
    run.finish("FINISHED")  # returns once the request failed: the server is away
    assert "unreachable" in run.summary()["mlflow"]["warning"] and run.run_id is None
