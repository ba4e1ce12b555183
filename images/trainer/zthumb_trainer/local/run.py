"""``zthumb-train run --local``: the whole pipeline on one machine, with the operator's step definitions.

The stages of ``zthumb_contract.stages`` run in order; each Job stage runs as a process
with exactly the argv and env ``build_steps`` gives the operator's Jobs (the data root is
the work directory instead of the volume's mount path). What the cluster provides is
played locally:

* the base model is served over HTTP from 127.0.0.1, so fetch-model really downloads
  and verifies it (the tiny model, unless a YAML without ``--tiny`` names a real one);
* "deploy" starts ``zthumb serve`` on 127.0.0.1 with ``steps.deploy_env`` (what the
  operator patches into the Deployment) and waits for it to become ready;
* eval then calls that server, as the eval Job calls the in-cluster Service, with the API key
  this run made for it (``env.API_KEY``, as the chart's generated key: the server listens on
  127.0.0.1, where every local user could otherwise reach it); no other step gets the key.

Without a YAML it runs the embedded default: the tiny model, a synthetic dataset, a
few dozen steps at 256 px with 64 px validation samples midway and at the end, and a 64 px
evaluation (one prompt in each group, three scales), in a couple of minutes on a laptop CPU.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zthumb_contract import env as env_names
from zthumb_contract.eval_report import EvalReport
from zthumb_contract.gate import GATE_FAILED_REASON, evaluate_gate
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.stages import Runner, Success, active_stages, build_steps
from zthumb_contract.steps import RunPaths, StepDefinition, deploy_env

from zthumb_trainer.tiny.tiny_clip import CONFIG_DIR_NAME as TINY_CLIP_CONFIG
from zthumb_trainer.tiny.tiny_clip import HEAD_NAME as TINY_HEAD_NAME
from zthumb_trainer.tiny.tiny_clip import PROJECTION_DIM as TINY_CLIP_WIDTH
from zthumb_trainer.tiny.tiny_clip import WEIGHTS_NAME as TINY_CLIP_WEIGHTS
from zthumb_trainer.tiny.tiny_dino import CONFIG_DIR_NAME as TINY_DINO_CONFIG
from zthumb_trainer.tiny.tiny_dino import WEIGHTS_NAME as TINY_DINO_WEIGHTS

DEFAULT_RUN_NAME = "demo"
TINY_MAX_RESOLUTION = 256
TINY_MAX_EVAL_SIZE = 128
TINY_MAX_EVAL_STEPS = 8
SERVER_READY_TIMEOUT = 180.0

# The embedded default: small enough for a 2-core CPU, big enough that the LoRA visibly
# changes the tiny model's output.
EMBEDDED_DEFAULT: dict[str, Any] = {
    "dataset": {"path": "datasets/demo", "triggerWord": "zthumb", "resolution": 256},
    "training": {
        "rank": 8,
        "alpha": 8,
        "learningRate": 1e-3,
        "maxTrainSteps": 30,
        "mixedPrecision": "no",
        "gradientCheckpointing": False,
        "checkpointingSteps": 10,
        "checkpointsTotalLimit": 2,
        # Validation samples midway and at the end: <workdir>/outputs/lora/demo/samples/, in the report.
        "validation": {
            "prompts": ["a photo of {trigger}"],
            "seeds": [0],
            "everyNSteps": 15,
            "steps": 4,
            "width": 64,
            "height": 64,
        },
    },
    "resources": {"gpus": 0},
    "eval": {
        "prompts": ["a photo of {trigger}"],
        "outOfDistributionPrompts": ["a watercolor painting of {trigger}"],
        # Three scales: the report's chart of every metric against the scale has a middle point.
        "scales": [0.0, 0.4, 0.8],
        "seeds": [0, 1],
        "steps": 4,
        "width": 64,
        "height": 64,
        # DINO with the tiny DINOv2 the runner serves (and the aesthetic head: with_tiny_model turns
        # it on for the demo, which has no weights to name here).
        "dino": {"enabled": True},
        # A quality gate the demo passes (its adapter moves pixels by about 13 of 255): the verdict
        # tops the report; the run fails with EvalGateFailed where it does not.
        "gate": {"minMeanPixelDifference": 2.0},
    },
}


class LocalRunError(Exception):
    """A step failed; the message names it and where its output is."""


@dataclass
class LocalRunResult:
    run_name: str
    adapter_dir: Path
    report: Path
    logs: Path  # the train step's TensorBoard event files
    seconds: float
    step_seconds: dict[str, float]


def load_finetune(path: Path | None) -> tuple[str, LoRAFinetuneSpec]:
    if path is None:
        return DEFAULT_RUN_NAME, LoRAFinetuneSpec.model_validate(EMBEDDED_DEFAULT)
    import yaml

    manifest = yaml.safe_load(path.read_text())
    if not isinstance(manifest, dict) or manifest.get("kind") != "LoRAFinetune":
        raise LocalRunError(f"{path}: not a LoRAFinetune manifest")
    name = str((manifest.get("metadata") or {}).get("name") or DEFAULT_RUN_NAME)
    return name, LoRAFinetuneSpec.from_manifest(manifest)


@dataclass(frozen=True)
class TinyScorers:
    """The SHA256 of the tiny scoring models the runner serves beside the tiny base model."""

    clip: str
    dino: str
    aesthetic: str
    aesthetic_on: bool = False  # the embedded demo: turn the aesthetic head on (it has no default)


def with_tiny_model(
    spec: LoRAFinetuneSpec, model_url: str, sha256: str, scorers: TinyScorers | None = None
) -> LoRAFinetuneSpec:
    """The spec with the tiny base model (and the tiny scoring models of ``scorers``, served beside
    it, in place of those the spec enables) and sizes a CPU can train in minutes."""
    data = spec.model_dump(by_alias=True)
    evaluation = data["eval"]
    if scorers is not None and evaluation["clip"]["enabled"]:
        evaluation["clip"].update(
            url=f"{model_url}/{TINY_CLIP_WEIGHTS}", sha256=scorers.clip, path=f"models/{TINY_CLIP_WEIGHTS}",
            configUrl=f"{model_url}/{TINY_CLIP_CONFIG}/", configPath=f"models/{TINY_CLIP_CONFIG}",
        )  # fmt: skip
    if scorers is not None and evaluation["dino"]["enabled"]:
        evaluation["dino"].update(
            url=f"{model_url}/{TINY_DINO_WEIGHTS}", sha256=scorers.dino, path=f"models/{TINY_DINO_WEIGHTS}",
            configUrl=f"{model_url}/{TINY_DINO_CONFIG}/", configPath=f"models/{TINY_DINO_CONFIG}",
        )  # fmt: skip
    aesthetic_on = scorers is not None and (scorers.aesthetic_on or evaluation["aesthetic"]["enabled"])
    if scorers is not None and aesthetic_on and evaluation["clip"]["enabled"]:
        evaluation["aesthetic"].update(
            enabled=True, url=f"{model_url}/{TINY_HEAD_NAME}", sha256=scorers.aesthetic,
            path=f"models/{TINY_HEAD_NAME}",
        )  # fmt: skip
    data["baseModel"] = {
        "url": f"{model_url}/tiny_sdxl.safetensors",
        "sha256": sha256,
        "path": "models/tiny_sdxl.safetensors",
        "configUrl": f"{model_url}/diffusers/",
        "configPath": "models/tiny_sdxl-config",
    }
    data["dataset"]["resolution"] = min(data["dataset"]["resolution"], TINY_MAX_RESOLUTION)
    data["training"]["mixedPrecision"] = "no"
    data["resources"]["gpus"] = 0
    evaluation["steps"] = min(evaluation["steps"], TINY_MAX_EVAL_STEPS)
    for side in ("width", "height"):
        evaluation[side] = min(evaluation[side] or TINY_MAX_EVAL_SIZE, TINY_MAX_EVAL_SIZE)
    validation = data["training"]["validation"]
    if validation["prompts"]:  # off stays the default (and out of the argv)
        validation["steps"] = min(validation["steps"], TINY_MAX_EVAL_STEPS)
        for side in ("width", "height"):
            validation[side] = min(validation[side] or TINY_MAX_EVAL_SIZE, TINY_MAX_EVAL_SIZE)
    return LoRAFinetuneSpec.model_validate(data)


def trainer_executable(command: tuple[str, ...]) -> list[str]:
    """The step's command resolved to the installed console script next to this interpreter."""
    name, *rest = command
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise LocalRunError(f"{name} not found next to {sys.executable} or on PATH (pip install -e .)")
    return [found, *rest]


