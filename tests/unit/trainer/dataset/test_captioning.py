"""spec.dataset.captioning: a tiny random BLIP, served over HTTP and verified like the base model,
captions the images of a dataset in the prepare step. Its captions are gibberish: the tests check
their structure, the manifest's marks, the hash and determinism, never their words."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner
from zthumb_contract.dataset_spec import CaptioningSpec, DatasetSpec
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_contract.steps import RunPaths, prepare_dataset_step
from zthumb_trainer.cli import app
from zthumb_trainer.dataset.captioning import SAMPLE_SIZE, CaptioningError, CaptioningRun
from zthumb_trainer.dataset.prepare import DatasetError, load_manifest, prepare_dataset
from zthumb_trainer.fetch.verified import sha256_of
from zthumb_trainer.local.http_serve import StaticServer
from zthumb_trainer.tiny.tiny_blip import build_tiny_blip


@pytest.fixture(scope="module")
def blip_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("blip-source")
    blip = build_tiny_blip(root)
    return root, blip, sha256_of(blip.weights)


@pytest.fixture(scope="module")
def blip_server(blip_files):
    with StaticServer(blip_files[0]) as server:
        yield server


def _spec(blip_server, blip_files, **overrides):
    _root, blip, digest = blip_files
    return {
        "enabled": True,
        "url": f"{blip_server.url}/{blip.weights.name}",
        "sha256": digest,
        "configUrl": f"{blip_server.url}/{blip.config_dir.name}/",
        "batchSize": 2,
        "maxNewTokens": 6,
    } | overrides


def _run(tmp_path, blip_server, blip_files, **overrides):
    models = tmp_path / "models"
    spec = CaptioningSpec.model_validate(_spec(blip_server, blip_files, **overrides))
    return CaptioningRun(spec, models / "captioner.safetensors", models / "captioner-config")


def _dataset(directory, captions):
    """One 96x64 image per caption (None: no caption file), each of its own colour."""
    directory.mkdir(parents=True, exist_ok=True)
    for index, caption in enumerate(captions):
        path = directory / f"{index:03d}.png"
        Image.new("RGB", (96, 64), (index * 30 % 256, 80, 200 - index * 20)).save(path)
        if caption is not None:
            path.with_suffix(".txt").write_text(caption)
    return directory


def _prepare(source, run_dir, captioning=None, **options):
    return prepare_dataset(
        source, run_dir, resolution=64, trigger_word="zt", captioning=captioning, **options
    )


def test_missing_mode_captions_only_the_images_without_one(tmp_path, blip_server, blip_files):
    source = _dataset(tmp_path / "data", ["a red square", None, None, "a blue disc", None])
    prepared = _prepare(source, tmp_path / "run", _run(tmp_path, blip_server, blip_files))
    by_source = {entry.source: entry for entry in prepared.entries}
    assert [by_source[f"{i:03d}.png"].caption_generated for i in range(5)] == [False, True, True, False, True]
    assert by_source["000.png"].caption == "zt, a red square"
    for entry in prepared.entries:
        assert entry.caption == "zt" or entry.caption.startswith("zt, "), entry.caption  # trigger first
    manifest = json.loads((tmp_path / "run" / "dataset" / "manifest.json").read_text())
    assert [entry["caption_generated"] for entry in manifest["entries"]] == [False, True, True, False, True]
    assert manifest["captioning"]["generated"] == 3 and manifest["captioning"]["mode"] == "missing"
    assert load_manifest(tmp_path / "run").entries == prepared.entries


def test_all_mode_replaces_every_caption_and_is_deterministic(tmp_path, blip_server, blip_files):
    source = _dataset(tmp_path / "data", ["a red square", None, "a blue disc"])
    first = _prepare(source, tmp_path / "run1", _run(tmp_path, blip_server, blip_files, mode="all"))
    assert all(entry.caption_generated for entry in first.entries)
    assert "zt, a red square" not in [entry.caption for entry in first.entries]
    # Greedy decoding of the same weights: the same captions, the same hash.
    again = _prepare(source, tmp_path / "run2", _run(tmp_path, blip_server, blip_files, mode="all"))
    assert [e.caption for e in again.entries] == [e.caption for e in first.entries]
    assert again.dataset_hash == first.dataset_hash


def test_generated_captions_change_the_dataset_hash(tmp_path, blip_server, blip_files):
    source = _dataset(tmp_path / "data", ["a red square", None])
    trigger_only = _prepare(source, tmp_path / "run1", missing_caption="trigger")
    captioned = _prepare(source, tmp_path / "run2", _run(tmp_path, blip_server, blip_files))
    assert trigger_only.entries[1].caption == "zt" and captioned.entries[1].caption_generated
    assert captioned.entries[1].caption != "zt"  # the tiny model says something (gibberish)
    assert captioned.dataset_hash != trigger_only.dataset_hash


def test_nothing_to_caption_loads_no_model(tmp_path):
    """Mode missing on a fully captioned dataset neither downloads nor loads anything."""
    source = _dataset(tmp_path / "data", ["a red square", "a blue disc"])
    spec = CaptioningSpec(
        enabled=True, url="http://127.0.0.1:9/none", sha256="0" * 64, config_url="http://127.0.0.1:9/"
    )
    run = CaptioningRun(spec, tmp_path / "models" / "w.safetensors", tmp_path / "models" / "c")
    prepared = _prepare(source, tmp_path / "run", run)
    assert not any(entry.caption_generated for entry in prepared.entries)
    assert not (tmp_path / "models").exists()


def test_a_jsonl_dataset_without_metadata_is_captioned_whole(tmp_path, blip_server, blip_files):
    source = _dataset(tmp_path / "data", [None, None])
    with pytest.raises(DatasetError, match=r"metadata\.jsonl"):
        _prepare(source, tmp_path / "run0", caption_format="jsonl")
    prepared = _prepare(
        source, tmp_path / "run", _run(tmp_path, blip_server, blip_files), caption_format="jsonl"
    )
    assert all(entry.caption_generated for entry in prepared.entries)


def test_stats_hold_a_bounded_sample_of_the_generated_captions(tmp_path, blip_server, blip_files):
    source = _dataset(tmp_path / "data", [None] * (SAMPLE_SIZE + 2))
    prepared = _prepare(source, tmp_path / "run", _run(tmp_path, blip_server, blip_files, batchSize=4))
    stats = json.loads((tmp_path / "run" / "dataset" / "stats.json").read_text())
    block = stats["captioning"]
    assert block["generated"] == SAMPLE_SIZE + 2 and len(block["samples"]) == SAMPLE_SIZE
    assert block["samples"][0] == {"source": "000.png", "caption": prepared.entries[0].caption}
    assert block["model"]["sha256"] == blip_files[2]


def test_a_captioner_whose_sha256_differs_fails_naming_the_field(tmp_path, blip_server, blip_files):
    source = _dataset(tmp_path / "data", [None])
    run = _run(tmp_path, blip_server, blip_files, sha256="0" * 64)
    with pytest.raises(CaptioningError, match=r"(?s)sha256 mismatch.*spec\.dataset\.captioning\.sha256"):
        _prepare(source, tmp_path / "run", run)
    assert not run.weights.exists() and not (tmp_path / "run" / "dataset").exists()


def test_weights_of_another_model_are_refused_naming_the_field(tmp_path, blip_server, blip_files):
    from safetensors.torch import load_file, save_file

    root, blip, _digest = blip_files
    state = load_file(str(blip.weights))
    state.pop(next(iter(state)))
    partial = root / "partial.safetensors"
    save_file(state, str(partial))
    source = _dataset(tmp_path / "data", [None])
    run = _run(tmp_path, blip_server, blip_files, url=f"{blip_server.url}/partial.safetensors",
               sha256=sha256_of(partial))  # fmt: skip
    with pytest.raises(CaptioningError, match=r"spec\.dataset\.captioning: .* tensors missing"):
        _prepare(source, tmp_path / "run", run)


def test_a_pickle_is_never_loaded(tmp_path, blip_server, blip_files):
    root = blip_files[0]
    pickled = root / "pytorch_model.bin"
    pickled.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a pickle's protocol header, not safetensors
    source = _dataset(tmp_path / "data", [None])
    run = _run(tmp_path, blip_server, blip_files, url=f"{blip_server.url}/pytorch_model.bin",
               sha256=sha256_of(pickled))  # fmt: skip
    with pytest.raises(CaptioningError, match=r"spec\.dataset\.captioning: .* safetensors format"):
        _prepare(source, tmp_path / "run", run)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sha256", "ABC", "sha256"),
        ("maxNewTokens", 0, "maxNewTokens"),
        ("maxNewTokens", 129, "maxNewTokens"),
        ("batchSize", 65, "batchSize"),
        ("mode", "some", "mode"),
        ("prompt", "x" * 201, "prompt"),
        ("path", "models/lora/blip.safetensors", "path"),
    ],
)
def test_out_of_bounds_values_are_refused_naming_the_field(field, value, message):
    with pytest.raises(ValidationError, match=message):
        DatasetSpec.model_validate({"captioning": {field: value}})


@pytest.mark.parametrize("field", ["url", "sha256", "configUrl"])
def test_enabled_needs_a_pinned_model(field):
    spec = {"enabled": True, "url": "https://example.com/m.safetensors", "sha256": "a" * 64,
            "configUrl": "https://example.com/"}  # fmt: skip
    del spec[field]
    with pytest.raises(ValidationError, match=rf"dataset\.captioning\.{field} is required"):
        CaptioningSpec.model_validate(spec)
    assert CaptioningSpec.model_validate({}).enabled is False  # off: nothing needed


def test_the_prepare_step_argv_captions_through_the_cli(tmp_path, blip_server, blip_files):
    """The operator's (and the local runner's) prepare-dataset argv, run through the trainer CLI."""
    data = tmp_path / "data"
    _dataset(data / "datasets" / "default", [None, "a blue disc"])
    spec = LoRAFinetuneSpec.model_validate(
        {"dataset": {"resolution": 256, "triggerWord": "zt", "captioning": _spec(blip_server, blip_files)}}
    )
    step = prepare_dataset_step(RunPaths(str(data), "run", spec))
    without_paths = [arg for arg in step.args if not arg.startswith(str(data / "models"))]
    without_paths = [arg for arg in without_paths if arg not in ("--captioning-model", "--captioning-config")]
    refused = CliRunner().invoke(app, without_paths)
    assert refused.exit_code == 1 and "--captioning-model" in refused.output
    result = CliRunner().invoke(app, list(step.args))
    assert result.exit_code == 0, result.output
    entries = load_manifest(data / "outputs" / "lora" / "run").entries
    assert [entry.caption_generated for entry in entries] == [True, False]
    assert entries[1].caption == "zt, a blue disc"
    assert (data / "models" / "captioner.safetensors.verified").exists()  # verified once, cached


def _eval_config(tmp_path, run_dir):
    from zthumb_trainer.eval.config import EvalConfig

    return EvalConfig(
        server_url="http://127.0.0.1:9", output=tmp_path / "eval", run_name="run", lora_path="run",
        train_summary=run_dir / "summary.json", clip={"enabled": False},
    )  # fmt: skip


def test_the_eval_report_shows_a_sample_of_the_generated_captions(tmp_path, blip_server, blip_files):
    from zthumb_trainer.eval.run import write_report

    run_dir = tmp_path / "outputs" / "lora" / "run"
    source = _dataset(tmp_path / "data", [None] * (SAMPLE_SIZE + 1) + ["a blue disc"])
    prepared = _prepare(source, run_dir, _run(tmp_path, blip_server, blip_files, batchSize=4))
    (run_dir / "summary.json").write_text("{}")
    config = _eval_config(tmp_path, run_dir)
    report = write_report(config, [], {}, 1.0)
    assert report.captioning is not None
    assert report.captioning.generated == SAMPLE_SIZE + 1 and report.captioning.mode == "missing"
    expected = [(e.source, e.caption) for e in prepared.entries if e.caption_generated][:SAMPLE_SIZE]
    assert [(s.source, s.caption) for s in report.captioning.samples] == expected
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert len(summary["captioning"]["samples"]) == SAMPLE_SIZE
    markdown = (tmp_path / "eval" / "report.md").read_text()
    assert (
        f"## Generated captions\n\n{SAMPLE_SIZE + 1} caption(s) written by `captioner.safetensors`"
        in markdown
    )
    assert f"| `000.png` | {expected[0][1]} |" in markdown


def test_no_captioning_no_report_section(tmp_path):
    from zthumb_trainer.eval.run import write_report

    run_dir = tmp_path / "run"
    _prepare(_dataset(tmp_path / "data", ["a red square"]), run_dir)
    (run_dir / "summary.json").write_text("{}")
    config = _eval_config(tmp_path, run_dir)
    assert write_report(config, [], {}, 1.0).captioning is None
    assert "Generated captions" not in (tmp_path / "eval" / "report.md").read_text()
