"""eval against a small fake ZThumb server (the real one runs in the integration test)."""

from __future__ import annotations

import base64
import io
import json
from http.server import BaseHTTPRequestHandler

import pytest
from PIL import Image
from typer.testing import CliRunner
from zthumb_trainer.cli import app
from zthumb_trainer.eval.config import EvalConfig
from zthumb_trainer.eval.run import EvalError, run_eval
from zthumb_trainer.local.http_serve import StaticServer


def _fake_server(not_ready_for: int = 0, requests: list | None = None, key: str | None = None):
    """``key``: like the real server with ZTHUMB_API_KEY, /models and /generate want it as a bearer
    token (a 401 otherwise); /readyz never does."""
    state = {"readyz": 0}

    class Fake(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _json(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/readyz":
                state["readyz"] += 1
                ready = state["readyz"] > not_ready_for
                self._json(200 if ready else 503, {"ready": ready})
            elif key is not None and self.headers.get("Authorization") != f"Bearer {key}":
                self._json(401, {"error": {"code": "unauthorized"}})
            elif self.path == "/models":
                self._json(200, {"backends": [{"name": "full", "model": "/m/base.safetensors",
                                                "device": "cpu", "dtype": "float32"}]})  # fmt: skip
            else:
                self._json(404, {})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if key is not None and self.headers.get("Authorization") != f"Bearer {key}":
                self._json(401, {"error": {"code": "unauthorized"}})
                return
            if requests is not None:
                requests.append(body)
            shade = int(body["lora_scale"] * 100) + body["seed"]
            image = Image.new("RGB", (body.get("width", 64), body.get("height", 64)), (shade, 50, 50))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            adapter = {"path": body["lora_path"], "scale": body["lora_scale"], "sha256": "ee" * 32,
                       "source": "request"}  # fmt: skip
            self._json(200, {"images": [{"index": 0, "mime_type": "image/png",
                                         "data": base64.b64encode(buffer.getvalue()).decode()}],
                             "format": "png", "seed": body["seed"], "backend": "full", "width": 64,
                             "height": 64, "steps": body["steps"], "guidance_scale": 5.0,
                             "adapter": adapter, "timings": {"total_s": 0.01}})  # fmt: skip

    return Fake


def test_report_pairs_differences_and_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("ZTHUMB_TERMINATION_LOG", str(tmp_path / "termination-log"))
    (tmp_path / "termination-log").write_text("")
    seen: list = []
    train_summary = tmp_path / "outputs" / "lora" / "style" / "summary.json"
    train_summary.parent.mkdir(parents=True)
    training = {"stepsPerSecond": 2.75, "peakMemoryBytes": 3 * 2**30 + 2**29,
                "memoryKind": "CUDAMaxAllocated", "device": "cuda:0"}  # fmt: skip
    train_summary.write_text(json.dumps({"steps": 6, "training": training}))
    with StaticServer(tmp_path, handler=_fake_server(not_ready_for=2, requests=seen)) as server:
        output = tmp_path / "outputs" / "lora_eval" / "style"
        summary = run_eval(
            EvalConfig(server_url=server.url, output=output, run_name="style", lora_path="style",
                       prompts=["a photo of {trigger}", "a tree"], seeds=[0, 1], scales=[0.0, 0.8],
                       trigger_word="zt", steps=4, width=64, height=64, train_summary=train_summary,
                       out_of_distribution_prompts=[])
        )  # fmt: skip
    assert len(seen) == 8
    assert {(r["lora_scale"], r["lora_path"], r["output_format"]) for r in seen} == {
        (0.0, "style", "png"), (0.8, "style", "png")}  # fmt: skip
    assert seen[0]["prompt"] == "a photo of zt" and seen[-1]["prompt"] == "zt, a tree"
    assert summary.requests == 8
    assert summary.mean_pixel_difference == pytest.approx(80 / 3, abs=0.01)
    report = (output / "report.md").read_text()
    assert "![a photo of zt seed 0](pairs/p0-s0.png)" in report
    assert "sha256 `" + "ee" * 32 in report
    with Image.open(output / "pairs" / "p1-s1.png") as pair:
        # Two 64 px images, enlarged 4x to be seen, side by side under a label band.
        assert pair.width == 2 * 256 + 6 and pair.height > 256
    assert json.loads((output / "summary.json").read_text())["pairs"][0]["latency_s"]
    assert json.loads((tmp_path / "termination-log").read_text())["requests"] == 8
    # The train step's numbers: in the report and summary.json, not in evalSummary (the status has
    # them under status.training already).
    assert (
        "- Training on `cuda:0`: 2.75 steps/s (steady state), peak memory 3.50 GiB (CUDAMaxAllocated)"
        in report
    )
    assert json.loads((output / "summary.json").read_text())["training"] == training
    assert "training" not in json.loads((tmp_path / "termination-log").read_text())
    assert not [p for p in output.parent.iterdir() if p.name.startswith(".")]


def test_report_says_when_the_training_numbers_are_missing(tmp_path):
    from zthumb_trainer.train.measure import read_training_block, training_markdown

    assert read_training_block(tmp_path / "absent.json") is None
    (tmp_path / "old.json").write_text('{"steps": 6}')  # a summary from before the training block
    assert read_training_block(tmp_path / "old.json") is None
    assert "no numbers" in training_markdown(None)
    line = training_markdown({"stepsPerSecond": None, "peakMemoryBytes": 700 * 2**20,
                              "memoryKind": "ProcessMaxRSS", "device": "cpu"})  # fmt: skip
    assert "under two steps" in line and "700.00 MiB (ProcessMaxRSS)" in line


def test_never_ready_exits_non_zero_saying_so(tmp_path, monkeypatch):
    monkeypatch.setenv("ZTHUMB_EVAL_READY_TIMEOUT", "1.5")
    with StaticServer(tmp_path, handler=_fake_server(not_ready_for=10**6)) as server:
        result = CliRunner().invoke(
            app,
            ["eval", "--server-url", server.url, "--run-name", "s", "--output", str(tmp_path / "out"),
             "--lora-path", "s", "--trigger-word", "zt", "--steps", "2", "--prompt", "x", "--seed", "0",
                 "--no-out-of-distribution-prompts"],
        )  # fmt: skip
    assert result.exit_code == 1
    assert "not ready after" in result.output and "HTTP 503" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("given", "exit_code", "says"),
    [
        ("k3y", 0, "report:"),
        (None, 1, "HTTP 401: the server wants an API key and ZTHUMB_API_KEY is not set"),
        ("wrong", 1, "HTTP 401: the server refused the API key in ZTHUMB_API_KEY"),
    ],
    ids=["the-key", "no-key", "a-wrong-key"],
)
def test_eval_sends_the_key_of_its_env_as_a_bearer_token(tmp_path, monkeypatch, given, exit_code, says):
    monkeypatch.setenv("ZTHUMB_TERMINATION_LOG", str(tmp_path / "termination-log"))
    if given is None:
        monkeypatch.delenv("ZTHUMB_API_KEY", raising=False)
    else:
        monkeypatch.setenv("ZTHUMB_API_KEY", given)
    seen: list = []
    with StaticServer(tmp_path, handler=_fake_server(requests=seen, key="k3y")) as server:
        result = CliRunner().invoke(
            app,
            ["eval", "--server-url", server.url, "--output", str(tmp_path / "out"), "--run-name", "s",
             "--lora-path", "s", "--trigger-word", "zt", "--steps", "2", "--prompt", "x", "--seed", "0",
                 "--no-out-of-distribution-prompts"],
        )  # fmt: skip
    assert result.exit_code == exit_code, result.output
    assert says in result.output
    assert not given or given not in result.output  # never echoed
    assert len(seen) == (2 if given == "k3y" else 0)  # one request per scale, all authorized


def test_unreachable_server_is_an_eval_error(tmp_path):
    with pytest.raises(EvalError, match="ConnectError"):
        run_eval(EvalConfig(server_url="http://127.0.0.1:9", output=tmp_path / "o", run_name="s",
                            lora_path="s", prompts=["x"], seeds=[0], scales=[0.0, 0.8],
                            ready_timeout=0.5))  # fmt: skip


def test_report_shows_the_validation_samples_in_step_order(tmp_path, monkeypatch):
    """The train step's grids (<run-dir>/samples/, beside its summary.json) go into the report."""
    monkeypatch.setenv("ZTHUMB_TERMINATION_LOG", str(tmp_path / "termination-log"))
    run_dir = tmp_path / "outputs" / "lora" / "style"
    (run_dir / "samples").mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"steps": 6}))
    passes = [{"step": step, "image": f"step-{step}.png", "prompts": ["zt"], "seeds": [0], "seconds": seconds}
              for step, seconds in ((6, 2.0), (3, 1.0))]  # fmt: skip
    for entry in passes:
        Image.new("RGB", (64, 64)).save(run_dir / "samples" / entry["image"])
    (run_dir / "samples" / "samples.json").write_text(json.dumps({"passes": passes}))
    with StaticServer(tmp_path, handler=_fake_server()) as server:
        output = tmp_path / "outputs" / "lora_eval" / "style"
        summary = run_eval(
            EvalConfig(server_url=server.url, output=output, run_name="style", lora_path="style",
                       prompts=["x"], seeds=[0], scales=[0.0, 0.8], steps=2,
                       train_summary=run_dir / "summary.json")
        )  # fmt: skip
    assert summary.validation["passes"] == 2 and summary.validation["secondsPerPass"] == 1.5
    report = (output / "report.md").read_text()
    assert "## Validation samples during training" in report
    assert report.index("![step 3](samples/step-3.png)") < report.index("![step 6](samples/step-6.png)")
    assert "### Step 3 (1.0 s)" in report
    assert (output / "samples" / "step-3.png").exists() and (output / "samples" / "step-6.png").exists()