def step_env(step: StepDefinition, api_key: str | None = None) -> dict[str, str]:
    """The process env of a step: this shell's, the step's, and ``api_key`` (the local server's
    key) for a step that calls the server; no other step sees a key, not even this shell's."""
    env = dict(os.environ)
    env.pop(env_names.API_KEY, None)
    env.update(step.env)
    if api_key is not None:
        env[env_names.API_KEY] = api_key
    for name in step.secret_env:
        # In a cluster these come from a Secret; locally from this shell, if set.
        if name not in env:
            print(f"note: {name} is not set; gated downloads will be refused", file=sys.stderr)
    return env


def run_step(step: StepDefinition, env: dict[str, str]) -> float:
    argv = trainer_executable(step.command) + list(step.args)
    print(f"\n==> {step.name}: {' '.join(step.argv)}", file=sys.stderr, flush=True)
    started = time.monotonic()
    completed = subprocess.run(argv, env=env, check=False)
    seconds = time.monotonic() - started
    if completed.returncode != 0:
        raise LocalRunError(f"step {step.name} failed with exit code {completed.returncode}")
    print(f"<== {step.name} done in {seconds:.1f}s", file=sys.stderr, flush=True)
    return seconds


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_env(paths: RunPaths, port: int, api_key: str) -> dict[str, str]:
    """ZThumb server settings for this run: the base model, the LoRA root, deploy_env's adapter,
    the run's API key."""
    env = {
        "ZTHUMB_BACKEND": "full",
        "ZTHUMB_MODEL_PATH": paths.base_model,
        "ZTHUMB_MODEL_CONFIG": paths.base_model_config,
        "ZTHUMB_LORA_ROOT": paths.lora_root,
        "ZTHUMB_HOST": "127.0.0.1",
        "ZTHUMB_PORT": str(port),
        "ZTHUMB_DEVICE": "cpu",
        "ZTHUMB_DTYPE": "float32",
        "HF_HUB_OFFLINE": "1",
        env_names.REPORTS_DIR: str(Path(paths.eval_dir).parent),
        env_names.API_KEY: api_key,
    }
    env.update(deploy_env(paths))
    return env


