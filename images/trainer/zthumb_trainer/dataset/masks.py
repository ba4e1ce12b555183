"""Loss masks: ``<image>.mask.png`` beside an image weights its loss per pixel (white 1: learn it,
black 0: ignore it, grey in between), as kohya's and OneTrainer's masked training do.

The prepare step gives a mask exactly the resize and crop of its image (``prepare_mask``), so the
prepared mask and image line up pixel for pixel; the train step scales it to the latents'
resolution (``latent_mask``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

MASK_SUFFIX = ".mask.png"


class MaskError(ValueError):
    """A mask that cannot weight its image; the message names the file."""


def is_mask(path: Path) -> bool:
    return path.name.lower().endswith(MASK_SUFFIX)


def mask_for(image: Path) -> Path | None:
    """The mask beside ``image`` (``a.jpg`` -> ``a.mask.png``), if there is one."""
    candidate = image.with_name(image.stem + MASK_SUFFIX)
    return candidate if candidate.is_file() else None


def prepare_mask(
    mask_path: Path, image_size: tuple[int, int], resized: tuple[int, int], box: tuple[int, int, int, int]
) -> Any:
    """The mask as the prepared image is: greyscale, resized like it and cropped to ``box``.

    Refused (``MaskError``) when it is unreadable or not the image's size (after the image's EXIF
    rotation): a mask of another size would weight the wrong pixels."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(mask_path) as opened:
            opened.load()
            mask = ImageOps.exif_transpose(opened).convert("L")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise MaskError(f"{mask_path}: not a readable image ({error})") from error
    if mask.size != image_size:
        raise MaskError(
            f"{mask_path}: {mask.size[0]}x{mask.size[1]}, its image is {image_size[0]}x{image_size[1]}"
        )
    return mask.resize(resized, Image.Resampling.BILINEAR).crop(box)


def latent_mask(path: Path, latent_size: tuple[int, int], flip: bool) -> torch.Tensor:
    """A prepared mask as 1 x H x W loss weights in [0, 1] at the latents' (height, width): each
    weight is the mean of the pixels one latent covers."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    weights = torch.from_numpy(array)[None, None]
    weights = torch.nn.functional.interpolate(weights, size=latent_size, mode="area")[0]
    return weights.flip(-1) if flip else weights
