"""Unit tests without a pipeline: settings, LoRA confinement and fingerprints, worker, logs, CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading

import pytest

# --- settings ------------------------------------------------------------------------------


def test_settings_env_names(monkeypatch):
    from zthumb.settings import Settings

    monkeypatch.setenv("ZTHUMB_BACKEND", "gguf")
    monkeypatch.setenv("ZTHUMB_ENABLED_BACKENDS", "full, turbo")
    monkeypatch.setenv("ZTHUMB_MODEL_PATH", "/models/sd_xl_base_1.0.safetensors")
    monkeypatch.setenv("ZTHUMB_MODEL_CONFIG", "/models/config")
    monkeypatch.setenv("ZTHUMB_LORA_PATH", "from-alias")
    monkeypatch.setenv("ZTHUMB_LORA_SCALE", "0.5")
    monkeypatch.setenv("ZTHUMB_API_KEY", "k")
    monkeypatch.setenv("ZTHUMB_PORT", "9000")
    settings = Settings()
    assert settings.backend == "gguf"
    assert settings.backends == ["gguf", "full", "turbo"]
    assert str(settings.model_config_dir) == "/models/config"
    assert (settings.lora_path, settings.lora_scale) == ("from-alias", 0.5)
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "k"
    assert "k" not in repr(settings.api_key)
    assert settings.port == 9000
    monkeypatch.setenv("Z_LORA_PATH", "from-z")
    monkeypatch.setenv("Z_LORA_SCALE", "0.8")
    assert (Settings().lora_path, Settings().lora_scale) == ("from-z", 0.8)


def test_settings_defaults_and_errors(monkeypatch):
    from pydantic import ValidationError
    from zthumb.settings import Settings

    settings = Settings()
    assert (settings.host, settings.port, str(settings.lora_root)) == ("0.0.0.0", 8080, "/models/lora")
    assert settings.backends == ["full"]
    monkeypatch.setenv("ZTHUMB_ENABLED_BACKENDS", "full,bogus")
    with pytest.raises(ValidationError, match="bogus"):
        Settings()


# --- LoRA files ----------------------------------------------------------------------------


def test_adapter_fingerprint_avoids_rehashing(lora_root, tmp_path):
    import shutil

    from zthumb.lora import AdapterFiles

    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(lora_root / "b.safetensors", root / "x.safetensors")
    files = AdapterFiles(root)
    first = files.ref("x.safetensors")
    assert files.hash_reads == 1
    assert files.ref("x.safetensors").sha256 == first.sha256
    assert files.hash_reads == 1  # stat only
    shutil.copy(lora_root / "kohya_a.safetensors", root / "x.safetensors")  # in-place rewrite
    second = files.ref("x.safetensors")
    assert second.sha256 != first.sha256 and files.hash_reads == 2
    state, metadata, sha = second.read()
    assert sha == second.sha256 and state and metadata is None  # kohya: alphas are tensors


def test_adapter_metadata_is_parsed_from_the_bytes_like_diffusers(lora_root, lora_states, tmp_path):
    import torch
    from diffusers.utils.state_dict_utils import _load_sft_state_dict_metadata
    from safetensors.torch import save_file
    from zthumb.errors import AdapterLoadError
    from zthumb.lora import AdapterFiles, lora_adapter_metadata
    from zthumb.testing import adapter_metadata, lora_config, write_diffusers_lora

    write_diffusers_lora(lora_states["a"], tmp_path / "alpha", adapter_metadata(lora_config(4, 16)))
    files = [
        tmp_path / "alpha" / "pytorch_lora_weights.safetensors",
        lora_root / "b.safetensors",
        lora_root / "kohya_a.safetensors",
    ]
    for file in files:
        assert lora_adapter_metadata(file.read_bytes()) == _load_sft_state_dict_metadata(str(file))
    weights = AdapterFiles(tmp_path).ref("alpha").read()
    assert (weights.metadata["unet.r"], weights.metadata["unet.lora_alpha"]) == (4, 16)

    save_file(
        {"unet.x.lora_A.weight": torch.zeros(2, 2)},
        str(tmp_path / "broken.safetensors"),
        metadata={"lora_adapter_metadata": "{not json"},
    )
    with pytest.raises(AdapterLoadError, match="adapter metadata"):
        AdapterFiles(tmp_path).ref("broken.safetensors").read()


def test_adapter_confinement_unit(lora_root, tmp_path):
    from zthumb.errors import AdapterNotFoundError, AdapterRefusedError
    from zthumb.lora import AdapterFiles

    files = AdapterFiles(lora_root)
    file, display = files.resolve("style_a")
    assert file.name == "pytorch_lora_weights.safetensors" and display == "style_a"
    for bad in ("../x.safetensors", "/tmp/x.safetensors", "escape.safetensors", "evil.bin", ""):
        with pytest.raises(AdapterRefusedError):
            files.resolve(bad)
    with pytest.raises(AdapterNotFoundError):
        files.resolve("nope")
    (lora_root / "loop.safetensors").unlink(missing_ok=True)
    os.symlink("loop.safetensors", lora_root / "loop.safetensors")
    try:
        with pytest.raises((AdapterRefusedError, AdapterNotFoundError)):
            files.resolve("loop.safetensors")
    finally:
        (lora_root / "loop.safetensors").unlink()
    with pytest.raises(AdapterNotFoundError, match="LoRA root"):
        AdapterFiles(tmp_path / "absent").resolve("x")


# --- worker --------------------------------------------------------------------------------


def test_worker_runs_in_order_and_bounds_the_queue():
    from zthumb.errors import QueueFullError
    from zthumb.worker import Worker

    worker = Worker(max_queue=2)
    worker.start()
    gate = threading.Event()
    order: list[int] = []
    taken = threading.Event()
    running = worker.enqueue(lambda _c: taken.set() or gate.wait(5))
    assert taken.wait(5)  # the worker holds the first job: the next two wait in the queue
    jobs = [worker.enqueue(lambda _c, i=i: order.append(i)) for i in range(2)]
    with pytest.raises(QueueFullError) as full:
        worker.enqueue(lambda _c: None)
    assert full.value.status == 429 and "Retry-After" in full.value.headers
    assert jobs[0].cancel() is True  # queued: never runs
    gate.set()
    jobs[1].future.result(5)
    running.future.result(5)
    assert order == [1]
    worker.stop()


def test_worker_submit_timeout_and_running_cancel():
    from zthumb.errors import GenerationTimeoutError
    from zthumb.worker import Worker

    worker = Worker(max_queue=4)
    worker.start()
    seen = threading.Event()

    def long_job(cancel):
        seen.set()
        assert cancel.wait(5)  # a running job sees the cancel event (checked per step)
        return "stopped"

    async def run():
        with pytest.raises(GenerationTimeoutError):
            await worker.submit(long_job, timeout=0.2)

    asyncio.run(run())
    assert seen.is_set()
    worker.stop()


# --- logs ----------------------------------------------------------------------------------


def test_json_logs(capsys):
    from zthumb.logs import JsonFormatter

    record = logging.LogRecord("zthumb.test", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.backend = "full"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello you" and line["backend"] == "full" and line["level"] == "INFO"


# --- CLI -----------------------------------------------------------------------------------


def test_cli_serve_builds_settings(monkeypatch):
    import uvicorn
    from typer.testing import CliRunner
    from zthumb.cli import app

    captured = {}
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: captured.update(kw, app=application))
    result = CliRunner().invoke(
        app,
        [
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "9999",
            "--backend",
            "turbo",
            "--enabled-backends",
            "full",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (captured["host"], captured["port"]) == ("127.0.0.1", 9999)
    settings = captured["app"].state.settings
    assert settings.backends == ["turbo", "full"]
    logging.getLogger().handlers = [
        h for h in logging.getLogger().handlers if not getattr(h, "_zthumb", False)
    ]


def test_cli_convert_gguf(tiny_model, tmp_path):
    from typer.testing import CliRunner
    from zthumb.cli import app
    from zthumb.gguf_convert import load_unet_state_dict, tensor_plan

    out = tmp_path / "unet.gguf"
    result = CliRunner().invoke(
        app,
        ["convert-gguf", str(tiny_model.single_file), str(out), "--config", str(tiny_model.diffusers_dir)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["types"]["Q8_0"] == report["quantized"] > 0
    assert report["quantized_bytes"] <= 0.30 * report["quantized_fp32_bytes"]
    # The single file and the diffusers dir give the same UNet tensors.
    from_single = load_unet_state_dict(tiny_model.single_file, tiny_model.diffusers_dir)
    from_dir = load_unet_state_dict(tiny_model.diffusers_dir)
    assert set(from_single) == set(from_dir)
    assert tensor_plan("a.to_q.weight", (64, 64)) == "Q8_0"
    assert tensor_plan("a.to_k.weight", (64, 80)) == "F16"
    assert tensor_plan("conv_in.weight", (32, 4, 3, 3)) == "F16"
    assert tensor_plan("conv_in.bias", (32,)) == "F32"
    with pytest.raises(ValueError, match="config"):
        load_unet_state_dict(tiny_model.single_file)
    help_result = CliRunner().invoke(app, ["--help"])
    assert "serve" in help_result.output and "convert-gguf" in help_result.output


def test_backend_names_are_declared_once():
    """settings.BackendName is the list: the registry and the chart's schema follow it."""
    from pathlib import Path

    from zthumb.backends import BACKENDS
    from zthumb.settings import BACKEND_NAMES

    schema = json.loads((Path(__file__).parents[3] / "charts/zthumb/values.schema.json").read_text())
    server = schema["properties"]["server"]["properties"]
    assert list(BACKENDS) == list(BACKEND_NAMES)
    assert server["backend"]["enum"] == list(BACKEND_NAMES)
    assert server["enabledBackends"]["items"]["enum"] == list(BACKEND_NAMES)
