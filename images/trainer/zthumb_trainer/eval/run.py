"""eval: ask a running ZThumb server for the same seeds with and without the adapter, and report.

For every prompt × seed of both prompt groups (``spec.eval.prompts``, in-distribution, and
``spec.eval.outOfDistributionPrompts``: ``prompt_groups.py``) it requests one image per LoRA scale
(default 0 and 0.8), then writes ``<output>/`` (published atomically, like the adapter):

* ``pairs/p<i>-s<seed>.png`` (``pairs/ood-p<i>-s<seed>.png`` out of distribution): the images side
  by side, each labelled with its scale;
* ``report.md``: the pairs, the mean absolute pixel difference against scale 0 for
  each, the latency of each request, adapter + base model info, and the train step's
  steps/s and peak memory (from its ``summary.json``, when given), and the validation samples
  the train step rendered (``spec.training.validation``: the grids of ``<run-dir>/samples/``, the
  run dir being the summary's directory), copied to ``samples/`` and shown in step order;
* ``leakage/l<i>-s<seed>.png``: each ``spec.eval.leakagePrompts`` prompt at scale 0 and at the
  served scale (``leakage.py``; with CLIP only, which measures it);
* ``curves/``: the loss (raw and smoothed) and the learning rate over the steps, from the train
  step's ``progress.jsonl`` beside its summary, and the validation grids as one strip (``curves.py``);
  ``scales.png``, every per-scale metric of every group against the scale (``scale_sweep.py``, which
  also recommends a scale);
* ``summary.json``: the same numbers for machines (``zthumb_contract.eval_report.EvalReport``); its
  compact ``EvalSummary`` goes to the termination message for the operator.

With ``spec.training.tracking.mlflow``, the report also goes to the train step's MLflow run
(``tracking_report.py``), never failing the eval.
"""

from __future__ import annotations

import base64
import io
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from zthumb_contract import env
from zthumb_contract.eval_report import EvalReport
from zthumb_contract.gate import evaluate_gate
from zthumb_contract.scale_sweep import IN_DISTRIBUTION

from zthumb_trainer.atomic import publish_directory, staging_directory
from zthumb_trainer.dataset.captioning import read_captioning_stats
from zthumb_trainer.dataset.prepare import dataset_dir
from zthumb_trainer.eval.config import EvalConfig, Sample
from zthumb_trainer.eval.curves import write_curves
from zthumb_trainer.eval.leakage import leakage_requests, save_leakage_pairs
from zthumb_trainer.eval.prompt_groups import prompt_requests, score_pixel_differences, write_pairs
from zthumb_trainer.eval.report import render_markdown
from zthumb_trainer.eval.scale_sweep import sweep_block
from zthumb_trainer.eval.scorers import ScorerError, Scores, load_scorers, score
from zthumb_trainer.eval.tracking_report import log_report
from zthumb_trainer.reporting import PROGRESS_LOG, write_termination_message
from zthumb_trainer.train.measure import read_training_block
from zthumb_trainer.train.validation import SAMPLES_DIR, read_index, summary_block


class EvalError(Exception):
    """The evaluation could not run; the message says why."""


