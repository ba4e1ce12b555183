"""The captions of a dataset as its files give them (``spec.dataset.captionFormat``; DATASETS.md),
and the trigger word put in front of each. Generated captions (``captioning.py``) go through
``with_trigger`` the same way."""

from __future__ import annotations

import json
from pathlib import Path


class DatasetError(Exception):
    """The dataset cannot be used; the message names the files."""


def with_trigger(caption: str, trigger_word: str) -> str:
    """Put the trigger word first unless the caption already has it (as a whole word)."""
    caption = " ".join(caption.split())
    if not trigger_word:
        return caption
    if trigger_word.lower() in caption.lower().replace(",", " ").split():
        return caption
    return f"{trigger_word}, {caption}" if caption else trigger_word


def read_captions(
    directory: Path, images: list[Path], caption_format: str, *, optional: bool = False
) -> dict[Path, str | None]:
    """Each image's caption, None where it has none. ``optional``: a jsonl dataset without its
    ``metadata.jsonl`` has no captions at all (a captioning model writes them) rather than an error."""
    if caption_format != "jsonl":
        return _read_captions_txt(images)
    if optional and not (directory / "metadata.jsonl").exists():
        return dict.fromkeys(images)
    return _read_captions_jsonl(directory, images)


def _read_captions_txt(images: list[Path]) -> dict[Path, str | None]:
    captions: dict[Path, str | None] = {}
    for image in images:
        caption_file = image.with_suffix(".txt")
        captions[image] = caption_file.read_text(encoding="utf-8").strip() if caption_file.exists() else None
    return captions


def _read_captions_jsonl(directory: Path, images: list[Path]) -> dict[Path, str | None]:
    metadata = directory / "metadata.jsonl"
    if not metadata.exists():
        raise DatasetError(f"{metadata}: not found (captionFormat is jsonl)")
    by_name: dict[str, str] = {}
    for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            by_name[str(record["file_name"])] = str(record.get("text") or record.get("caption") or "")
        except (ValueError, KeyError, TypeError) as error:
            raise DatasetError(
                f"{metadata}:{number}: expected a JSON object with file_name and text ({error})"
            ) from error
    return {image: by_name.get(image.relative_to(directory).as_posix()) for image in images}
