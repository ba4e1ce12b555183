"""Leakage: does the adapter change images it was not asked for.

Each of ``spec.eval.leakagePrompts`` (prompts without the trigger word, sent as written) is
rendered at scale 0 (the base model), at the served scale and at every other scale of the sweep
with the eval's seeds. A pair's similarity is the cosine of the CLIP embeddings of an image and the
same prompt and seed at scale 0 (1 = the same picture to CLIP); a prompt's is the mean over its
seeds, and ``leakage`` = 1 - the mean similarity over all pairs: 0 means untouched, higher means the
adapter leaks into prompts that do not ask for it (at most 2). The served scale's is the report's
``leakage`` block, which ``spec.eval.gate.maxLeakage`` bounds; every scale's goes to the sweep."""

from __future__ import annotations

from pathlib import Path

from zthumb_contract.eval_report import LeakageBlock, LeakagePrompt

from zthumb_trainer.eval.clip_metrics import ClipScorer
from zthumb_trainer.eval.config import EvalConfig, Sample
from zthumb_trainer.eval.images import side_by_side

REFERENCE_SCALE = 0.0  # the base model, whatever spec.eval.scales compares
LEAKAGE_DIR = "leakage"

# scale -> prompt index -> the similarity of each seed's image with its scale-0 image
Similarities = dict[float, dict[int, list[float]]]


def served_scale(config: EvalConfig) -> float:
    """The scale the server is deployed with; the last compared scale when not given (as CLIP's)."""
    return config.served_scale if config.served_scale is not None else config.scales[-1]


def leakage_scales(config: EvalConfig) -> list[float]:
    """Scale 0 first, then the sweep's scales and the served scale, each once."""
    return list(dict.fromkeys([REFERENCE_SCALE, *config.scales, served_scale(config)]))


def leakage_requests(config: EvalConfig) -> list[tuple[int, str, int, float]]:
    """(prompt index, prompt, seed, scale) of every render the measurement needs."""
    scales = leakage_scales(config)
    return [
        (index, prompt, seed, scale)
        for index, prompt in enumerate(config.leakage_prompts)
        for seed in config.seeds
        for scale in scales
    ]


def _image_name(prompt_index: int, seed: int) -> str:
    return f"{LEAKAGE_DIR}/l{prompt_index}-s{seed}.png"


def _pairs(samples: list[Sample], scale: float) -> list[tuple[Sample, Sample]]:
    """(scale 0, ``scale``) per prompt × seed, in request order."""
    base = {(s.prompt_index, s.seed): s for s in samples if s.scale == REFERENCE_SCALE}
    return [(base[s.prompt_index, s.seed], s) for s in samples if s.scale == scale]


def similarities(scorer: ClipScorer, samples: list[Sample]) -> Similarities:
    """The CLIP image cosine of every render of ``leakage_requests`` with its scale-0 image, per
    scale (but 0) and prompt."""
    embeddings = scorer.images([sample.image for sample in samples])
    position = {id(sample): index for index, sample in enumerate(samples)}
    out: Similarities = {}
    for scale in dict.fromkeys(s.scale for s in samples if s.scale != REFERENCE_SCALE):
        for base, other in _pairs(samples, scale):
            cosine = float(embeddings[position[id(base)]] @ embeddings[position[id(other)]])
            out.setdefault(scale, {}).setdefault(base.prompt_index, []).append(min(1.0, max(-1.0, cosine)))
    return out


def _leakage(by_prompt: dict[int, list[float]]) -> float:
    every = [value for values in by_prompt.values() for value in values]
    return round(1 - sum(every) / len(every), 4)


def leakage_by_scale(similar: Similarities) -> dict[float, float]:
    """The leakage of every scale rendered (0 at scale 0, by definition)."""
    return {REFERENCE_SCALE: 0.0, **{scale: _leakage(by_prompt) for scale, by_prompt in similar.items()}}


def leakage_block(
    similar: Similarities, samples: list[Sample], scale: float, seeds: list[int]
) -> LeakageBlock:
    """The report's ``leakage`` block: the served ``scale`` against scale 0."""
    prompts = {sample.prompt_index: sample.prompt for sample in samples}
    # Scale 0 served: every image is its own scale-0 image.
    served = similar.get(scale) or {index: [1.0] * len(seeds) for index in prompts}
    per_prompt = []
    for index, values in served.items():
        similarity = sum(values) / len(values)
        per_prompt.append(
            LeakagePrompt(
                prompt=prompts[index],
                similarity=round(similarity, 4),
                leakage=round(1 - similarity, 4),
                images=[_image_name(index, seed) for seed in seeds],
            )
        )
    return LeakageBlock(scale=scale, seeds=seeds, leakage=_leakage(served), prompts=per_prompt)


def save_leakage_pairs(samples: list[Sample], staging: Path, scale: float) -> None:
    """Each prompt × seed side by side (scale 0, the served ``scale``) under ``leakage/``."""
    (staging / LEAKAGE_DIR).mkdir()
    for base, served in _pairs(samples, scale):
        picture = side_by_side(
            [base.image, served.image], [f"scale {base.scale:g}", f"scale {served.scale:g}"]
        )
        picture.save(staging / _image_name(base.prompt_index, base.seed))
