"""Which prepared images ``spec.dataset.holdout`` keeps out of training.

Each image gets a score from the SHA-256 of its source path (its name in the dataset), so the
split depends on names only, never on the order or number of images:

* a fraction (below 1) holds out every image whose score falls below it, so adding images never
  moves an image already there from one side to the other (at least one image is held out);
* a count holds out that many images with the lowest scores, so an added image moves at most one
  image back into training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HOLDOUT_FIELD = "spec.dataset.holdout"


class HoldoutError(ValueError):
    """The holdout leaves no image to train on; the message names ``spec.dataset.holdout``."""


def name_score(source: str) -> float:
    """A number in [0, 1) that only the name decides."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def held_out(sources: Sequence[str], holdout: float) -> set[str]:
    """The names (of ``sources``) kept out of training for ``holdout``; refuses one that keeps every
    image out."""
    if holdout <= 0:
        return set()
    ranked = sorted(sources, key=lambda source: (name_score(source), source))
    if holdout < 1:
        chosen = {source for source in sources if name_score(source) < holdout} or set(ranked[:1])
    else:
        chosen = set(ranked[: int(holdout)])
    if len(chosen) >= len(sources):
        raise HoldoutError(
            f"{HOLDOUT_FIELD}: {holdout:g} holds out {len(chosen)} of the {len(sources)} usable "
            "image(s) and leaves none to train on; lower it (at least 1 image must stay in training)"
        )
    return chosen
