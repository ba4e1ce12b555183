"""prepare-dataset: validate, normalise and bucket an image-caption dataset (see DATASETS.md).

Output under the run directory (``outputs/lora/<run>/dataset/``):

* ``images/<index>.png``: each source image EXIF-transposed, converted to RGB, resized to
  cover its aspect-ratio bucket and centre-cropped to it (and ``images/<index>.mask.png``, its
  loss mask resized and cropped the same way, where the source has one: ``masks.py``);
* ``manifest.json``: one entry per image with caption (``caption_generated`` where a captioning
  model wrote it: ``captioning.py``), bucket and the SDXL micro-conditioning numbers (original
  size, crop top-left, target size), plus a dataset hash that ties an exported adapter to the
  exact data it saw (captions included, so generated captions change it);
* ``stats.json``: counts, bucket histogram, every flagged file and, with captioning, a sample of
  the generated captions (which the eval report shows).

Images ``spec.dataset.holdout`` keeps out of training (``holdout.py``) are prepared like the rest
and marked ``holdout`` in the manifest: train measures the denoising loss on them, never trains on them.

The directory is written to a staging sibling of this writer's own and renamed (replacing what
an earlier attempt of the run published), so ``train`` never reads half a dataset.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from zthumb_trainer.atomic import publish_directory, staging_directory
from zthumb_trainer.dataset.captioning import CaptioningRun, captioning_stats, generate_captions
from zthumb_trainer.dataset.captions import DatasetError, read_captions, with_trigger
from zthumb_trainer.dataset.holdout import HoldoutError, held_out
from zthumb_trainer.dataset.masks import MASK_SUFFIX, MaskError, is_mask, mask_for, prepare_mask

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MANIFEST_VERSION = 1
# The aspect ratios SDXL was trained on (width, height at 1024^2), from the SDXL paper.
SDXL_BUCKETS_1024 = (
    (1024, 1024),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (1344, 768),
    (768, 1344),
    (1536, 640),
    (640, 1536),
)


@dataclass(frozen=True)
class ManifestEntry:
    image: str  # relative to the manifest's directory
    source: str
    caption: str
    width: int  # the bucket: the size the image was cropped to
    height: int
    original_width: int
    original_height: int
    crop_top: int
    crop_left: int
    # The prepared loss mask (``<image>.mask.png`` beside the source image; ``masks.py``), if any.
    mask: str | None = None
    # Kept out of training (``spec.dataset.holdout``): only the holdout loss sees it.
    holdout: bool = False
    # Written by the captioning model (``spec.dataset.captioning``), not by the dataset's files.
    caption_generated: bool = False


@dataclass
class PreparedDataset:
    directory: Path
    entries: list[ManifestEntry]
    dataset_hash: str
    resolution: int
    trigger_word: str
    flagged: list[dict[str, str]] = field(default_factory=list)
    captioning: dict[str, Any] | None = None  # captioning.captioning_stats, when a model captioned

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    def for_training(self) -> PreparedDataset:
        """This dataset without its held-out images: what training batches are drawn from."""
        return replace(self, entries=[entry for entry in self.entries if not entry.holdout])

    @property
    def holdout_entries(self) -> list[ManifestEntry]:
        return [entry for entry in self.entries if entry.holdout]


def dataset_dir(run_dir: Path) -> Path:
    return run_dir / "dataset"


def buckets_for(resolution: int) -> list[tuple[int, int]]:
    """SDXL's aspect-ratio buckets scaled to ``resolution``² pixels, sides multiples of 32/64."""
    step = 64 if resolution >= 512 else 32
    buckets: list[tuple[int, int]] = []
    scale = resolution / 1024
    for width, height in SDXL_BUCKETS_1024:
        w = max(step, round(width * scale / step) * step)
        h = max(step, round(height * scale / step) * step)
        if (w, h) not in buckets:
            buckets.append((w, h))
    return buckets


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    ratio = math.log(width / height)
    return min(buckets, key=lambda bucket: abs(math.log(bucket[0] / bucket[1]) - ratio))


