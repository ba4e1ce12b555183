"""The compiled path (``ZTHUMB_COMPILE``): a ``torch.compile``'d UNet whose adapters never recompile it.

``CompiledUNet`` compiles the UNet and warms it up (``/readyz`` turns 200 only after that); how
adapters reach the compiled graph is its subclass's, chosen by ``ZTHUMB_COMPILE_LORA``:

- ``fuse`` (default, ``compiled_fused.FusedUNet``): the graph is the plain base UNet's. A request's
  adapters are merged into the weights in place (``W = W0 + Σ scale·alpha/r·B·A``, in fp32, rounded
  once), the touched base weights restored from a copy when the set changes. Same speed as the
  compiled base, any rank, several adapters per request; ``lora_scale: 0`` restores ``W0`` exactly.
- ``slot`` (``SlotUNet``, below): one fixed-rank LoRA slot compiled into the graph, adapters
  hot-swapped into it. No copy of the base weights, the LoRA branch unfused (as eager), but every
  image pays the slot's matmuls, and one adapter per request up to the slot rank.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from zthumb.backends.lora_keys import peft_named

if TYPE_CHECKING:
    import torch

log = logging.getLogger("zthumb.compiled")

_graphs_seen = 0  # torch._dynamo's unique-graph count at the last look (one process, one device worker)


class SlotError(ValueError):
    """An adapter the compiled slot cannot take without recompiling; ``code`` goes to the client."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def compiled_graphs() -> int:
    """How many graphs torch._dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def take_new_graphs() -> int:
    """Graphs compiled since the last call (or the last warm-up): after warm-up, recompilations."""
    global _graphs_seen
    now = compiled_graphs()
    new, _graphs_seen = max(0, now - _graphs_seen), now
    return new


def configure_inductor_cache(cache_dir: Path | None) -> str | None:
    """Point inductor's on-disk caches (FX graphs, AOT autograd, Triton kernels) at ``cache_dir``.

    A restarted pod with the same volume then loads compiled artifacts instead of compiling them
    again (dynamo still traces). ``None`` leaves torch's default (``TORCHINDUCTOR_CACHE_DIR`` or
    a temporary directory). Returns the directory in use.
    """
    import torch._functorch.config
    import torch._inductor.config

    # On by default in current torch; set in case an environment variable turned them off.
    for config, name in (
        (torch._inductor.config, "fx_graph_cache"),
        (torch._functorch.config, "enable_autograd_cache"),
    ):
        if hasattr(config, name):
            setattr(config, name, True)
    if cache_dir is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning(
                "ZTHUMB_COMPILE_CACHE_DIR=%s is not writable (%s); using torch's default cache",
                cache_dir,
                exc,
            )
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir
    except ImportError:  # older torch
        return os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return inductor_cache_dir()


def adapter_rank(state_dict: dict[str, torch.Tensor]) -> int:
    """The largest LoRA rank in a state dict (diffusers, PEFT or kohya key names)."""
    rank = 0
    for key, value in state_dict.items():
        if value.ndim < 2:
            continue
        if any(part in key for part in ("lora_A", "lora.down", "lora_down")):
            rank = max(rank, int(value.shape[0]))
        elif any(part in key for part in ("lora_B", "lora.up", "lora_up")):
            rank = max(rank, int(value.shape[1]))
    return rank


class CompiledUNet:
    """The compiled UNet: compile, warm-up, and the adapter interface its strategies implement."""

    strategy: ClassVar[str]

    def __init__(self, pipe: Any, *, mode: str) -> None:
        self.pipe = pipe
        self.mode = mode
        self.fullgraph = True
        self.compile_seconds = 0.0
        self.warmup_seconds = 0.0
        self.cache_dir: str | None = None
        self.max_adapters = 1  # adapters one request may combine

    def prepare(self) -> dict[str, Any]:
        """Before compiling: set up what adapters go through; returns what the startup log says of it."""
        raise NotImplementedError

    def compile(self) -> None:
        """Compile the UNet in place (``nn.Module.compile``: parameter names stay as they are)."""
        options: dict[str, Any] = {"fullgraph": self.fullgraph}
        if self.mode != "default":
            options["mode"] = self.mode
        self.pipe.unet.compile(**options)

    def warm_up(self, generate: Callable[[], Any]) -> None:
        """The first generation compiles; it falls back to graph breaks if one full graph fails."""
        import torch

        started = time.perf_counter()
        try:
            generate()
        except Exception as exc:  # a graph break under fullgraph=True: compile again without it
            if not self.fullgraph or not isinstance(exc, torch._dynamo.exc.Unsupported):
                raise
            log.warning("the UNet does not compile as one graph (%s); compiling with graph breaks", exc)
            torch._dynamo.reset()
            self.fullgraph = False
            self.compile()
            generate()
        self.compile_seconds = time.perf_counter() - started
        started = time.perf_counter()
        generate()  # the second call runs compiled code only (and records CUDA graphs, if any)
        self.warmup_seconds = time.perf_counter() - started
        take_new_graphs()  # recompiles count from here

    # --- adapters (the adapter cache calls these under its lock) ------------------------------
    def load(
        self, state_dict: dict[str, torch.Tensor], network_alphas: Any, metadata: Any, name: str
    ) -> None:
        """Keep adapter ``name`` resident (raising ``SlotError`` for one that cannot be served)."""
        raise NotImplementedError

    def activate(self, active: Sequence[tuple[str, float]]) -> None:
        """Serve exactly these resident adapters at these scales (at most ``max_adapters``)."""
        raise NotImplementedError

    def silence(self) -> None:
        """``lora_scale: 0`` / no adapter: the compiled base's output, bit for bit."""
        raise NotImplementedError

    def forget(self, name: str) -> None:
        raise NotImplementedError

    def resident_bytes(self) -> int:
        raise NotImplementedError


