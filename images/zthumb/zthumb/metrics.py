"""Prometheus metrics, on a registry per app so several apps can live in one process (tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
BATCH_WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class PromptCacheCounts(NamedTuple):
    """What a backend's prompt-embedding cache has counted since it was made."""

    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int


class PromptCacheCollector(Collector):
    """The prompt caches' counts, read when scraped: the caches keep plain counters under their
    own lock and know nothing of Prometheus; ``source`` maps backend name to counts."""

    def __init__(self) -> None:
        self.source: Callable[[], Mapping[str, PromptCacheCounts]] = dict

    def collect(self) -> Iterator[Metric]:
        counters = {
            "hits": "Prompts whose embeddings came from the cache (no text encoder ran).",
            "misses": "Prompts that ran the text encoders.",
            "evictions": "Prompt embeddings dropped to stay within ZTHUMB_PROMPT_CACHE_ENTRIES / _MB.",
        }
        gauges = {
            "entries": "Prompt embeddings held in the cache.",
            "bytes": "Bytes of prompt-embedding tensors held in the cache (on the backend's device).",
        }
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            name: CounterMetricFamily(f"zthumb_prompt_cache_{name}", text, labels=["backend"])
            for name, text in counters.items()
        }
        families.update(
            (name, GaugeMetricFamily(f"zthumb_prompt_cache_{name}", text, labels=["backend"]))
            for name, text in gauges.items()
        )
        for backend, counts in self.source().items():
            for name, family in families.items():
                family.add_metric([backend], getattr(counts, name))
        yield from families.values()


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "zthumb_requests_total",
            "Generate requests by backend and HTTP status.",
            ["backend", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "zthumb_request_seconds",
            "Generate request latency (queue + generation + encoding).",
            ["backend", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # ``decoder``: full (the model's VAE) or tiny (settings.DECODER_NAMES, two values): the
        # requests of both decoders differ only in the decoding, so their difference is its cost.
        self.generation_seconds = Histogram(
            "zthumb_generation_seconds",
            "Time the device spent on one generation, decoding the latents included, by decoder.",
            ["backend", "decoder"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("zthumb_queue_depth", "Requests waiting for the device.", registry=r)
        self.inflight = Gauge(
            "zthumb_inflight", "Requests running on the device (the size of the running batch).", registry=r
        )
        self.batch_size = Histogram(
            "zthumb_batch_size",
            "Requests per pipeline call (dynamic batching, ZTHUMB_MAX_BATCH).",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_wait_seconds = Histogram(
            "zthumb_batch_wait_seconds",
            "Time a batch's first request waited for batch-mates (at most ZTHUMB_BATCH_WAIT_MS).",
            buckets=BATCH_WAIT_BUCKETS,
            registry=r,
        )
        self.queue_rejected = Counter(
            "zthumb_queue_rejected_total", "Requests refused with 429 because the queue was full.", registry=r
        )
        self.cancelled = Counter(
            "zthumb_cancelled_total", "Jobs cancelled before or during generation.", ["reason"], registry=r
        )
        self.adapter_hits = Counter(
            "zthumb_adapter_cache_hits_total", "Adapter requests served from memory.", ["backend"], registry=r
        )
        self.adapter_misses = Counter(
            "zthumb_adapter_cache_misses_total",
            "Adapter requests that needed a load.",
            ["backend"],
            registry=r,
        )
        self.adapter_loads = Counter(
            "zthumb_adapter_loads_total", "Adapters loaded from disk.", ["backend"], registry=r
        )
        self.adapter_evictions = Counter(
            "zthumb_adapter_evictions_total", "Adapters evicted from the cache.", ["backend"], registry=r
        )
        self.adapter_load_seconds = Histogram(
            "zthumb_adapter_load_seconds",
            "Time to read and inject one adapter.",
            ["backend"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.compile_recompiles = Counter(
            "zthumb_compile_recompiles_total",
            "torch.compile graphs compiled after warm-up on the compiled path; adapter and scale "
            "switches cause none, a new image size or batch does.",
            ["backend"],
            registry=r,
        )
        self.compiled_requests = Counter(
            "zthumb_compiled_requests_total", "Generations run on the compiled UNet.", ["backend"], registry=r
        )
        self.compile_seconds = Gauge(
            "zthumb_compile_seconds",
            "Startup time of the compiled UNet: compile plus first generation (smaller with a warm cache).",
            ["backend"],
            registry=r,
        )
        # The engine points ``prompt_caches.source`` at its backends' caches.
        self.prompt_caches = PromptCacheCollector()
        r.register(self.prompt_caches)
        self.ready = Gauge("zthumb_ready", "1 once the default backend and adapter are loaded.", registry=r)
        self.backend_loaded = Gauge("zthumb_backend_loaded", "1 per loaded backend.", ["backend"], registry=r)
