"""Which adapters a generate request asks for: ``lora_path``/``lora_scale``, ``loras``, or the env default.

Runs in ``Engine.prepare`` (off the device worker): paths are resolved inside the LoRA root and
fingerprinted here, so every refusal (conflicting fields, too many or duplicate adapters, a
path outside the root, several adapters on the compiled path) comes back before the request
queues, naming the field (``lora_path``, ``loras``, ``loras[i].path``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zthumb.backends import AdapterUse
from zthumb.errors import BadRequestError, InvalidRequestError

if TYPE_CHECKING:
    from zthumb.backends import Backend
    from zthumb.lora import AdapterFiles, AdapterRef
    from zthumb.protocol import GenerateRequest, LoraSpec
    from zthumb.settings import Settings


def requested_adapters(
    request: GenerateRequest,
    backend: Backend,
    files: AdapterFiles,
    s: Settings,
    default: AdapterRef | None,
) -> tuple[tuple[AdapterUse, ...], str | None]:
    """The request's adapters (``lora_path`` or ``loras``, else the env default) and their source.

    ``default`` is the env-default adapter as loaded: a request naming its file pins it too.
    """
    uses: tuple[AdapterUse, ...]
    if request.loras is not None:
        if request.lora_path is not None or request.lora_scale is not None:
            raise InvalidRequestError(
                "give either lora_path/lora_scale or loras, not both",
                field="loras",
                code="loras_conflict",
            )
        uses = _loras(request.loras, files, s.max_loras_per_request, default)
        source = "request" if uses else None
        if backend.compiled is not None and len(uses) > backend.compiled.max_adapters:
            raise InvalidRequestError(
                f"backend {backend.name!r} runs compiled (ZTHUMB_COMPILE={s.compile}) with one LoRA slot "
                "(ZTHUMB_COMPILE_LORA=slot), which holds one adapter at a time: loras may have one entry "
                "here (ZTHUMB_COMPILE_LORA=fuse, or running eagerly, combines adapters)",
                field="loras",
                code="loras_unsupported_compiled",
            )
    elif request.lora_path:
        ref = files.ref(request.lora_path)
        scale = request.lora_scale if request.lora_scale is not None else 1.0
        pin = default is not None and ref.file == default.file
        uses, source = (AdapterUse(ref, scale, pin),), "request"
    elif s.lora_path:
        scale = request.lora_scale if request.lora_scale is not None else s.lora_scale
        uses, source = (AdapterUse(files.ref(s.lora_path), scale, True),), "default"
    else:
        if (request.lora_scale or 0.0) > 0:
            raise BadRequestError(
                "lora_scale needs an adapter: give lora_path (no env-default adapter is configured)",
                field="lora_scale",
                code="no_adapter",
            )
        uses, source = (), None
    if any(use.scale > 0 for use in uses) and not backend.supports_lora:
        raise BadRequestError(
            f"backend {backend.name!r} does not support LoRA adapters",
            field="loras" if request.loras is not None else "lora_path",
            code="lora_unsupported",
        )
    return uses, source


def _loras(
    specs: list[LoraSpec], files: AdapterFiles, limit: int, default: AdapterRef | None
) -> tuple[AdapterUse, ...]:
    if len(specs) > limit:
        raise InvalidRequestError(
            f"loras has {len(specs)} adapters; the limit is {limit} (ZTHUMB_MAX_LORAS_PER_REQUEST)",
            field="loras",
            code="too_many_loras",
        )
    uses: list[AdapterUse] = []
    for index, spec in enumerate(specs):
        field = f"loras[{index}].path"
        ref = files.ref(spec.path, field)
        for earlier, use in enumerate(uses):
            if use.ref.file == ref.file:  # the same file under two spellings counts too
                raise InvalidRequestError(
                    f"loras[{index}] names the same adapter as loras[{earlier}] ({ref.display_path}); "
                    "give each adapter once with its combined scale",
                    field=field,
                    code="duplicate_lora",
                )
        pin = default is not None and ref.file == default.file
        uses.append(AdapterUse(ref, spec.scale, pin))
    return tuple(uses)