def wait_until_ready(
    client: httpx.Client, timeout: float, first_delay: float = 0.5, max_delay: float = 10.0
) -> None:
    """Poll ``GET /readyz`` with exponential backoff until 200 or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    delay = first_delay
    last = "no answer"
    while True:
        try:
            response = client.get("/readyz", timeout=10.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as error:
            last = f"{type(error).__name__}: {error}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise EvalError(f"server {client.base_url} not ready after {timeout:.0f}s (last: {last})")
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, max_delay)


def _decode_image(payload: dict[str, Any]) -> Any:
    from PIL import Image

    images = payload.get("images") or []
    if not images:
        raise EvalError("the server answered without images")
    first = images[0]
    data = first["data"] if isinstance(first, dict) else first
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def unauthorized_reason(config: EvalConfig) -> str:
    """Why the server said 401, in terms of what the eval step was given."""
    if config.api_key:
        return f"the server refused the API key in {env.API_KEY}: it is not the server's key"
    return (
        f"the server wants an API key and {env.API_KEY} is not set (in a cluster the operator "
        "passes the server's own Secret reference to the eval Job)"
    )


def generate(
    client: httpx.Client, config: EvalConfig, prompt: str, seed: int, scale: float
) -> tuple[Any, float, dict[str, Any]]:
    body: dict[str, Any] = {
        "prompt": prompt,
        "seed": seed,
        "steps": config.steps,
        "num_images": 1,
        "lora_path": config.lora_path,
        "lora_scale": scale,
        "response_format": "json",
        "output_format": "png",
    }
    optional = {
        "width": config.width,
        "height": config.height,
        "guidance_scale": config.guidance_scale,
        "negative_prompt": config.negative_prompt,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    started = time.monotonic()
    response = client.post("/generate", json=body, timeout=config.request_timeout)
    latency = time.monotonic() - started
    if response.status_code == 401:
        raise EvalError(f"POST /generate failed with HTTP 401: {unauthorized_reason(config)}")
    if response.status_code != 200:
        raise EvalError(f"POST /generate failed with HTTP {response.status_code}: {response.text[:500]}")
    payload = response.json()
    return _decode_image(payload), latency, payload


def run_eval(config: EvalConfig) -> EvalReport:
    if config.served_scale is not None and config.served_scale not in config.scales:
        config = config.model_copy(update={"scales": [*config.scales, config.served_scale]})
    try:
        scorers = load_scorers(config)  # before the server: a bad model spec fails in seconds
    except ScorerError as error:
        raise EvalError(str(error)) from error
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    started = time.monotonic()
    with httpx.Client(base_url=config.server_url.rstrip("/"), headers=headers) as client:
        print(f"waiting for {config.server_url}/readyz (up to {config.ready_timeout:.0f}s)", file=sys.stderr)
        wait_until_ready(client, config.ready_timeout)
        models = _get_json(client, "/models")
        samples: list[Sample] = []
        for group, prompt_index, prompt in prompt_requests(config):  # same seeds and scales per group
            for seed in config.seeds:
                for scale in config.scales:
                    samples.append(_sample(client, config, (prompt_index, prompt, seed, scale), group=group))
        # Leakage prompts go out as written: no trigger word is added.
        requests = leakage_requests(config) if scorers.clip is not None else []
        unasked = [_sample(client, config, request, label="leakage ") for request in requests]
    try:
        scores = score(config, scorers, samples, unasked)
    except ScorerError as error:
        raise EvalError(str(error)) from error
    seconds = time.monotonic() - started
    report = write_report(config, samples, models, seconds, scores=scores, leakage_samples=unasked)
    write_termination_message(report.summary().status())
    return report


def _sample(
    client: httpx.Client, config: EvalConfig, request: tuple[int, str, int, float], label: str = "",
    group: str = IN_DISTRIBUTION,
) -> Sample:  # fmt: skip
    """One image: ``request`` is (prompt index, prompt, seed, scale)."""
    prompt_index, prompt, seed, scale = request
    image, latency, payload = generate(client, config, prompt, seed, scale)
    label = label or ("" if group == IN_DISTRIBUTION else "out-of-distribution ")
    print(f"{label}prompt {prompt_index} seed {seed} scale {scale}: {latency:.2f}s", file=sys.stderr)
    payload.pop("images", None)
    return Sample(prompt_index, prompt, seed, scale, image, latency, payload, group=group)


def _get_json(client: httpx.Client, path: str) -> dict[str, Any]:
    try:
        response = client.get(path, timeout=30.0)
        return response.json() if response.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}


def write_report(
    config: EvalConfig,
    samples: list[Sample],
    models: dict[str, Any],
    seconds: float,
    *,
    scores: Scores | None = None,
    leakage_samples: list[Sample] | None = None,
) -> EvalReport:
    scores = scores or Scores()
    staging = staging_directory(config.output, "tmp")
    reference_scale = config.scales[0]
    score_pixel_differences(samples)
    pairs, adapter = write_pairs(samples, staging)
    latencies = [s.latency_s for s in samples]
    # The gate's pixel difference, as CLIP's numbers: of the in-distribution prompts (spec.eval.prompts).
    all_diffs = [
        value for p in pairs if p["group"] == IN_DISTRIBUTION for value in p["mean_pixel_difference"].values()
    ]
    first_response = samples[0].response if samples else {}
    summary: dict[str, Any] = {
        "run_name": config.run_name,
        "server_url": config.server_url,
        "lora_path": config.lora_path,
        "reference_scale": reference_scale,
        "scales": config.scales,
        "served_scale": config.served_scale,
        "requests": len(samples),
        "mean_pixel_difference": round(sum(all_diffs) / len(all_diffs), 3) if all_diffs else None,
        "min_pixel_difference": round(min(all_diffs), 3) if all_diffs else None,
        "mean_latency_s": round(sum(latencies) / len(latencies), 3) if latencies else None,
        "seconds": round(seconds, 2),
        "adapter": adapter,
        "backend": first_response.get("backend"),
        "image_size": [first_response.get("width"), first_response.get("height")],
        "steps": first_response.get("steps", config.steps),
        "base_model": _base_model_info(models, first_response.get("backend")),
        "training": read_training_block(config.train_summary),
        # The prepared dataset beside the train summary: its generated captions, if a model wrote any.
        "captioning": read_captioning_stats(dataset_dir(config.train_summary.parent))
        if config.train_summary
        else None,
        "clip": scores.clip,
        "leakage": scores.leakage,
        "dino": scores.dino,
        "aesthetic": scores.aesthetic,
        "pairs": pairs,
        "validation": (validation := copy_validation_samples(config.train_summary, staging)),
        "curves": write_curves(
            config.train_summary.parent / PROGRESS_LOG if config.train_summary else None,
            [(s["step"], staging / s["image"]) for s in (validation or {}).get("samples", [])],
            staging,
        ),
        "sweep": sweep_block(config, samples, staging, scores.leakage_by_scale),
    }
    if scores.leakage is not None and leakage_samples:
        save_leakage_pairs(leakage_samples, staging, scores.leakage.scale)
    # Through the model: a value it refuses (NaN) is dropped on its own, not written.
    report = EvalReport.from_report(summary) or EvalReport()
    verdict = evaluate_gate(config.gate, report.summary())
    if verdict is not None:
        report.gate = verdict.status()
    (staging / "summary.json").write_text(report.to_json())
    (staging / "report.md").write_text(render_markdown(report))
    if config.tracking.mlflow is not None and config.train_summary is not None:
        report.tracking = log_report(config.tracking.mlflow, config.train_summary.parent, staging, report)
        (staging / "summary.json").write_text(report.to_json())  # with the upload's outcome
    publish_directory(staging, config.output)
    return report


def copy_validation_samples(train_summary: Path | None, staging: Path) -> dict[str, Any] | None:
    """The train step's validation grids (beside its summary.json) copied into the report, in step
    order, with each pass's seconds; None when there are none."""
    if train_summary is None:
        return None
    run_dir = train_summary.parent
    passes = [entry for entry in read_index(run_dir) if (run_dir / SAMPLES_DIR / entry["image"]).exists()]
    if not passes:
        return None
    (staging / SAMPLES_DIR).mkdir(exist_ok=True)
    for entry in passes:
        shutil.copyfile(run_dir / SAMPLES_DIR / entry["image"], staging / SAMPLES_DIR / entry["image"])
    return {
        **summary_block(passes),
        "samples": [
            {"step": entry["step"], "image": f"{SAMPLES_DIR}/{entry['image']}", "seconds": entry["seconds"]}
            for entry in passes
        ],
    }


def _base_model_info(models: dict[str, Any], backend: str | None) -> dict[str, Any] | None:
    for info in models.get("backends", []):
        if info.get("name") == backend:
            return {key: info.get(key) for key in ("name", "model", "device", "dtype")}
    return None
