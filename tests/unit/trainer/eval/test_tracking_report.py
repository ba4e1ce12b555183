"""The eval's report in the train step's MLflow run (spec.training.tracking.mlflow), against a real
``mlflow server`` on loopback (``mlflow_helpers.py``): the whole eval (a fake ZThumb server) logs
report.md, summary.json and the pairs' PNGs under ``report/`` of the run the train step created, and
the summary's numbers as metrics; bounded files; an unreachable server is a warning, not a failure;
the eval Job gets ``--tracking`` and the credentials' env as the train Job does."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mlflow.tracking import MlflowClient
from mlflow_helpers import free_port
from test_evaluate import _fake_server
from typer.testing import CliRunner
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.steps import RunPaths, eval_step
from zthumb_contract.tracking_spec import MlflowTrackingSpec, TrackingSpec
from zthumb_trainer.cli import app
from zthumb_trainer.eval import run as eval_run
from zthumb_trainer.eval import tracking_report
from zthumb_trainer.eval.config import EvalConfig
from zthumb_trainer.eval.run import run_eval
from zthumb_trainer.local.http_serve import StaticServer
from zthumb_trainer.train.tracking_mlflow_run import RUN_FILE, find_or_create_run


def _train_side_run(url: str, run_dir: Path) -> str:
    """The MLflow run the train step creates (its own code), with its id in the run dir."""
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"steps": 6}))
    spec = MlflowTrackingSpec(tracking_uri=url, experiment="eval")
    client = MlflowClient(tracking_uri=url)
    found = find_or_create_run(client, spec, run_dir, "style", {"rank": "4"})
    client.set_terminated(found.run_id, "FINISHED")
    return found.run_id


def _eval(tmp_path: Path, url: str, monkeypatch) -> tuple[Path, dict]:
    monkeypatch.setenv("ZTHUMB_TERMINATION_LOG", str(tmp_path / "termination-log"))
    run_dir = tmp_path / "outputs" / "lora" / "style"
    output = tmp_path / "outputs" / "lora_eval" / "style"
    with StaticServer(tmp_path, handler=_fake_server()) as server:
        run_eval(
            EvalConfig(server_url=server.url, output=output, run_name="style", lora_path="style",
                       prompts=["a photo of {trigger}"], seeds=[0, 1], scales=[0.0, 0.8],
                       trigger_word="zt", steps=4, width=64, height=64,
                       train_summary=run_dir / "summary.json", out_of_distribution_prompts=[],
                       tracking=TrackingSpec(mlflow=MlflowTrackingSpec(tracking_uri=url, experiment="eval")))
        )  # fmt: skip
    return output, json.loads((output / "summary.json").read_text())


def test_the_report_goes_to_the_train_step_s_mlflow_run(mlflow_server, tmp_path, monkeypatch):
    run_id = _train_side_run(mlflow_server, tmp_path / "outputs" / "lora" / "style")

    output, summary = _eval(tmp_path, mlflow_server, monkeypatch)

    client = MlflowClient(tracking_uri=mlflow_server)
    logged = {item.path for item in client.list_artifacts(run_id, "report")}
    assert {"report/report.md", "report/summary.json", "report/pairs"} <= logged
    pairs = {item.path for item in client.list_artifacts(run_id, "report/pairs")}
    assert pairs == {f"report/pairs/{p.name}" for p in (output / "pairs").glob("*.png")} and pairs
    run = client.get_run(run_id)
    assert run.data.metrics["eval/requests"] == 4
    assert run.data.metrics["eval/mean_pixel_difference"] == summary["mean_pixel_difference"]
    assert run.info.status == "FINISHED"  # the train step ended it; the eval only adds to it
    tracked = summary["tracking"]["mlflow"]
    assert tracked["runId"] == run_id and tracked["warning"] is None
    assert tracked["artifacts"] == len(pairs) + 2 + len(list((output / "curves").glob("*.png")))


def test_the_files_logged_are_bounded(tmp_path, monkeypatch):
    (tmp_path / "pairs").mkdir()
    for index in range(5):
        (tmp_path / "pairs" / f"p{index}.png").write_bytes(b"x" * 10)
    (tmp_path / "report.md").write_text("r")
    monkeypatch.setattr(tracking_report, "MAX_FILES", 3)
    files, left_out = tracking_report.report_files(tmp_path)
    assert [p.name for p in files] == ["report.md", "p0.png", "p1.png"] and left_out == 3
    monkeypatch.setattr(tracking_report, "MAX_BYTES", 15)
    files, left_out = tracking_report.report_files(tmp_path)
    assert [p.name for p in files] == ["report.md", "p0.png"] and left_out == 4


def test_an_unreachable_server_is_a_warning_and_the_eval_goes_on(tmp_path, monkeypatch, caplog):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run_dir = tmp_path / "outputs" / "lora" / "style"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"steps": 6}))
    (run_dir / RUN_FILE).write_text(json.dumps({"trackingUri": closed, "runId": "a" * 32}))
    caplog.set_level(logging.WARNING)

    output, summary = _eval(tmp_path, closed, monkeypatch)

    assert (output / "report.md").exists() and summary["requests"] == 4
    tracked = summary["tracking"]["mlflow"]
    assert tracked["runId"] == "a" * 32 and tracked["artifacts"] == 0 and tracked["warning"]
    assert any("eval report to MLflow run" in record.getMessage() for record in caplog.records)


def test_no_run_of_that_server_is_a_warning(tmp_path, monkeypatch):
    run_dir = tmp_path / "outputs" / "lora" / "style"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"steps": 6}))
    (run_dir / RUN_FILE).write_text(json.dumps({"trackingUri": "http://other:5000", "runId": "a" * 32}))

    _, summary = _eval(tmp_path, f"http://127.0.0.1:{free_port()}", monkeypatch)

    assert summary["tracking"]["mlflow"]["runId"] is None
    assert "no MLflow run" in summary["tracking"]["mlflow"]["warning"]


def test_without_tracking_the_eval_logs_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(eval_run, "log_report", lambda *args: (_ for _ in ()).throw(AssertionError))
    monkeypatch.setenv("ZTHUMB_TERMINATION_LOG", str(tmp_path / "termination-log"))
    with StaticServer(tmp_path, handler=_fake_server()) as server:
        run_eval(EvalConfig(server_url=server.url, output=tmp_path / "out", run_name="s", lora_path="s",
                            prompts=["a"], seeds=[0], scales=[0.0, 0.8], steps=4, width=64, height=64,
                            out_of_distribution_prompts=[]))  # fmt: skip
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["tracking"] is None


def test_the_eval_step_gets_the_tracking_option_and_credentials_env():
    tracking = {"mlflow": {"trackingUri": "https://mlflow.example/", "credentialsSecretRef": {"name": "ml"}}}
    spec = LoRAFinetuneSpec.model_validate({"training": {"tracking": tracking}})
    step = eval_step(RunPaths("/data", "style", spec), "http://zthumb:8080")
    assert set(step.optional_secret_env) == {
        "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"}  # fmt: skip
    given = step.args[step.args.index("--tracking") + 1]
    assert TrackingSpec.model_validate_json(given) == spec.training.tracking
    plain = eval_step(RunPaths("/data", "style", LoRAFinetuneSpec()), "http://zthumb:8080")
    assert plain.optional_secret_env == {} and "--tracking" not in plain.args


def test_the_eval_cli_takes_tracking_as_train_does(tmp_path, monkeypatch):
    seen: list[EvalConfig] = []

    def fake_run(config: EvalConfig):
        seen.append(config)
        raise eval_run.EvalError("stop here")

    monkeypatch.setattr(eval_run, "run_eval", fake_run)
    spec = LoRAFinetuneSpec.model_validate(
        {"training": {"tracking": {"mlflow": {"trackingUri": "http://m:5000"}}}}
    )
    args = list(eval_step(RunPaths("/data", "style", spec), "http://zthumb:8080").args)
    result = CliRunner().invoke(app, args)
    assert "stop here" in result.output
    assert seen[0].tracking == spec.training.tracking
    refused = CliRunner().invoke(app, [*args[:-1], '{"mlflow": {"trackingUri": "file:/tmp"}}'])
    assert refused.exit_code != 0 and "trackingUri" in refused.output
