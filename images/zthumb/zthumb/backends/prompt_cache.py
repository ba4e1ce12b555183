"""Prompt embeddings kept for the next request with the same prompt: an LRU bounded by entries and bytes.

Encoding a prompt runs both CLIP text encoders (twice with a negative prompt) on every request;
thumbnail traffic repeats prompts, so ``Backend.encode_prompt`` looks the conditioning up here
first (the batched path calls it once per member). The key is built there: it holds everything
the text encoders' output depends on. The bytes counted are those of the tensors' storages (a view
holds its whole storage), on the backend's device.

Nobody downstream may change a cached tensor: ``get_or_encode`` hands out clones, so whatever the
pipeline does to its inputs, the stored entry stays what the encoders produced.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from zthumb.metrics import PromptCacheCounts

MIB = 1024 * 1024


def tensor_bytes(conditioning: Any) -> int:
    """Bytes held by the tensors of a dataclass (compel's ``LabelledConditioning``), each storage once."""
    import torch

    storages: dict[int, int] = {}
    for field in dataclasses.fields(conditioning):
        value = getattr(conditioning, field.name)
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def cloned(conditioning: Any) -> Any:
    """The same conditioning with every tensor copied (the caller may do anything to it)."""
    import torch

    changes = {
        field.name: value.clone()
        for field in dataclasses.fields(conditioning)
        if isinstance(value := getattr(conditioning, field.name), torch.Tensor)
    }
    return dataclasses.replace(conditioning, **changes)


class PromptCache:
    """An LRU of encoded prompts; ``max_bytes`` 0 turns it off (every lookup encodes, nothing is kept).

    Thread-safe: the worker thread looks up and stores while ``/metrics`` reads the counts from the
    event loop. Encoding runs outside the lock; two threads missing the same key both encode it
    and the second stores the same value again.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 and self.max_entries > 0

    def get_or_encode(self, key: Hashable, encode: Callable[[], Any]) -> Any:
        """A copy of the cached conditioning for ``key``, or ``encode()``'s, kept for next time.

        An ``encode`` that raises (an unparsable prompt) stores nothing and counts as a miss.
        """
        if not self.enabled:
            return encode()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self._hits += 1
            else:
                self._misses += 1
        if entry is not None:
            return cloned(entry[0])
        conditioning = encode()
        self._store(key, conditioning)
        return cloned(conditioning)

    def _store(self, key: Hashable, conditioning: Any) -> None:
        size = tensor_bytes(conditioning)
        if size > self.max_bytes:  # would evict everything and still not fit
            return
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= previous[1]
            self._entries[key] = (conditioning, size)
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, evicted_size) = self._entries.popitem(last=False)
                self._bytes -= evicted_size
                self._evictions += 1

    def counts(self) -> PromptCacheCounts:
        with self._lock:
            return PromptCacheCounts(
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                entries=len(self._entries),
                bytes=self._bytes,
            )