@pytest.mark.parametrize(("threshold", "passed"), [(100.0, False), (10.0, True)])
def test_the_report_and_summary_carry_the_gate_verdict(tmp_path, monkeypatch, threshold, passed):
    monkeypatch.setenv("ZTHUMB_TERMINATION_LOG", str(tmp_path / "termination-log"))
    output = tmp_path / "eval"
    with StaticServer(tmp_path, handler=_fake_server()) as server:
        summary = run_eval(
            EvalConfig(server_url=server.url, output=output, run_name="style", lora_path="style",
                       prompts=["a tree"], seeds=[0], scales=[0.0, 0.8], steps=2,
                       gate={"minMeanPixelDifference": threshold})
        )  # fmt: skip
    gate = json.loads((output / "summary.json").read_text())["gate"]
    assert gate == summary.gate
    assert gate["passed"] is passed
    # 80 levels on one channel of three: 26.667
    assert gate["checks"] == [{"metric": "meanPixelDifference", "kind": "min", "threshold": threshold,
                               "value": 26.667, "passed": passed}]  # fmt: skip
    report = (output / "report.md").read_text()
    title, _, verdict = report.split("\n")[:3]
    assert title == "# LoRA evaluation: style"
    expected = "**Quality gate passed**" if passed else "**Quality gate failed** (EvalGateFailed)"
    assert verdict.startswith(expected)
    assert f"| meanPixelDifference | min {threshold:g} | 26.67 | {'pass' if passed else 'FAIL'} |" in report


