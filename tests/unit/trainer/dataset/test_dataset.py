"""prepare-dataset: normalising, bucketing, captions, and errors that name the files."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner
from zthumb_trainer.cli import app
from zthumb_trainer.dataset.prepare import (
    DatasetError,
    buckets_for,
    load_manifest,
    nearest_bucket,
    prepare_dataset,
    with_trigger,
)


def _image(path, size=(300, 200), colour=(200, 10, 10), mode="RGB", caption="a thing"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode == "RGB" else None).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)
    return path


def test_sdxl_buckets_at_1024_are_the_papers_and_scale_down():
    assert (1024, 1024) in buckets_for(1024)
    assert (1216, 832) in buckets_for(1024) and (832, 1216) in buckets_for(1024)
    for width, height in buckets_for(256):
        assert width % 32 == 0 and height % 32 == 0
        assert 0.7 < width * height / 256**2 < 1.3
    assert nearest_bucket(1920, 1080, buckets_for(1024)) == (1344, 768)


def test_trigger_word_goes_first_unless_present():
    assert with_trigger("a red  circle", "zt") == "zt, a red circle"
    assert with_trigger("zt, a red circle", "zt") == "zt, a red circle"
    assert with_trigger("", "zt") == "zt"


def test_happy_path_writes_normalised_images_manifest_and_stats(tmp_path, synthetic_dataset):
    run_dir = tmp_path / "run"
    prepared = prepare_dataset(synthetic_dataset, run_dir, resolution=256, trigger_word="zt")
    manifest = json.loads((run_dir / "dataset" / "manifest.json").read_text())
    stats = json.loads((run_dir / "dataset" / "stats.json").read_text())
    assert len(manifest["entries"]) == 8 == stats["images_used"]
    entry = manifest["entries"][0]
    assert entry["caption"].startswith("zt, a ")
    with Image.open(run_dir / "dataset" / entry["image"]) as image:
        assert image.size == (entry["width"], entry["height"]) == (256, 256)
        assert image.mode == "RGB"
    assert stats["buckets"] == {"256x256": 8}
    # Upscaled 96 px sources are flagged, not refused.
    assert all("upscaled" in item["reason"] for item in stats["flagged"])
    assert load_manifest(run_dir).dataset_hash == prepared.dataset_hash
    again = prepare_dataset(synthetic_dataset, tmp_path / "run2", resolution=256, trigger_word="zt")
    assert again.dataset_hash == prepared.dataset_hash


def test_aspect_ratio_buckets_exif_rgb_and_micro_conditioning(tmp_path):
    source = tmp_path / "data"
    _image(source / "wide.png", (600, 300))
    _image(source / "grey.webp", (300, 300), mode="L")
    _image(source / "alpha.png", (300, 400), mode="RGBA")
    rotated = Image.new("RGB", (400, 200), (0, 0, 255))
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the stored landscape is a portrait
    rotated.save(source / "rotated.jpg", exif=exif)
    (source / "rotated.txt").write_text("turned")

    prepared = prepare_dataset(source, tmp_path / "run", resolution=256, trigger_word="zt")
    by_source = {entry.source: entry for entry in prepared.entries}
    wide = by_source["wide.png"]
    assert wide.width > wide.height
    assert (wide.original_width, wide.original_height) == (600, 300)
    assert wide.crop_left > 0 or wide.crop_top > 0 or wide.width / wide.height == 2
    turned = by_source["rotated.jpg"]
    assert (turned.original_width, turned.original_height) == (200, 400)
    assert turned.height > turned.width
    for entry in prepared.entries:
        with Image.open(prepared.directory / entry.image) as image:
            assert image.mode == "RGB"


def test_bucketing_off_crops_square(tmp_path):
    _image(tmp_path / "data" / "wide.png", (600, 300))
    prepared = prepare_dataset(tmp_path / "data", tmp_path / "run", resolution=256, bucketing=False)
    assert (prepared.entries[0].width, prepared.entries[0].height) == (256, 256)
    assert prepared.entries[0].crop_left == 128


def test_missing_caption_fails_naming_the_file(tmp_path):
    _image(tmp_path / "data" / "ok.png")
    _image(tmp_path / "data" / "lonely.png", caption=None)
    with pytest.raises(DatasetError, match=r"lonely\.png") as error:
        prepare_dataset(tmp_path / "data", tmp_path / "run", resolution=256, trigger_word="zt")
    assert "missingCaption" in str(error.value)
    assert not (tmp_path / "run" / "dataset").exists()


def test_missing_caption_can_use_the_trigger_word(tmp_path):
    _image(tmp_path / "data" / "lonely.png", caption=None)
    prepared = prepare_dataset(
        tmp_path / "data", tmp_path / "run", resolution=256, trigger_word="zt", missing_caption="trigger"
    )
    assert prepared.entries[0].caption == "zt"


def test_metadata_jsonl_captions(tmp_path):
    source = tmp_path / "data"
    _image(source / "a.png", caption=None)
    _image(source / "sub" / "b.png", caption=None)
    (source / "metadata.jsonl").write_text(
        json.dumps({"file_name": "a.png", "text": "first"})
        + "\n"
        + json.dumps({"file_name": "sub/b.png", "text": "second"})
        + "\n"
    )
    prepared = prepare_dataset(source, tmp_path / "run", resolution=256, caption_format="jsonl")
    assert sorted(e.caption for e in prepared.entries) == ["first", "second"]


def test_bad_jsonl_line_is_named(tmp_path):
    _image(tmp_path / "data" / "a.png", caption=None)
    (tmp_path / "data" / "metadata.jsonl").write_text("{not json\n")
    with pytest.raises(DatasetError, match=r"metadata\.jsonl:1"):
        prepare_dataset(tmp_path / "data", tmp_path / "run", resolution=256, caption_format="jsonl")


def test_unreadable_image_is_named(tmp_path):
    _image(tmp_path / "data" / "fine.png")
    (tmp_path / "data" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (tmp_path / "data" / "broken.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"broken\.jpg"):
        prepare_dataset(tmp_path / "data", tmp_path / "run", resolution=256)


def test_too_small_images_are_flagged_and_skipped(tmp_path):
    _image(tmp_path / "data" / "fine.png")
    _image(tmp_path / "data" / "tiny.png", (20, 20))
    prepared = prepare_dataset(tmp_path / "data", tmp_path / "run", resolution=256)
    assert [e.source for e in prepared.entries] == ["fine.png"]
    assert any("tiny.png" in f["file"] and "too small" in f["reason"] for f in prepared.flagged)


def test_only_too_small_images_is_an_error(tmp_path):
    _image(tmp_path / "data" / "tiny.png", (20, 20))
    with pytest.raises(DatasetError, match=r"(?s)no usable images.*tiny\.png"):
        prepare_dataset(tmp_path / "data", tmp_path / "run", resolution=256)


def test_no_images_is_an_error(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match="no images found"):
        prepare_dataset(tmp_path / "data", tmp_path / "run", resolution=256)


def test_cli_exit_codes(tmp_path, synthetic_dataset):
    runner = CliRunner()
    ok = runner.invoke(
        app,
        ["prepare-dataset", "--dataset", str(synthetic_dataset), "--output", str(tmp_path / "run"),
         "--resolution", "256", "--trigger-word", "zt", "--caption-format", "txt",
         "--missing-caption", "fail", "--bucketing"],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert "8 images ready" in ok.output
    missing = runner.invoke(
        app, ["prepare-dataset", "--dataset", str(tmp_path / "nope"), "--output", str(tmp_path / "r")]
    )
    assert missing.exit_code == 1
    assert "nope" in missing.output
