"""The adapter cache of a backend: the one place LoRA weights enter a pipeline.

``AdapterCache.apply_adapters`` makes a set of (adapter, scale) pairs the active LoRAs (through
``_load_adapter`` → ``_inject_lora`` for adapters not resident yet). ``Backend`` inherits it.

Several adapters are combined as diffusers' ``set_adapters(names, adapter_weights=scales)`` does
(PEFT sums ``scale_i · B_i A_i x`` over the active adapters of a layer). They are activated in a
canonical order (by resolved file and sha256), so the order of a request's list never changes
the floating-point summation order: two requests listing the same adapters in a different order
produce bit-identical images.

An adapter file must apply to the loaded model (``lora_load.py``): one that matches no
layer, or only some of its layers, is refused instead of being served as if it applied.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from zthumb.backends.compiled import CompiledUNet, SlotError, adapter_rank
from zthumb.backends.lora_keys import COMPONENTS
from zthumb.backends.lora_load import AdapterMismatchError, Injected, inject_lora
from zthumb.errors import AdapterLoadError, InvalidRequestError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from zthumb.lora import AdapterRef
    from zthumb.settings import Settings

log = logging.getLogger("zthumb.backends")


class AdapterUse(NamedTuple):
    """One adapter of a request: the file, its scale, and whether it is the pinned env default."""

    ref: AdapterRef
    scale: float
    pin: bool = False


@dataclass(frozen=True)
class AdapterApplied:
    """What ``apply_adapters`` did: ``hit`` is None when no adapter is active.

    ``hit`` is True when every active adapter was resident; ``hits``/``misses`` count them.
    ``adapter`` is the first active adapter (the single-adapter API), ``adapters`` all of them.
    """

    active: bool
    hit: bool | None
    load_seconds: float
    evicted: int = 0
    adapter: AdapterRef | None = None
    adapters: tuple[AdapterRef, ...] = ()
    hits: int = 0
    misses: int = 0


class AdapterCache:
    """Resident LoRA adapters of one pipeline (LRU) and the active set. Mixed into ``Backend``."""

    name: ClassVar[str]
    pipe: Any
    settings: Settings
    compiled: CompiledUNet | None

    def _init_adapters(self) -> None:
        # key (resolved file, sha256) -> adapter name inside the pipeline; LRU order.
        self._adapters: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._display: dict[tuple[str, str], str] = {}
        self._ranks: dict[tuple[str, str], int] = {}
        self._pinned: set[tuple[str, str]] = set()
        self._active: tuple[tuple[str, float], ...] | None = None
        # Adapters with text-encoder layers, and those of them active now: (sha256, scale).
        self._text_encoder_keys: set[tuple[str, str]] = set()
        self._text_encoder_active: tuple[tuple[str, float], ...] = ()
        self._lora_enabled = False
        self._counter = 0
        self.adapter_loads = 0
        self._lock = threading.RLock()
        self._layers: list[Any] | None = None

    def apply_adapter(self, adapter: AdapterRef | None, scale: float, *, pin: bool = False) -> AdapterApplied:
        """Make ``adapter`` at ``scale`` the only active LoRA, or none at all (see ``apply_adapters``)."""
        return self.apply_adapters([] if adapter is None else [AdapterUse(adapter, scale, pin)])

    def apply_adapters(self, uses: Sequence[AdapterUse]) -> AdapterApplied:
        """Make exactly these adapters, at their scales, the active LoRAs.

        No adapter, or only scales of 0, disables LoRA layers entirely, so the output is
        bit-identical to the pipeline without adapters; an adapter at scale 0 among others is
        left out of the active set (not loaded), so it equals the request without it. Adapters
        stay resident in an LRU of ``ZTHUMB_LORA_CACHE_SIZE`` (pinned ones, the env default, do not
        count and are never evicted; the adapters of the current request are never evicted to
        make room for each other); switching between resident adapters only sets PEFT's active
        adapters and scales.
        """
        with self._lock:
            return self._apply_adapters([use for use in uses if use.scale != 0])

    def text_encoder_adapters(self) -> tuple[tuple[str, float], ...]:
        """The active adapters that change the text encoders' output, as (sha256, scale), sorted.

        The prompt cache keys by them. An adapter with UNet layers only (what the trainer exports)
        leaves prompt embeddings as they are, so it is not part of the key; a kohya file with
        text-encoder layers is, in eager mode (PEFT layers in the encoders) and with
        ``ZTHUMB_COMPILE_LORA=fuse`` (merged into their weights); ``slot`` refuses such files.
        """
        return self._text_encoder_active

    def _apply_adapters(self, uses: list[AdapterUse]) -> AdapterApplied:
        self._text_encoder_active = ()
        if not uses:
            if self.compiled is not None:  # same compiled graph, back to the base's output
                self.compiled.silence()
                self._active = None
            elif self._lora_enabled:
                self.pipe.disable_lora()
                self._lora_enabled = False
            return AdapterApplied(active=False, hit=None, load_seconds=0.0)
        if self.compiled is not None and len(uses) > self.compiled.max_adapters:  # refused before too
            raise InvalidRequestError(
                f"the compiled path (ZTHUMB_COMPILE_LORA={self.compiled.strategy}) combines at most "
                f"{self.compiled.max_adapters} adapter(s)",
                field="loras",
                code="loras_unsupported_compiled",
            )

        refs: list[AdapterRef] = []
        pairs: list[tuple[tuple[str, str], str, float]] = []
        hits = misses = evicted = 0
        load_seconds = 0.0
        for use in uses:
            ref = use.ref
            name = self._adapters.get(ref.key)
            if name is None:
                started = time.perf_counter()
                name, ref = self._load_adapter(ref)
                load_seconds += time.perf_counter() - started
                misses += 1
            else:
                hits += 1
            self._adapters.move_to_end(ref.key)
            if use.pin:
                # A replaced default adapter: the old version loses its pin and leaves.
                for stale in [k for k in self._pinned if k[0] == ref.key[0] and k != ref.key]:
                    self._pinned.discard(stale)
                self._pinned.add(ref.key)
            refs.append(ref)
            pairs.append((ref.key, name, use.scale))
        evicted = self._evict(keep={ref.key for ref in refs})
        active = tuple((name, scale) for _, name, scale in sorted(pairs))
        if self._active != active:
            self._activate(active)
            self._active = active
        if not self._lora_enabled and self.compiled is None:
            self.pipe.enable_lora()
            self._lora_enabled = True
        self._text_encoder_active = tuple(
            sorted((key[1], scale) for key, _, scale in pairs if key in self._text_encoder_keys)
        )
        return AdapterApplied(
            active=True,
            hit=misses == 0,
            load_seconds=load_seconds,
            evicted=evicted,
            adapter=refs[0],
            adapters=tuple(refs),
            hits=hits,
            misses=misses,
        )

    def _lora_layers(self) -> list[Any]:
        """The PEFT LoRA layers of every LoRA-capable component (cached until the next load)."""
        if self._layers is None:
            from peft.tuners.tuners_utils import BaseTunerLayer

            layers = []
            for component in COMPONENTS:
                model = getattr(self.pipe, component, None)
                if model is not None:
                    layers += [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
            self._layers = layers
        return self._layers

    def _activate(self, active: tuple[tuple[str, float], ...]) -> None:
        """Same effect as ``pipe.set_adapters(names, adapter_weights=scales)`` with one scale each.

        diffusers' version walks every module of every component and toggles ``requires_grad``
        (for training) on each LoRA weight; at inference only the active adapters and their
        scalings matter, so this walks a cached list of LoRA layers and sets exactly those
        (about 10x faster; tests check it matches ``set_adapters``). A layer that lacks one of
        the adapters skips it in its forward, as it does under ``set_adapters``.
        """
        if self.compiled is not None:
            self.compiled.activate(active)
            return
        names = [name for name, _ in active]
        for layer in self._lora_layers():
            layer._active_adapter = list(names)
            for name, scale in active:
                layer.set_scale(name, scale)

    def _injected_layers(self, name: str) -> int:
        return sum(1 for layer in self._lora_layers() if name in getattr(layer, "lora_A", {}))

    def _load_adapter(self, adapter: AdapterRef) -> tuple[str, AdapterRef]:
        weights = adapter.read()
        if weights.sha256 != adapter.sha256:  # replaced between the stat and the read: trust the bytes
            adapter = replace(adapter, sha256=weights.sha256)
        self._counter += 1
        name = f"zthumb_{self._counter}"
        try:
            with warnings.catch_warnings():
                # PEFT warns that a model holding adapters gets another one: that is the cache.
                warnings.filterwarnings("ignore", message=".*peft_config.*multiple adapters.*")
                expected, text_encoders = self._inject_lora(weights.state_dict, weights.metadata, name)
            self._layers = None
            if self.compiled is None and self._injected_layers(name) < expected:
                # What PEFT really injected, not log text: a belt to check_matches' braces.
                raise AdapterMismatchError(
                    f"only {self._injected_layers(name)} of its {expected} LoRA layers were injected",
                    code="lora_partial_match",
                )
        except (SlotError, AdapterMismatchError) as exc:
            self._drop_partial(name)
            where = "the compiled UNet" if isinstance(exc, SlotError) else "this pipeline"
            raise AdapterLoadError(
                f"{adapter.display_path} cannot be served by {where}: {exc}",
                field=adapter.request_field,
                code=exc.code,
            ) from exc
        except Exception as exc:
            self._drop_partial(name)
            raise AdapterLoadError(
                f"{adapter.display_path} is not a LoRA this SDXL pipeline can load: {exc}",
                field=adapter.request_field,
            ) from exc
        self.adapter_loads += 1
        self._layers = None
        self._adapters[adapter.key] = name
        self._display[adapter.key] = adapter.display_path
        self._ranks[adapter.key] = adapter_rank(weights.state_dict)
        if text_encoders:
            self._text_encoder_keys.add(adapter.key)
        self._active = None  # loading activates the new adapter
        # The same path with an older sha256 is stale: drop it now.
        for stale in [k for k in self._adapters if k[0] == adapter.key[0] and k != adapter.key]:
            if stale not in self._pinned:
                self._delete(stale)
        log.info(
            "adapter loaded",
            extra={"backend": self.name, "lora_path": adapter.display_path, "sha256": adapter.sha256},
        )
        return name, adapter

    def _inject_lora(
        self, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any] | None, name: str
    ) -> Injected:
        """Put one adapter's weights into the pipeline (or the compiled slot); see ``inject_lora``."""
        return inject_lora(self.pipe, self.compiled, state_dict, metadata, name)

    def _drop_partial(self, name: str) -> None:
        self._layers = None
        self._active = None
        if self.compiled is not None:
            self.compiled.forget(name)
            return
        try:
            if any(name in names for names in self.pipe.get_list_adapters().values()):
                self.pipe.delete_adapters([name])
        except Exception:  # pragma: no cover - best effort cleanup
            log.warning("could not clean up a partially loaded adapter", exc_info=True)

    def _evict(self, keep: set[tuple[str, str]]) -> int:
        """Evict least recently used unpinned adapters beyond the cache size, never one in ``keep``.

        A request with more adapters than the cache holds leaves the cache over its size until
        the next request (bounded by ``ZTHUMB_MAX_LORAS_PER_REQUEST``).
        """
        evicted = 0
        unpinned = [k for k in self._adapters if k not in self._pinned]
        while len(unpinned) > self.settings.lora_cache_size:
            victim = next((k for k in unpinned if k not in keep), None)
            if victim is None:
                break
            self._delete(victim)
            unpinned.remove(victim)
            evicted += 1
        return evicted

    def _delete(self, key: tuple[str, str]) -> None:
        name = self._adapters.pop(key)
        self._display.pop(key, None)
        self._ranks.pop(key, None)
        self._text_encoder_keys.discard(key)
        if self.compiled is not None:
            self.compiled.forget(name)
        else:
            self.pipe.delete_adapters([name])
        self._layers = None
        if self._active is not None and any(active == name for active, _ in self._active):
            self._active = None
        log.info("adapter evicted", extra={"backend": self.name, "sha256": key[1]})

    def cached_adapters(self) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._adapters.items())
            active = {name for name, _ in self._active or ()}
        return [
            {
                "backend": self.name,
                "path": self._display.get(key, key[0]),
                "sha256": key[1],
                "rank": self._ranks.get(key),
                "adapter_name": name,
                "pinned": key in self._pinned,
                "active": name in active and (self._lora_enabled or self.compiled is not None),
            }
            for key, name in items
        ]

    def adapter_rank(self, adapter: AdapterRef) -> int | None:
        """The rank of a resident adapter (None if it is not resident, e.g. at scale 0)."""
        return self._ranks.get(adapter.key)

    def has_adapter(self, adapter: AdapterRef) -> bool:
        return adapter.key in self._adapters
