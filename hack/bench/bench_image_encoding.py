"""What encoding a generated image costs: PNG, JPEG and WebP at several settings (bench_server's table).

The image is deterministic and shaped like a generation's output for the encoders: smooth colour
gradients and low-frequency shapes with photographic grain on top (pure noise would not compress,
a flat gradient would compress too well). Variants run interleaved, one encode each per round, so
background load on a shared machine hits all of them alike. The server's own settings
(``zthumb.serving.SAVE_OPTIONS``) are the rows marked ``server``; the others are the alternatives
they were chosen from (see the server README, "Image encoding").
"""

from __future__ import annotations

import io
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

# (label, Pillow format, save options): the alternatives timed beside the server's settings.
ALTERNATIVES: list[tuple[str, str, dict[str, Any]]] = [
    ("png level 6 (Pillow default)", "PNG", {"compress_level": 6}),
    ("png level 3", "PNG", {"compress_level": 3}),
    ("png level 1", "PNG", {"compress_level": 1}),
    ("jpeg q95", "JPEG", {"quality": 95}),
    ("jpeg q90", "JPEG", {"quality": 90}),
    ("jpeg q85", "JPEG", {"quality": 85}),
    ("webp q95 (method 4, default)", "WEBP", {"quality": 95}),
    ("webp q90", "WEBP", {"quality": 90}),
    ("webp q85", "WEBP", {"quality": 85}),
    ("webp q90 method 2", "WEBP", {"quality": 90, "method": 2}),
    ("webp q95 method 0", "WEBP", {"quality": 95, "method": 0}),
    ("webp q90 method 0", "WEBP", {"quality": 90, "method": 0}),
]


def realistic_image(size: int = 512, seed: int = 0) -> Any:
    """An RGB PIL image: gradients, a few soft blobs and Gaussian grain (sigma 4), from ``seed``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    channels = [
        200 * x + 30,
        180 * y + 40 * np.sin(6 * x),
        120 + 80 * np.cos(4 * (x + y)),
    ]
    for _ in range(6):  # soft shapes, as objects in a scene
        cx, cy, radius = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
        channels = [channel + rng.uniform(-90, 90) * blob for channel in channels]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def encoder(fmt: str, options: dict[str, Any]) -> Callable[[Any], bytes]:
    def encode(image: Any) -> bytes:
        buffer = io.BytesIO()
        (image.convert("RGB") if fmt == "JPEG" else image).save(buffer, format=fmt, **options)
        return buffer.getvalue()

    return encode


def variants() -> dict[str, Callable[[Any], bytes]]:
    """The server's own encoder per format (``zthumb.serving.encode``), then the alternatives."""
    from zthumb.serving import SAVE_OPTIONS, encode

    rows: dict[str, Callable[[Any], bytes]] = {}
    for fmt, (_, options) in SAVE_OPTIONS.items():
        described = ", ".join(f"{k}={v}" for k, v in options.items())
        rows[f"server {fmt} ({described})"] = lambda image, fmt=fmt: encode([image], fmt)[0]
    rows |= {label: encoder(fmt, options) for label, fmt, options in ALTERNATIVES}
    return rows


def psnr(image: Any, data: bytes) -> float:
    """Peak signal-to-noise ratio of the decoded ``data`` against ``image`` in dB (inf: lossless)."""
    import numpy as np
    from PIL import Image

    source = np.asarray(image.convert("RGB"), dtype=np.float64)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
    mse = float(np.mean((source - decoded) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def measure(size: int, rounds: int, clock: Callable[[], float]) -> dict[str, tuple[list[float], int, float]]:
    """Seconds per encode (one per round, interleaved, after one untimed round), output bytes, PSNR."""
    image = realistic_image(size)
    rows = variants()
    outputs = {name: encode(image) for name, encode in rows.items()}  # also the warm-up round
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, encode in rows.items():
            started = clock()
            encode(image)
            times[name].append(clock() - started)
    return {name: (times[name], len(outputs[name]), psnr(image, outputs[name])) for name in rows}


def print_table(size: int, rounds: int, clock: Callable[[], float] = time.process_time) -> None:
    results = measure(size, rounds, clock)
    base_times, base_bytes, _ = results["png level 6 (Pillow default)"]
    base = statistics.median(base_times)
    print(
        f"\nimage encoding, {size}x{size} RGB (gradients + blobs + grain), {rounds} rounds "
        "interleaved, process CPU time:\n"
    )
    header = ("encoding", "p50 ms", "p95 ms", "bytes", "time/png6", "bytes/png6", "PSNR dB")
    print(
        f"| {header[0]:<40} | {header[1]:>7} | {header[2]:>7} | {header[3]:>9} | {header[4]:>9} "
        f"| {header[5]:>10} | {header[6]:>8} |"
    )
    print(f"|{'-' * 42}|{'-' * 9}|{'-' * 9}|{'-' * 11}|{'-' * 11}|{'-' * 12}|{'-' * 10}|")
    for name, (times, nbytes, quality) in results.items():
        p50 = statistics.median(times)
        p95 = sorted(times)[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        print(
            f"| {name:<40} | {p50 * 1000:7.2f} | {p95 * 1000:7.2f} | {nbytes:9,} | "
            f"{p50 / base:8.2f}x | {nbytes / base_bytes:9.2f}x | "
            f"{'lossless' if math.isinf(quality) else f'{quality:.1f}':>8} |"
        )