def test_no_gate_no_verdict(tmp_path, monkeypatch):
    monkeypatch.setenv("ZTHUMB_TERMINATION_LOG", str(tmp_path / "termination-log"))
    with StaticServer(tmp_path, handler=_fake_server()) as server:
        summary = run_eval(
            EvalConfig(server_url=server.url, output=tmp_path / "eval", run_name="style", lora_path="style",
                       prompts=["a tree"], seeds=[0], scales=[0.0, 0.8], steps=2)
        )  # fmt: skip
    assert summary.gate is None
    assert "Quality gate" not in (tmp_path / "eval" / "report.md").read_text()


def _clip_config(tmp_path, clip_server, clip_files, sha256=None, **overrides):
    from zthumb_trainer.dataset.prepare import prepare_dataset

    _root, clip, digest = clip_files
    run_dir = tmp_path / "outputs" / "lora" / "style"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text("{}")
    from zthumb_trainer.tiny.synthetic_dataset import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "dataset", count=6)
    prepare_dataset(tmp_path / "dataset", run_dir, resolution=64, trigger_word="zt")
    clip_spec = {
        "url": f"{clip_server.url}/{clip.weights.name}",
        "sha256": sha256 or digest,
        "configUrl": f"{clip_server.url}/{clip.config_dir.name}/",
        "maxTrainingImages": 4,
    }
    return dict(
        output=tmp_path / "eval", run_name="style", lora_path="style", prompts=["a tree"], seeds=[0, 1],
        out_of_distribution_prompts=[],
        scales=[0.0], served_scale=0.8, steps=2, clip=clip_spec, train_summary=run_dir / "summary.json",
        clip_model=tmp_path / "models" / "clip.safetensors", clip_config=tmp_path / "models" / "clip-config",
    ) | overrides  # fmt: skip


