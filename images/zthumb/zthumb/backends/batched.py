"""Several requests in one pipeline call: each keeps its prompt, negative prompt, seed and count.

The requests share everything else (``zthumb.batching.batch_key`` says who may). Each request's
images get their initial noise (and any scheduler noise) from that request's own CPU
``torch.Generator``, passed to diffusers as a per-image generator list: the generator of a request
with ``num_images`` n appears n times in a row, so it draws the same numbers in the same order as
when the request runs alone. A prompt that compel cannot parse is answered with its own 422 and
left out of the call.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from zthumb.backends.tiny_decoder import pipeline_output_type, to_images
from zthumb.errors import GenerationCancelledError

if TYPE_CHECKING:
    from PIL.Image import Image

    from zthumb.backends.base import Backend, GenerationParams

Outcome = list["Image"] | Exception


def generate_batch(
    backend: Backend, items: Sequence[GenerationParams], cancels: Sequence[threading.Event]
) -> list[Outcome]:
    """One list of images (or the request's own error) per item, in order."""
    outcomes: list[Outcome | None] = [None] * len(items)
    encoded: dict[int, Any] = {}
    for index, params in enumerate(items):
        try:
            encoded[index] = backend.encode_prompt(params)
        except Exception as exc:  # this request's prompt only; its batch-mates go on
            outcomes[index] = exc
    # Prompts longer than one CLIP window give longer embeddings, and a missing negative prompt is
    # filled in by the pipeline for the whole call: one call per shape, never padding (which would
    # change the image).
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, cond in encoded.items():
        shape = (tuple(cond.embeds.shape), cond.negative_embeds is None)
        groups.setdefault(shape, []).append(index)
    for members in groups.values():
        images = _one_call(
            backend, [items[i] for i in members], [encoded[i] for i in members], [cancels[i] for i in members]
        )
        for index, request_images in zip(members, images, strict=True):
            outcomes[index] = request_images
    return [outcome if outcome is not None else RuntimeError("no outcome") for outcome in outcomes]


def _repeat(tensor: Any, count: int) -> Any:
    """What the pipeline does for ``num_images_per_prompt`` on a one-prompt batch."""
    import torch

    return torch.cat([tensor] * count) if count > 1 else tensor


def _one_call(
    backend: Backend, items: list[GenerationParams], conds: list[Any], cancels: Sequence[threading.Event]
) -> list[list[Image]]:
    import torch

    first = items[0]
    counts = [params.num_images for params in items]
    generators: list[torch.Generator] = []
    for params in items:
        generators += [torch.Generator("cpu").manual_seed(params.seed)] * params.num_images

    def joined(name: str) -> Any:
        parts = [getattr(cond, name) for cond in conds]
        if any(part is None for part in parts):
            return None
        return torch.cat([_repeat(part, count) for part, count in zip(parts, counts, strict=True)])

    def on_step_end(
        _pipe: Any, _step: int, _timestep: Any, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        # A request cancelled inside a batch is answered at once (499) by its caller; the call
        # stops only when every request in it is cancelled, so batch-mates still get their images.
        if all(cancel.is_set() for cancel in cancels):
            raise GenerationCancelledError("generation cancelled")
        return callback_kwargs

    result = backend.pipe(
        prompt_embeds=joined("embeds"),
        pooled_prompt_embeds=joined("pooled_embeds"),
        negative_prompt_embeds=joined("negative_embeds"),
        negative_pooled_prompt_embeds=joined("negative_pooled_embeds"),
        width=first.width,
        height=first.height,
        num_inference_steps=first.steps,
        guidance_scale=first.guidance_scale,
        num_images_per_prompt=1,
        generator=generators,
        callback_on_step_end=on_step_end,
        output_type=pipeline_output_type(first.decoder),
    )
    images = to_images(backend.pipe, backend.tiny_decoder, result.images, first.decoder)
    out: list[list[Image]] = []
    for count in counts:
        out.append(images[:count])
        images = images[count:]
    return out
