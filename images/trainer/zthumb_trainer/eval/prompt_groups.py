"""The eval's prompt groups: ``spec.eval.prompts`` (in-distribution, like the training captions) and
``spec.eval.outOfDistributionPrompts`` (the subject in new contexts), each rendered at every scale
with the same seeds, and their side-by-side pictures (``pairs/``), one per prompt × seed.

Each image's mean pixel difference against the same prompt and seed at the reference scale (the
first of ``spec.eval.scales``) goes into its ``Sample.scores``, beside the CLIP numbers, where the
sweep (``scale_sweep.py``) averages it per group and scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zthumb_contract.scale_sweep import IN_DISTRIBUTION, OUT_OF_DISTRIBUTION, PIXEL_DIFFERENCE, scale_key

from zthumb_trainer.eval.config import EvalConfig, Sample
from zthumb_trainer.eval.images import mean_pixel_difference, side_by_side
from zthumb_trainer.prompts import expand_prompt

PAIRS_DIR = "pairs"
# The picture names of a group's pairs: the in-distribution ones keep the names every report had.
PAIR_PREFIX = {IN_DISTRIBUTION: "p", OUT_OF_DISTRIBUTION: "ood-p"}


def prompt_requests(config: EvalConfig) -> list[tuple[str, int, str]]:
    """(group, prompt index in its group, prompt with the trigger word) of every prompt to render."""
    groups = ((IN_DISTRIBUTION, config.prompts), (OUT_OF_DISTRIBUTION, config.out_of_distribution_prompts))
    return [
        (group, index, expand_prompt(raw, config.trigger_word))
        for group, prompts in groups
        for index, raw in enumerate(prompts)
    ]


def pair_name(group: str, prompt_index: int, seed: int) -> str:
    return f"{PAIRS_DIR}/{PAIR_PREFIX.get(group, group + '-p')}{prompt_index}-s{seed}.png"


def _by_prompt_and_seed(samples: list[Sample]) -> dict[tuple[str, int, int], list[Sample]]:
    """The samples of each (group, prompt index, seed), in request order (the reference scale first)."""
    out: dict[tuple[str, int, int], list[Sample]] = {}
    for sample in samples:
        out.setdefault((sample.group, sample.prompt_index, sample.seed), []).append(sample)
    return out


def score_pixel_differences(samples: list[Sample]) -> None:
    """Each sample's mean pixel difference against its prompt and seed at the reference scale."""
    for group in _by_prompt_and_seed(samples).values():
        base = group[0]
        for sample in group:
            sample.scores[PIXEL_DIFFERENCE] = round(mean_pixel_difference(base.image, sample.image), 3)


def write_pairs(samples: list[Sample], staging: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The side-by-side pictures under ``pairs/`` and the report's ``pairs`` (group by group), and
    the server's adapter block (from the first answer with the adapter on)."""
    (staging / PAIRS_DIR).mkdir()
    pairs: list[dict[str, Any]] = []
    adapter: dict[str, Any] | None = None
    for (group_name, prompt_index, seed), group in _by_prompt_and_seed(samples).items():
        name = pair_name(group_name, prompt_index, seed)
        side_by_side([s.image for s in group], [f"scale {s.scale:g}" for s in group]).save(staging / name)
        pair: dict[str, Any] = {
            "prompt": group[0].prompt,
            "seed": seed,
            "group": group_name,
            "image": name,
            "mean_pixel_difference": {scale_key(s.scale): s.scores[PIXEL_DIFFERENCE] for s in group[1:]},
            "latency_s": {scale_key(s.scale): round(s.latency_s, 3) for s in group},
        }
        for metric in dict.fromkeys(name for s in group for name in s.scores):  # CLIP-T, CLIP-I, DINO...
            if metric != PIXEL_DIFFERENCE and all(metric in s.scores for s in group):
                pair[metric] = {scale_key(s.scale): s.scores[metric] for s in group}
        pairs.append(pair)
        for sample in group:
            adapter = adapter or (sample.response.get("adapter") if sample.scale else None)
    return pairs, adapter
