"""A synthetic image-caption dataset in the layout ``prepare-dataset`` reads (see DATASETS.md).

Each image is a few coloured shapes on a plain background, drawn from a seeded
random generator, with a same-name ``.txt`` caption that names what is drawn. The
pictures are simple on purpose: a tiny model can fit them in a few steps, so a LoRA
trained on them visibly changes the output.
"""

from __future__ import annotations

import random
from pathlib import Path

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 190),
}
SHAPES = ("circle", "square")


def write_synthetic_dataset(
    directory: Path,
    count: int = 8,
    size: tuple[int, int] = (96, 96),
    seed: int = 0,
    image_format: str = "png",
) -> list[Path]:
    """Write ``count`` images with captions into ``directory``; return the image paths."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(count):
        background, colour = rng.sample(sorted(COLOURS), 2)
        shape = rng.choice(SHAPES)
        image = Image.new("RGB", size, COLOURS[background])
        draw = ImageDraw.Draw(image)
        width, height = size
        radius = rng.randint(min(size) // 6, min(size) // 3)
        cx, cy = rng.randint(radius, width - radius), rng.randint(radius, height - radius)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        if shape == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        else:
            draw.rectangle(box, fill=COLOURS[colour])
        path = directory / f"{index:04d}.{image_format}"
        image.save(path)
        path.with_suffix(".txt").write_text(f"a {colour} {shape} on a {background} background\n")
        written.append(path)
    return written