def resized_size(width: int, height: int, bucket_w: int, bucket_h: int) -> tuple[int, int]:
    """The size an image of ``width`` x ``height`` is resized to before its bucket is cropped from
    it (the frame of ``ManifestEntry.crop_left``/``crop_top``): the smallest that covers the bucket."""
    scale = max(bucket_w / width, bucket_h / height)
    return max(bucket_w, round(width * scale)), max(bucket_h, round(height * scale))


def _find_images(directory: Path) -> list[Path]:
    return sorted(
        path
        for path in directory.rglob("*")
        if path.is_file()
        and path.suffix.lower() in IMAGE_SUFFIXES
        and not path.name.startswith(".")
        and not is_mask(path)
    )


def _open_for_captioning(path: Path) -> Any:
    """The image as the captioner sees it (EXIF-transposed RGB); None when it cannot be read."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()
            return ImageOps.exif_transpose(opened).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _short(paths: list[str], limit: int = 20) -> str:
    more = f"\n  ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return "\n  " + "\n  ".join(paths[:limit]) + more


def prepare_dataset(
    source: Path,
    run_dir: Path,
    resolution: int,
    *,
    trigger_word: str = "",
    caption_format: str = "txt",
    missing_caption: str = "fail",
    bucketing: bool = True,
    min_side: int | None = None,
    holdout: float = 0,
    captioning: CaptioningRun | None = None,
) -> PreparedDataset:
    """Validate and normalise ``source`` into ``<run_dir>/dataset``; raise DatasetError naming files."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not source.is_dir():
        raise DatasetError(f"{source}: dataset directory not found")
    images = _find_images(source)
    if not images:
        raise DatasetError(f"{source}: no images found (expected {', '.join(IMAGE_SUFFIXES)} files)")
    captioning = captioning if captioning is not None and captioning.spec.enabled else None
    captions = read_captions(source, images, caption_format, optional=captioning is not None)
    generated: dict[Path, str] = {}
    if captioning is not None:
        targets = [image for image, caption in captions.items() if captioning.wants(caption)]
        generated = generate_captions(captioning, targets, _open_for_captioning)
        captions.update(generated)
    missing = [str(image) for image, caption in captions.items() if caption is None]
    if missing and missing_caption == "fail":
        raise DatasetError(
            f"{len(missing)} image(s) have no caption (missingCaption: fail; set it to 'trigger' to "
            "caption them with the trigger word, or enable captioning to caption them with a model):"
            f"{_short(missing)}"
        )
    if missing and not trigger_word:
        raise DatasetError(f"images without captions and no trigger word to use instead:{_short(missing)}")

    min_side = min_side if min_side is not None else max(64, resolution // 4)
    buckets = buckets_for(resolution) if bucketing else [(resolution, resolution)]
    target = dataset_dir(run_dir)
    staging = staging_directory(target, "part")
    (staging / "images").mkdir()

    entries: list[ManifestEntry] = []
    unreadable: list[str] = []
    flagged: list[dict[str, str]] = []
    digest = hashlib.sha256()
    for image_path in images:
        try:
            with Image.open(image_path) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened).convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as error:
            unreadable.append(f"{image_path}: {error}")
            continue
        width, height = image.size
        if min(width, height) < min_side:
            flagged.append(
                {"file": str(image_path), "reason": f"too small ({width}x{height}; minimum side {min_side})"}
            )
            continue
        if max(width, height) < resolution:
            flagged.append({"file": str(image_path), "reason": f"upscaled ({width}x{height} < {resolution})"})
        caption = captions[image_path]
        caption = with_trigger(caption if caption is not None else "", trigger_word)
        bucket_w, bucket_h = nearest_bucket(width, height, buckets)
        resized_w, resized_h = resized_size(width, height, bucket_w, bucket_h)
        resized = image.resize((resized_w, resized_h), Image.Resampling.LANCZOS)
        left, top = (resized_w - bucket_w) // 2, (resized_h - bucket_h) // 2
        box = (left, top, left + bucket_w, top + bucket_h)
        cropped = resized.crop(box)
        name = f"images/{len(entries):06d}.png"
        mask_name, mask_source = None, mask_for(image_path)
        if mask_source is not None:
            try:
                mask = prepare_mask(mask_source, (width, height), (resized_w, resized_h), box)
            except MaskError as error:
                unreadable.append(str(error))
                continue
            mask_name = f"images/{len(entries):06d}{MASK_SUFFIX}"
            mask.save(staging / mask_name)
            digest.update(hashlib.sha256(mask_source.read_bytes()).digest())
        cropped.save(staging / name)
        entries.append(
            ManifestEntry(
                image=name,
                source=str(image_path.relative_to(source)),
                caption=caption,
                width=bucket_w,
                height=bucket_h,
                original_width=width,
                original_height=height,
                crop_top=top,
                crop_left=left,
                mask=mask_name,
                caption_generated=image_path in generated,
            )
        )
        digest.update(hashlib.sha256(image_path.read_bytes()).digest())
        digest.update(caption.encode())

    if unreadable:
        shutil.rmtree(staging, ignore_errors=True)
        raise DatasetError(f"{len(unreadable)} image(s) could not be read:{_short(unreadable)}")
    if not entries:
        shutil.rmtree(staging, ignore_errors=True)
        reasons = [f"{item['file']}: {item['reason']}" for item in flagged]
        raise DatasetError(f"no usable images in {source}:{_short(reasons)}")

    try:
        held = held_out([entry.source for entry in entries], holdout)
    except HoldoutError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise DatasetError(str(error)) from error
    entries = [replace(entry, holdout=entry.source in held) for entry in entries]
    digest.update(f"{resolution}:{bucketing}".encode())
    if held:  # the split is part of what training saw (no holdout: the hash of earlier releases)
        digest.update(f":holdout:{holdout:g}".encode())
    prepared = PreparedDataset(
        directory=target,
        entries=entries,
        dataset_hash=digest.hexdigest(),
        resolution=resolution,
        trigger_word=trigger_word,
        flagged=flagged,
    )
    if captioning is not None:
        prepared.captioning = captioning_stats(captioning, entries)
    manifest = {
        "version": MANIFEST_VERSION,
        "source": str(source),
        "resolution": resolution,
        "bucketing": bucketing,
        "holdout": holdout,
        "trigger_word": trigger_word,
        "dataset_hash": prepared.dataset_hash,
        "captioning": prepared.captioning,
        "entries": [asdict(entry) for entry in entries],
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (staging / "stats.json").write_text(json.dumps(dataset_stats(prepared, len(images)), indent=1))
    publish_directory(staging, target)
    for item in flagged:
        print(f"warning: {item['file']}: {item['reason']}", file=sys.stderr)
    return prepared


def dataset_stats(prepared: PreparedDataset, found: int) -> dict[str, Any]:
    histogram: dict[str, int] = {}
    for entry in prepared.entries:
        key = f"{entry.width}x{entry.height}"
        histogram[key] = histogram.get(key, 0) + 1
    words = [len(entry.caption.split()) for entry in prepared.entries]
    return {
        "images_found": found,
        "images_used": len(prepared.entries),
        "images_held_out": len(prepared.holdout_entries),
        "flagged": prepared.flagged,
        "buckets": histogram,
        "caption_words": {"min": min(words), "max": max(words), "mean": sum(words) / len(words)},
        "dataset_hash": prepared.dataset_hash,
        **({"captioning": prepared.captioning} if prepared.captioning is not None else {}),
    }


def load_manifest(run_dir: Path) -> PreparedDataset:
    """Read what ``prepare_dataset`` wrote (train calls this)."""
    directory = dataset_dir(run_dir)
    path = directory / "manifest.json"
    if not path.exists():
        raise DatasetError(f"{path}: not found; run prepare-dataset first")
    manifest = json.loads(path.read_text())
    stats_path = directory / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    return PreparedDataset(
        directory=directory,
        entries=[ManifestEntry(**entry) for entry in manifest["entries"]],
        dataset_hash=manifest["dataset_hash"],
        resolution=manifest["resolution"],
        trigger_word=manifest.get("trigger_word", ""),
        flagged=stats.get("flagged", []),
        captioning=manifest.get("captioning"),
    )