# component -> (its weights under PEFT's names, its LoraConfig)
LoraWeights = dict[str, tuple[dict[str, "torch.Tensor"], Any]]
NOT_PLAIN_LORA = ("lora_magnitude_vector", "dora_scale", "lokr_")


def lora_weights(
    pipe: Any,
    state_dict: dict[str, torch.Tensor],
    network_alphas: Any,
    metadata: Any,
    *,
    components: tuple[str, ...],
    refusal: str,
    name: str,
) -> LoraWeights:
    """An adapter's weights per component under PEFT's names (``<module>.lora_A.weight``) and each
    component's LoraConfig, as diffusers 0.42 derives them (``load_lora_adapter`` for the UNet,
    ``_load_lora_into_text_encoder`` for the text encoders). What the compiled path cannot serve is
    a ``SlotError``: layers of components outside ``components`` (``refusal`` says why), DoRA/LoKr."""
    from diffusers.utils.peft_utils import _create_lora_config

    if not state_dict:
        raise SlotError("it holds no LoRA layers", code="lora_invalid")
    foreign = sorted({key.split(".", 1)[0] for key in state_dict} - set(components))
    if foreign:
        raise SlotError(
            f"it has LoRA layers for {', '.join(foreign)}; {refusal}", code="lora_unsupported_compiled"
        )
    if any(marker in key for key in state_dict for marker in NOT_PLAIN_LORA):
        raise SlotError(
            "it is not a plain LoRA (DoRA/LoKr); the compiled path serves plain LoRA",
            "lora_unsupported_compiled",
        )
    result: LoraWeights = {}
    for component, weights in peft_named(pipe, state_dict).items():
        prefix = f"{component}."
        alphas = None
        if network_alphas:
            alphas = {k.removeprefix(prefix): v for k, v in network_alphas.items() if k.startswith(prefix)}
        meta = None
        if metadata:
            meta = {k.removeprefix(prefix): v for k, v in metadata.items() if k.startswith(prefix)} or None
        if component == "unet":  # the rank per module as load_lora_adapter keys it
            ranks = {f"^{key}": int(value.shape[1]) for key, value in weights.items() if "lora_B" in key}
            model_state = pipe.unet.state_dict()
            config = _create_lora_config(
                weights, alphas, meta, ranks, model_state_dict=model_state, adapter_name=name
            )
        else:  # as _load_lora_into_text_encoder keys it
            ranks = {key: int(value.shape[1]) for key, value in weights.items() if "lora_B" in key}
            config = _create_lora_config(weights, alphas, meta, ranks, is_unet=False)
        result[component] = (weights, config)
    return result