def test_clip_metrics_reach_the_summary_the_report_and_the_termination_message(
    tmp_path, monkeypatch, clip_files
):
    monkeypatch.setenv("ZTHUMB_TERMINATION_LOG", str(tmp_path / "termination-log"))
    (tmp_path / "termination-log").write_text("")
    with StaticServer(clip_files[0]) as clip_server, StaticServer(tmp_path, handler=_fake_server()) as server:
        config = _clip_config(tmp_path, clip_server, clip_files, gate={"minClipIGain": -2})
        summary = run_eval(EvalConfig(server_url=server.url, **config))
    assert summary.scales == [0.0, 0.8]  # the served scale was added
    clip = summary.clip
    assert clip is not None
    assert clip.training_images == 4 and clip.reference_scale == 0.0
    assert set(clip.by_scale) == {"0", "0.8"}
    by = clip.by_scale
    assert clip.clip_i_gain == pytest.approx(by["0.8"]["clip_i"] - by["0"]["clip_i"], abs=2e-4)
    assert clip.clip_t_drop == pytest.approx(by["0"]["clip_t"] - by["0.8"]["clip_t"], abs=2e-4)
    assert set(summary.pairs[0].clip_t or {}) == {"0", "0.8"} and set(summary.pairs[0].clip_i or {}) == {
        "0",
        "0.8",
    }
    compact = json.loads((tmp_path / "termination-log").read_text())
    assert compact["clipIGain"] == clip.clip_i_gain and compact["servedScale"] == 0.8
    assert summary.gate is not None
    assert summary.gate["checks"][0] == {"metric": "clipIGain", "kind": "min", "threshold": -2.0,
                                         "value": clip.clip_i_gain, "passed": True}  # fmt: skip
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Quality metrics (CLIP)" in report and f"| 0.8 | {by['0.8']['clip_t']:.4f} |" in report
    # Verified once: a second eval neither downloads nor re-hashes the CLIP weights.
    assert (tmp_path / "models" / "clip.safetensors.verified").exists()


def test_a_clip_whose_sha256_differs_fails_the_eval_naming_the_field(tmp_path, clip_files):
    with StaticServer(clip_files[0]) as clip_server, StaticServer(tmp_path, handler=_fake_server()) as server:
        config = _clip_config(tmp_path, clip_server, clip_files, sha256="0" * 64)
        with pytest.raises(EvalError, match=r"(?s)sha256 mismatch.*spec\.eval\.clip\.sha256"):
            run_eval(EvalConfig(server_url=server.url, **config))
    assert not (tmp_path / "models" / "clip.safetensors").exists()
