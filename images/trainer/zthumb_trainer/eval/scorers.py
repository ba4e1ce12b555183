"""The eval's scoring models, loaded once per eval before the server is asked (a bad spec fails in
seconds), and every metric block computed from them after the renders: CLIP-T / CLIP-I
(``clip.py``), leakage (``leakage.py``), DINO (``dino.py``) and the aesthetic score
(``aesthetic.py``, on the CLIP image embeddings computed once for CLIP-I)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zthumb_contract.eval_report import AestheticBlock, DinoBlock, LeakageBlock

from zthumb_trainer.eval.aesthetic import AestheticError, AestheticHead, aesthetic_block, load_aesthetic
from zthumb_trainer.eval.clip import clip_block, load_clip
from zthumb_trainer.eval.clip_metrics import ClipError, ClipScorer
from zthumb_trainer.eval.config import EvalConfig, Sample
from zthumb_trainer.eval.dino import DinoError, DinoScorer, dino_block, load_dino
from zthumb_trainer.eval.leakage import leakage_block, leakage_by_scale, served_scale, similarities

# What a scoring model that cannot be used raises; the message names its spec field.
ScorerError = (ClipError, DinoError, AestheticError)


@dataclass
class Scorers:
    clip: ClipScorer | None = None
    dino: DinoScorer | None = None
    aesthetic: AestheticHead | None = None


@dataclass
class Scores:
    clip: dict[str, Any] | None = None
    leakage: LeakageBlock | None = None
    leakage_by_scale: dict[float, float] | None = None  # every scale's leakage, for the sweep
    dino: DinoBlock | None = None
    aesthetic: AestheticBlock | None = None


def load_scorers(config: EvalConfig) -> Scorers:
    """Every enabled model, fetched and verified first (raises one of ``ScorerError``)."""
    clip = load_clip(config)
    aesthetic = None
    if clip is not None:  # the spec refuses aesthetic without clip; an eval without paths has neither
        aesthetic = load_aesthetic(config, int(clip.model.config.projection_dim))
    return Scorers(clip=clip, dino=load_dino(config), aesthetic=aesthetic)


def score(config: EvalConfig, scorers: Scorers, samples: list[Sample], unasked: list[Sample]) -> Scores:
    """The metric blocks of the renders (``unasked``: the leakage prompts' renders); each sample's
    own numbers go into its ``scores``, where the sweep reads them."""
    scores = Scores()
    if scorers.clip is not None:
        embeddings = scorers.clip.images([sample.image for sample in samples])
        scores.clip = clip_block(config, scorers.clip, samples, embeddings)
        if unasked:
            similar = similarities(scorers.clip, unasked)
            scores.leakage = leakage_block(similar, unasked, served_scale(config), config.seeds)
            scores.leakage_by_scale = leakage_by_scale(similar)
        if scorers.aesthetic is not None:
            scores.aesthetic = aesthetic_block(config, scorers.aesthetic, samples, embeddings)
    if scorers.dino is not None:
        scores.dino = dino_block(config, scorers.dino, samples)
    return scores
