"""The pictures of an evaluation report: each prompt and seed's images side by side, one per LoRA
scale, and how far apart they are in pixels."""

from __future__ import annotations

from typing import Any


def mean_pixel_difference(first: Any, second: Any) -> float:
    """Mean absolute difference over all pixels and channels, 0–255."""
    import numpy as np

    a = np.asarray(first.convert("RGB"), dtype=np.float32)
    b = np.asarray(second.convert("RGB").resize(first.size), dtype=np.float32)
    return float(np.abs(a - b).mean())


# Small evaluation images (the tiny model's 64 px) are enlarged, pixel for pixel, so the
# pairs in the report can be compared by eye.
MIN_TILE_SIDE = 256
TILE_GAP = 6


def side_by_side(images: list[Any], labels: list[str]) -> Any:
    """The images in a row, each with its label in a band above it."""
    from PIL import Image, ImageDraw, ImageFont

    factor = max(1, -(-MIN_TILE_SIDE // min(min(image.size) for image in images)))
    nearest = Image.Resampling.NEAREST
    tiles = [image.resize((image.width * factor, image.height * factor), nearest) for image in images]
    band = 18
    width = sum(tile.width for tile in tiles) + TILE_GAP * (len(tiles) - 1)
    height = max(tile.height for tile in tiles) + band
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    x = 0
    for tile, label in zip(tiles, labels, strict=True):
        canvas.paste(tile, (x, band))
        draw.text((x + 3, 3), label, fill="black", font=font)
        x += tile.width + TILE_GAP
    return canvas