class LocalServer:
    """``zthumb serve`` as a child process, stopped (by its pid) when the run ends."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = trainer_executable(("zthumb", "serve"))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        print(f"\n==> deploy: {' '.join(command)} (log: {self.log_path})", file=sys.stderr, flush=True)
        self.process = subprocess.Popen(command, env={**os.environ, **self.env}, stdout=log, stderr=log)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def wait_ready(self, url: str, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise LocalRunError(f"the ZThumb server exited with {self.process.returncode}:\n{tail}")
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise LocalRunError(f"the ZThumb server was not ready after {timeout:.0f}s (log: {self.log_path})")


def start_server(server: LocalServer, url: str) -> float:
    """The local deploy stage: start the server with the deploy env and wait until it is ready."""
    started = time.monotonic()
    server.start()
    server.wait_ready(url, SERVER_READY_TIMEOUT)
    seconds = time.monotonic() - started
    print(f"<== deploy: server ready in {seconds:.1f}s", file=sys.stderr)
    return seconds


def check_gate(spec: LoRAFinetuneSpec, summary_path: Path) -> None:
    """spec.eval.gate on the eval step's numbers, as the operator judges them (there it also rolls
    the Deployment back; here the local server stops with the run anyway)."""
    evaluation = EvalReport.from_report(json.loads(summary_path.read_text())) or EvalReport()
    verdict = evaluate_gate(spec.eval.gate, evaluation.summary())
    if verdict is not None and not verdict.passed:
        report = summary_path.with_name("report.md")
        raise LocalRunError(f"{GATE_FAILED_REASON}: eval gate {verdict.message} (report: {report})")
    if verdict is not None:
        print(f"eval gate {verdict.message}", file=sys.stderr)


def run_local(finetune: Path | None, workdir: Path, tiny: bool = True) -> LocalRunResult:
    from zthumb_trainer.eval.aesthetic import save_random_head
    from zthumb_trainer.fetch.verified import sha256_of
    from zthumb_trainer.local.http_serve import StaticServer
    from zthumb_trainer.tiny.synthetic_dataset import write_synthetic_dataset
    from zthumb_trainer.tiny.tiny_clip import build_tiny_clip
    from zthumb_trainer.tiny.tiny_dino import build_tiny_dino
    from zthumb_trainer.tiny.tiny_model import build_tiny_model

    started = time.monotonic()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    run_name, spec = load_finetune(finetune)
    if spec.resources.nodes > 1:
        # One machine is one node: the local runner does not pretend to be several (the unit test
        # tests/unit/trainer/train/test_two_nodes.py runs two torchrun nodes on localhost instead).
        raise LocalRunError(
            f"spec.resources.nodes is {spec.resources.nodes}: the local runner runs on one node; "
            "set nodes: 1 here (multi-node training runs in a cluster, as an Indexed Job)"
        )
    timings: dict[str, float] = {}

    tiny_root = workdir / "tiny-model"
    model = build_tiny_model(tiny_root) if tiny else None
    with StaticServer(tiny_root if model else workdir) as model_server:
        if model:
            clip, dino = build_tiny_clip(tiny_root), build_tiny_dino(tiny_root)
            head = save_random_head(tiny_root / TINY_HEAD_NAME, TINY_CLIP_WIDTH)
            digests = TinyScorers(
                sha256_of(clip.weights), sha256_of(dino.weights), sha256_of(head),
                aesthetic_on=finetune is None,  # the demo; a YAML turns it on itself
            )  # fmt: skip
            spec = with_tiny_model(spec, model_server.url, sha256_of(model.single_file), digests)
        paths = RunPaths(data_root=str(workdir), run_name=run_name, spec=spec)
        dataset = Path(paths.dataset)
        if not dataset.exists() and not spec.dataset.source.remote:  # a remote one: prepare fetches it
            if not tiny:
                raise LocalRunError(f"dataset {dataset} not found (spec.dataset.path under {workdir})")
            write_synthetic_dataset(dataset, count=8, size=(spec.dataset.resolution,) * 2)

        port = free_port()
        server_url = f"http://127.0.0.1:{port}"
        steps = {step.name: step for step in build_steps(run_name, spec, str(workdir), server_url)}
        stages = active_stages(spec)
        log_dir = workdir / "logs"
        api_key = secrets.token_urlsafe(32)  # the local server's, for this run only
        server: LocalServer | None = None
        try:
            for index, stage in enumerate(stages):
                if stage.runner is Runner.DEPLOY:
                    # Only the stages after deploy (eval) need the server.
                    if index + 1 < len(stages):
                        server = LocalServer(server_env(paths, port, api_key), log_dir / "zthumb-server.log")
                        timings[stage.name] = start_server(server, server_url)
                    continue
                step = steps[stage.name]
                timings[stage.name] = run_step(step, step_env(step, api_key if stage.calls_server else None))
                if stage.success is Success.REPORT:
                    check_gate(spec, Path(paths.eval_dir) / "summary.json")
        finally:
            if server is not None:
                server.stop()

    return LocalRunResult(
        run_name=run_name,
        adapter_dir=Path(paths.adapter_dir),
        report=Path(paths.report),
        logs=Path(paths.logs_dir),
        seconds=time.monotonic() - started,
        step_seconds=timings,
    )
