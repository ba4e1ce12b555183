"""What ``spec.training.captionDropout`` and ``randomFlip`` do to each sample of a micro-batch, as a
pure function of (seed, micro-step, row of the global batch).

Like the data order (``batches.py``), the choices need no state: a resumed run makes exactly the
choices the uninterrupted run would have, and every rank draws the whole global batch's choices
and keeps its own rows, so N processes choose what one process with the global batch chooses. Each
option draws from a stream of its own, so turning one on does not change the other's choices.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

FLIP_PROBABILITY = 0.5


@dataclass(frozen=True)
class SampleChoice:
    drop_caption: bool = False  # train on the empty caption (trigger word included)
    flip: bool = False  # mirror the image left to right (and its crop conditioning)


def sample_choices(
    seed: int, micro_step: int, size: int, rows: list[int], *, caption_dropout: float, random_flip: bool
) -> list[SampleChoice]:
    """The choices for this rank's ``rows`` of micro-step ``micro_step``'s global batch of ``size``."""
    drops = _draws("caption-dropout", seed, micro_step, size) if caption_dropout else None
    flips = _draws("random-flip", seed, micro_step, size) if random_flip else None
    return [
        SampleChoice(
            drop_caption=drops is not None and drops[row] < caption_dropout,
            flip=flips is not None and flips[row] < FLIP_PROBABILITY,
        )
        for row in rows
    ]


def _draws(stream: str, seed: int, micro_step: int, size: int) -> list[float]:
    # A string seed is hashed with SHA-512 by ``random``: the same draws in every process and Python.
    generator = random.Random(f"{stream}:{seed}:{micro_step}")
    return [generator.random() for _ in range(size)]
