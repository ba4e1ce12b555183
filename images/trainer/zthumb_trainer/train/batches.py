"""The data order: which images form micro-batch ``n`` of a run, as a pure function of (seed, step).

A resumed run therefore sees exactly the batches the uninterrupted run would have, and several
processes together see the batches one process with the global batch size sees.
"""

from __future__ import annotations

import random

import torch

from zthumb_trainer.dataset.prepare import ManifestEntry, PreparedDataset, resized_size


def load_pixels(dataset: PreparedDataset, entry: ManifestEntry) -> torch.Tensor:
    """One prepared image as a [-1, 1] CHW tensor."""
    import numpy as np
    from PIL import Image

    with Image.open(dataset.directory / entry.image) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def time_ids(entry: ManifestEntry, flipped: bool = False) -> list[int]:
    """(original size, crop top-left, target size), each as (height, width)/(top, left).

    A horizontally flipped sample is the mirror image of the crop, so its crop's left edge is
    mirrored too: the crop lies as far from the resized image's right edge as it did from its left
    (``resized_width - crop_left - width``, in the resized frame that ``crop_left`` is measured in;
    where the image was not resized that is ``original_width - crop_left - width``)."""
    crop_left = entry.crop_left
    if flipped:
        resized_width, _ = resized_size(
            entry.original_width, entry.original_height, entry.width, entry.height
        )
        crop_left = resized_width - entry.crop_left - entry.width
    return [
        entry.original_height,
        entry.original_width,
        entry.crop_top,
        crop_left,
        entry.height,
        entry.width,
    ]


def epoch_batches(dataset: PreparedDataset, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: same-bucket indices, shuffled by (seed, epoch) only."""
    generator = random.Random(seed * 1_000_003 + epoch)
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index, entry in enumerate(dataset.entries):
        by_bucket.setdefault((entry.width, entry.height), []).append(index)
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):
        indices = by_bucket[bucket]
        generator.shuffle(indices)
        batches += [indices[start : start + batch_size] for start in range(0, len(indices), batch_size)]
    generator.shuffle(batches)
    return batches


class BatchSchedule:
    """Micro-batch ``n`` of the whole run, for any ``n``: resuming needs no data-loader state.

    Batches are drawn at the global size (``batch_size × world_size``, one bucket each) and rank
    ``r`` takes its rows of each, so ``world_size`` processes see together exactly the batches one
    process with the global batch size sees. With one process this is the plain schedule.
    """

    def __init__(
        self, dataset: PreparedDataset, batch_size: int, seed: int, world_size: int, rank: int
    ) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.world_size, self.rank = world_size, rank
        self._epochs: dict[int, list[list[int]]] = {}

    def global_batch(self, micro_step: int) -> list[int]:
        per_epoch = len(self._epoch(0))
        epoch, position = divmod(micro_step, per_epoch)
        return self._epoch(epoch)[position]

    def rows(self, micro_step: int) -> tuple[list[int], int]:
        """This rank's positions in the global batch, and the global batch's size."""
        size = len(self.global_batch(micro_step))
        return rank_rows(size, self.world_size, self.rank), size

    def batch(self, micro_step: int) -> list[int]:
        indices = self.global_batch(micro_step)
        return [indices[row] for row in self.rows(micro_step)[0]]

    def _epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epochs:
            self._epochs = {
                epoch: epoch_batches(self.dataset, self.batch_size * self.world_size, self.seed, epoch)
            }
        return self._epochs[epoch]


def rank_rows(size: int, world_size: int, rank: int) -> list[int]:
    """Contiguous, near-equal shares of a global batch of ``size``; every rank gets at least one row
    (a bucket's last, short batch smaller than the world repeats rows, so no rank sits idle)."""
    if size < world_size:
        return [rank % size]
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return list(range(start, start + base + (1 if rank < extra else 0)))
