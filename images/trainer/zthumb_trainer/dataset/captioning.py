"""Captions written by a model in the prepare step (``spec.dataset.captioning``; DATASETS.md).

The model is a transformers ``BlipForConditionalGeneration``: its config, image processor and
tokenizer from a directory, its weights from one safetensors file, both fetched and verified on the
volume first by ``zthumb_trainer.fetch.verified`` (the fetcher of the base model and the eval's
CLIP). Loading goes through ``from_pretrained(use_safetensors=True)``, so a pickle is never
unpickled, and a checkpoint that lacks any of the model's tensors is refused rather than filled
with random ones.

Generation is greedy (no sampling) and bounded by ``maxNewTokens``: the same weights caption the
same image the same way, so the dataset hash of a run is reproducible. Images go through in batches
of ``batchSize``, each opened, captioned and released, with one progress line per batch.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zthumb_contract.dataset_spec import CaptioningSpec

from zthumb_trainer.download import FetchError
from zthumb_trainer.fetch.verified import download, fetch_config, token_from_env

FIELD = "spec.dataset.captioning"
# How many generated captions the stats (and so the eval report) show.
SAMPLE_SIZE = 8
# The captioner sees images at a few hundred pixels (BLIP: 384); a smaller copy bounds the memory a
# batch of large photos takes before the processor resizes them.
MAX_INPUT_SIDE = 1024
CONFIG_FILES = ("config.json", "preprocessor_config.json")


class CaptioningError(Exception):
    """The captioning model cannot be fetched, loaded or run; the message names the field."""


@dataclass(frozen=True)
class CaptioningRun:
    """``spec.dataset.captioning`` and where its files live (below the data root)."""

    spec: CaptioningSpec
    weights: Path
    config_dir: Path

    def wants(self, caption: str | None) -> bool:
        """Whether an image with this user caption (None: none) gets a generated one."""
        return self.spec.enabled and (self.spec.mode == "all" or caption is None)

    def model_info(self) -> dict[str, Any]:
        return {"url": self.spec.url, "sha256": self.spec.sha256, "name": self.weights.name}

    def load(self) -> Captioner:
        """Fetch and verify the model on the volume (skipped when it is there), then load it."""
        spec, token = self.spec, token_from_env()
        if spec.url is None or spec.sha256 is None or spec.config_url is None:
            raise CaptioningError(f"{FIELD}: url, sha256 and configUrl are required when enabled")
        try:
            download(spec.url, spec.sha256, self.weights, token=token, field=FIELD, max_bytes=spec.max_bytes,
                     allow_insecure_http=spec.allow_insecure_http)  # fmt: skip
            fetch_config(
                spec.config_url, self.config_dir, token, required=CONFIG_FILES, tokenizer_folders=("",),
                field=FIELD, allow_insecure_http=spec.allow_insecure_http,
            )  # fmt: skip
        except FetchError as error:
            raise CaptioningError(f"{FIELD}: {error}") from error
        return Captioner(self.weights, self.config_dir, spec)


class Captioner:
    """A loaded captioning model on the CPU (the prepare step has no GPU)."""

    def __init__(self, weights: Path, config_dir: Path, spec: CaptioningSpec) -> None:
        import torch
        from safetensors import SafetensorError
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self.spec = spec
        try:
            self.processor = BlipProcessor.from_pretrained(config_dir)
        except (OSError, ValueError, TypeError) as error:
            raise CaptioningError(f"{FIELD}: no BLIP processor in {config_dir}: {error}") from error
        # from_pretrained wants the weights beside config.json; the config folder is a shared cache
        # entry this step may not write to, so both are linked into a private folder.
        with tempfile.TemporaryDirectory(prefix="captioner-") as folder:
            os.symlink(config_dir / "config.json", Path(folder) / "config.json")
            os.symlink(weights.resolve(), Path(folder) / "model.safetensors")
            try:
                # With output_loading_info, a (model, info) pair (transformers' stubs say a model).
                # float32 whatever the checkpoint's dtype: half precision is slow or missing on a CPU.
                loaded: Any = BlipForConditionalGeneration.from_pretrained(
                    folder, use_safetensors=True, output_loading_info=True, dtype=torch.float32
                )
                model, info = loaded
            except (OSError, ValueError, RuntimeError, SafetensorError) as error:
                raise CaptioningError(
                    f"{FIELD}: {weights} is not a BLIP captioning model of {config_dir} in safetensors "
                    f"format: {error}"
                ) from error
        missing = sorted(info["missing_keys"])
        if missing:
            raise CaptioningError(
                f"{FIELD}: {weights} is not the captioning model of {config_dir} ({len(missing)} tensors "
                f"missing, e.g. {missing[:3]})"
            )
        self.model = model.eval()

    def caption(self, images: Sequence[Any]) -> list[str]:
        """One caption per image (whitespace collapsed; empty when the model said nothing)."""
        import torch

        prompt = self.spec.prompt.strip()
        inputs = self.processor(
            images=list(images), text=[prompt] * len(images) if prompt else None, return_tensors="pt"
        )
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, max_new_tokens=self.spec.max_new_tokens, do_sample=False, num_beams=1
            )
        return [
            " ".join(text.split()) for text in self.processor.batch_decode(output, skip_special_tokens=True)
        ]


def generate_captions(
    run: CaptioningRun, targets: Sequence[Path], open_image: Callable[[Path], Any]
) -> dict[Path, str]:
    """Caption ``targets`` in batches (the model loaded once, only when there is something to
    caption); an image ``open_image`` cannot read is left out (the prepare step reports it)."""
    if not targets:
        return {}
    started = time.monotonic()
    captioner = run.load()
    print(f"captioning {len(targets)} image(s) with {run.weights.name} ({run.spec.mode})", file=sys.stderr)
    captions: dict[Path, str] = {}
    size = run.spec.batch_size
    for start in range(0, len(targets), size):
        batch: list[tuple[Path, Any]] = []
        for path in targets[start : start + size]:
            image = open_image(path)
            if image is not None:
                image.thumbnail((MAX_INPUT_SIDE, MAX_INPUT_SIDE))
                batch.append((path, image))
        if batch:
            texts = captioner.caption([image for _, image in batch])
            captions.update({path: text for (path, _), text in zip(batch, texts, strict=True)})
        done = min(start + size, len(targets))
        print(f"captioned {done}/{len(targets)} images ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    return captions


def captioning_stats(run: CaptioningRun, entries: Sequence[Any]) -> dict[str, Any]:
    """The ``captioning`` block of stats.json (and the manifest): the model, the mode, how many
    captions were generated and a sample of them (the first ``SAMPLE_SIZE``, in dataset order)."""
    generated = [entry for entry in entries if entry.caption_generated]
    return {
        "model": run.model_info(),
        "mode": run.spec.mode,
        "generated": len(generated),
        "samples": [{"source": entry.source, "caption": entry.caption} for entry in generated[:SAMPLE_SIZE]],
    }


def read_captioning_stats(dataset_dir: Path) -> dict[str, Any] | None:
    """The ``captioning`` block of a prepared dataset's stats.json; None without one (no captioning,
    or no prepared dataset: the eval reports what there is)."""
    try:
        stats = json.loads((dataset_dir / "stats.json").read_text())
    except (OSError, ValueError):
        return None
    block = stats.get("captioning") if isinstance(stats, dict) else None
    return block if isinstance(block, dict) else None
