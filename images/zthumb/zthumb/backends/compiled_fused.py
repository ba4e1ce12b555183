"""The ``fuse`` strategy of the compiled path (``ZTHUMB_COMPILE_LORA=fuse``, the default).

The compiled graph is the plain base UNet's: no LoRA module is ever added to it. A request's
adapters are merged into the weights of the layers they train (in the UNet, and in the text
encoders, which run eagerly), in place:

    W = W0 + Σ_i scale_i · (alpha_i / r_i) · B_i @ A_i

computed in fp32 from the base weight ``W0`` and rounded once to the serving dtype. ``W0`` is copied
the first time a layer is touched; when the active set changes, every layer the old set touched
is restored from that copy before the new set is merged, so nothing drifts however many switches
happen, and no adapter (or ``lora_scale: 0``) gives back ``W0`` exactly: the compiled base's
image, bit for bit. The adapters are merged in the cache's canonical order, so a request's list
order never changes the result.

Why this is the default: every image runs at the compiled base's speed (the slot strategy pays
its LoRA matmuls on every image: on an H100, 3.37 s per 1024² image against 2.84 s for the eager
base, with a rank-64 slot), any rank is served, and
several adapters combine in one request. What it costs: a copy of each touched base weight (all
attention projections of SDXL's UNet: 1.78 GiB in bf16) and, on a change of adapter or
scale, a merge of each touched layer (one small matmul each, milliseconds on a GPU). The merge
rounds ``W0 + ΔW`` to the serving dtype, as diffusers' ``fuse_lora`` does, so images differ from
the unfused eager path by that rounding (the tests state the tolerance); a parameter is only ever
written in place, so the compiled graph (and its CUDA graphs) never sees a new tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zthumb.backends.compiled import CompiledUNet, SlotError, lora_weights
from zthumb.backends.lora_keys import COMPONENTS

if TYPE_CHECKING:
    import torch


@dataclass
class _Layer:
    """One LoRA layer of a resident adapter: its factors on the device and alpha/r."""

    down: torch.Tensor  # A: (r, in) or (r, in, kh, kw)
    up: torch.Tensor  # B: (out, r) or (out, r, 1, 1)
    scaling: float

    def add_to(self, merged: torch.Tensor, scale: float) -> None:
        """``merged += scale · alpha/r · B @ A`` in fp32 (``merged``: the weight flattened to 2-D),
        one ``addmm_`` so that the product is never materialised on its own."""
        merged.addmm_(self.up.flatten(1).float(), self.down.flatten(1).float(), alpha=scale * self.scaling)


class FusedUNet(CompiledUNet):
    """The compiled base UNet; adapters merged into its (and the text encoders') weights per request."""

    strategy = "fuse"

    def __init__(self, pipe: Any, *, mode: str, max_adapters: int) -> None:
        super().__init__(pipe, mode=mode)
        self.max_adapters = max_adapters
        self._resident: dict[str, dict[str, _Layer]] = {}  # adapter -> '<component>.<module>' -> layer
        self._pristine: dict[str, torch.Tensor] = {}  # '<component>.<module>' -> W0
        # '<component>.<module>' -> its weight Parameter, looked up once at load, not on every switch
        self._weights: dict[str, torch.Tensor] = {}
        self._merged: set[str] = set()  # modules whose weight is not W0 now
        self._applied: tuple[tuple[str, float], ...] | None = ()  # None: unknown, merge again

    def prepare(self) -> dict[str, Any]:
        return {}  # nothing enters the graph

    def load(
        self, state_dict: dict[str, torch.Tensor], network_alphas: Any, metadata: Any, name: str
    ) -> None:
        """Check the adapter against the pipeline's layers and keep its factors on the device."""
        from peft.utils.other import get_pattern_key

        by_component = lora_weights(
            self.pipe, state_dict, network_alphas, metadata, components=COMPONENTS, refusal="", name=name
        )
        layers: dict[str, _Layer] = {}
        for component, (weights, config) in by_component.items():
            if any(not key.endswith(("lora_A.weight", "lora_B.weight")) for key in weights):
                raise SlotError(
                    "it has LoRA biases, which the compiled path does not merge", "lora_unsupported_compiled"
                )
            for module_name in sorted({key.rsplit(".lora_", 1)[0] for key in weights}):
                layer = f"{component}.{module_name}"
                down = weights.get(f"{module_name}.lora_A.weight")
                up = weights.get(f"{module_name}.lora_B.weight")
                weight = self._weights[layer] if layer in self._weights else self._find_weight(layer)
                if down is None or up is None or weight is None:
                    raise SlotError(
                        f"its layer {layer} is not a LoRA pair on a Linear or Conv2d layer of the pipeline",
                        code="lora_unsupported_compiled",
                    )
                if (up.shape[0], *down.shape[1:]) != tuple(weight.shape) or down.shape[0] != up.shape[1]:
                    raise SlotError(
                        f"its layer {layer} has shapes A {tuple(down.shape)}, B {tuple(up.shape)}, which "
                        f"do not fit the model's weight {tuple(weight.shape)}",
                        code="lora_invalid",
                    )
                rank = config.rank_pattern.get(
                    get_pattern_key(config.rank_pattern.keys(), module_name), config.r
                )
                alpha = config.alpha_pattern.get(
                    get_pattern_key(config.alpha_pattern.keys(), module_name), config.lora_alpha
                )
                self._weights[layer] = weight
                layers[layer] = _Layer(
                    down=down.to(weight.device, weight.dtype),
                    up=up.to(weight.device, weight.dtype),
                    scaling=alpha / math.sqrt(rank) if config.use_rslora else alpha / rank,
                )
        if not layers:
            raise SlotError("it holds no LoRA layers", code="lora_invalid")
        self._resident[name] = layers

    def activate(self, active: Sequence[tuple[str, float]]) -> None:
        """Restore what the last set merged, then merge ``active`` (unless it is already merged)."""
        import torch

        wanted = tuple(active)
        if wanted == self._applied:
            return
        terms: dict[str, list[tuple[_Layer, float]]] = {}
        for name, scale in wanted:
            for module_name, layer in self._resident[name].items():
                terms.setdefault(module_name, []).append((layer, scale))
        self._applied = None  # until every layer is written
        with torch.no_grad():
            for module_name in self._merged - terms.keys():
                self._restore(module_name)
            for module_name, layer_terms in terms.items():
                weight = self._weights[module_name]
                pristine = self._pristine.get(module_name)
                if pristine is None:  # first touched now: the weight is still W0
                    pristine = self._pristine[module_name] = weight.detach().clone()
                merged = pristine.to(torch.float32, copy=True).flatten(1)
                for layer, scale in layer_terms:
                    layer.add_to(merged, scale)
                weight.copy_(merged.view_as(weight))  # one rounding to the serving dtype, in place
                self._merged.add(module_name)
        self._applied = wanted

    def silence(self) -> None:
        """Every merged layer back to its base weight: the compiled base, bit for bit."""
        import torch

        self._applied = None
        with torch.no_grad():
            for module_name in list(self._merged):
                self._restore(module_name)
        self._applied = ()

    def forget(self, name: str) -> None:
        self._resident.pop(name, None)
        if self._applied and any(active == name for active, _ in self._applied):
            self._applied = None  # its layers stay merged until the next activate restores them

    def resident_bytes(self) -> int:
        """The adapters' factors and the base weights kept for restoring."""
        factors = sum(
            t.numel() * t.element_size() for layers in self._resident.values() for layer in layers.values()
            for t in (layer.down, layer.up)
        )  # fmt: skip
        return factors + sum(t.numel() * t.element_size() for t in self._pristine.values())

    def _restore(self, module_name: str) -> None:
        self._weights[module_name].copy_(self._pristine[module_name])
        self._merged.discard(module_name)

    def _find_weight(self, layer: str) -> torch.Tensor | None:
        """The weight of a Linear or Conv2d layer (``<component>.<module>``), or None."""
        import torch

        component, _, module_name = layer.partition(".")
        model = getattr(self.pipe, component, None) if component in COMPONENTS else None
        if model is None:
            return None
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            return None
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            return module.weight
        return None
