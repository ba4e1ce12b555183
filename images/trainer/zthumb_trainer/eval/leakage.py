"""Leakage: does the adapter change images it was not asked for.

Each of ``spec.eval.leakagePrompts`` (prompts without the trigger word, sent as written) is
rendered at scale 0 (the base model) and at the served scale with the eval's seeds. A pair's
similarity is the cosine of the two images' CLIP embeddings (1 = the same picture to CLIP); a
prompt's is the mean over its seeds, and ``leakage`` = 1 - the mean similarity over all pairs:
0 means untouched, higher means the adapter leaks into prompts that do not ask for it (at most 2).
``spec.eval.gate.maxLeakage`` bounds it."""

from __future__ import annotations

from pathlib import Path

from zthumb_contract.eval_report import LeakageBlock, LeakagePrompt

from zthumb_trainer.eval.clip_metrics import ClipScorer
from zthumb_trainer.eval.config import EvalConfig, Sample
from zthumb_trainer.eval.images import side_by_side

REFERENCE_SCALE = 0.0  # the base model, whatever spec.eval.scales compares
LEAKAGE_DIR = "leakage"


def served_scale(config: EvalConfig) -> float:
    """The scale the server is deployed with; the last compared scale when not given (as CLIP's)."""
    return config.served_scale if config.served_scale is not None else config.scales[-1]


def leakage_requests(config: EvalConfig) -> list[tuple[int, str, int, float]]:
    """(prompt index, prompt, seed, scale) of every render the measurement needs."""
    scales = (REFERENCE_SCALE, served_scale(config))
    return [
        (index, prompt, seed, scale)
        for index, prompt in enumerate(config.leakage_prompts)
        for seed in config.seeds
        for scale in scales
    ]


def _image_name(prompt_index: int, seed: int) -> str:
    return f"{LEAKAGE_DIR}/l{prompt_index}-s{seed}.png"


def _pairs(samples: list[Sample]) -> list[tuple[Sample, Sample]]:
    """(scale 0, served) per prompt × seed, in request order."""
    return [(samples[i], samples[i + 1]) for i in range(0, len(samples) - 1, 2)]


def leakage_block(scorer: ClipScorer, samples: list[Sample], scale: float, seeds: list[int]) -> LeakageBlock:
    """The report's ``leakage`` block from the renders of ``leakage_requests`` (in that order)."""
    embeddings = scorer.images([sample.image for sample in samples])
    similarities: dict[int, list[float]] = {}
    prompts: dict[int, str] = {}
    for first in range(0, len(samples) - 1, 2):
        base = samples[first]
        cosine = float(embeddings[first] @ embeddings[first + 1])
        similarities.setdefault(base.prompt_index, []).append(min(1.0, max(-1.0, cosine)))
        prompts[base.prompt_index] = base.prompt
    per_prompt = []
    for index, values in similarities.items():
        similarity = sum(values) / len(values)
        per_prompt.append(
            LeakagePrompt(
                prompt=prompts[index],
                similarity=round(similarity, 4),
                leakage=round(1 - similarity, 4),
                images=[_image_name(index, seed) for seed in seeds],
            )
        )
    every = [value for values in similarities.values() for value in values]
    return LeakageBlock(
        scale=scale, seeds=seeds, leakage=round(1 - sum(every) / len(every), 4), prompts=per_prompt
    )


def save_leakage_pairs(samples: list[Sample], staging: Path) -> None:
    """Each prompt × seed side by side (scale 0, served scale) under ``leakage/``."""
    (staging / LEAKAGE_DIR).mkdir()
    for base, served in _pairs(samples):
        picture = side_by_side(
            [base.image, served.image], [f"scale {base.scale:g}", f"scale {served.scale:g}"]
        )
        picture.save(staging / _image_name(base.prompt_index, base.seed))
