"""The ``slot`` strategy of the compiled path (``ZTHUMB_COMPILE_LORA=slot``): a fixed-rank LoRA slot.

At backend load, before any adapter is loaded and before compiling, diffusers'
LoRA hotswap is enabled (``pipe.enable_lora_hotswap(target_rank=ZTHUMB_COMPILE_MAX_RANK)``) and a
*slot* adapter is loaded: zero weights at the full slot rank on every UNet layer named by
``ZTHUMB_COMPILE_TARGET_MODULES``. Loading it runs PEFT's ``prepare_model_for_compiled_hotswap``,
which turns every layer's LoRA scaling into a tensor, so scale changes are tensor writes the
compiled graph reads, never new Python constants that would recompile it.

Per request, adapters never add modules to the compiled graph:

- a new adapter (cache miss) goes through ``load_lora_into_unet(..., hotswap=True,
  adapter_name=<slot>)`` (diffusers/PEFT check and copy it into the slot, zero-padded to the slot
  rank), and its weights are then kept on the device, at their own rank, in the adapter cache;
- a cached adapter (hit) is copied into the slot with two ``torch._foreach`` calls (zero, copy):
  no disk read, no PEFT bookkeeping;
- the scale is written into the slot's scaling tensors (``alpha/rank × lora_scale`` per layer).

What is refused with a 422 naming ``lora_path`` (``SlotError`` → ``AdapterLoadError``) instead of
a recompile: a rank above the slot rank, layers outside the slot's target modules, text-encoder
LoRA layers (the text encoders are not compiled, and diffusers cannot hotswap them), DoRA and
per-layer alpha patterns (PEFT's hotswap check).

``lora_scale: 0`` and "no adapter" both run the same compiled graph with the slot's scalings set to
0, so ``base + lora(x) · 0 = base`` exactly (for finite adapter weights): the output is
bit-identical whichever adapter is resident, and identical to the freshly warmed-up zero slot.
Against the eager pipeline (``ZTHUMB_COMPILE=off``) the compiled one differs by compiler rounding
only (the tests state the tolerance on the tiny model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from zthumb.backends.compiled import CompiledUNet, SlotError, adapter_rank, lora_weights

if TYPE_CHECKING:
    import torch

SLOT = "zthumb_slot"


@dataclass
class _Resident:
    """One cached adapter: its weights at its own rank, and the slot views they are copied into."""

    views: list[torch.Tensor]
    weights: list[torch.Tensor]
    scalings: torch.Tensor  # alpha/rank per slot layer, in the order of ``SlotUNet.scalings``
    rank: int


class SlotUNet(CompiledUNet):
    """The slot compiled into the UNet and the adapter weights resident for hotswapping."""

    strategy = "slot"

    def __init__(self, pipe: Any, *, mode: str, max_rank: int, target_modules: list[str]) -> None:
        super().__init__(pipe, mode=mode)
        self.max_rank = max_rank
        self.target_modules = list(target_modules)
        self._resident: dict[str, _Resident] = {}
        self.current: str | None = None  # whose weights the slot holds (None: zeros or unknown)
        self.params: list[torch.Tensor] = []
        self.scalings: list[torch.Tensor] = []
        self._a_b: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.modules: set[str] = set()  # UNet module names the slot covers

    # --- startup ---------------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        """Enable hotswap, then load the zero slot adapter (PEFT pads it and tensorises scalings)."""
        import torch
        from peft.tuners.lora import LoraLayer

        unet = self.pipe.unet
        rank = self.max_rank
        state: dict[str, torch.Tensor] = {}
        for name, module in unet.named_modules():
            if not any(name == t or name.endswith(f".{t}") for t in self.target_modules):
                continue
            if isinstance(module, torch.nn.Linear):
                state[f"unet.{name}.lora_A.weight"] = torch.zeros(rank, module.in_features)
                state[f"unet.{name}.lora_B.weight"] = torch.zeros(module.out_features, rank)
            elif isinstance(module, torch.nn.Conv2d):
                kh, kw = module.kernel_size
                state[f"unet.{name}.lora_A.weight"] = torch.zeros(rank, module.in_channels, kh, kw)
                state[f"unet.{name}.lora_B.weight"] = torch.zeros(module.out_channels, rank, 1, 1)
        if not state:
            raise RuntimeError(
                f"ZTHUMB_COMPILE_TARGET_MODULES={','.join(self.target_modules)} names no Linear or Conv2d "
                "layer of the UNet"
            )
        self.pipe.enable_lora_hotswap(target_rank=rank)
        metadata = {"unet.r": rank, "unet.lora_alpha": rank, "unet.target_modules": self.target_modules}
        self.pipe.load_lora_into_unet(
            state, network_alphas=None, unet=unet, adapter_name=SLOT, metadata=metadata, _pipeline=self.pipe
        )
        layers = [(n, m) for n, m in unet.named_modules() if isinstance(m, LoraLayer) and SLOT in m.lora_A]
        for module_name, layer in layers:
            self.modules.add(module_name)
            scaling = layer.scaling[SLOT]
            if not isinstance(scaling, torch.Tensor):  # prepare_model_for_compiled_hotswap did not run
                raise RuntimeError("the LoRA slot's scalings are not tensors; hotswap was not enabled")
            a = cast("torch.Tensor", layer.lora_A[SLOT].weight)
            b = cast("torch.Tensor", layer.lora_B[SLOT].weight)
            self._a_b.append((a, b))
            self.params += [a, b]
            self.scalings.append(scaling)
        with torch.no_grad():
            torch._foreach_zero_(self.scalings)
        return {"slot_rank": rank, "slot_layers": len(layers)}

    # --- adapters ---------------------------------------------------------------------------
    def load(
        self, state_dict: dict[str, torch.Tensor], network_alphas: Any, metadata: Any, name: str
    ) -> None:
        """Hotswap a new adapter into the slot, then keep its weights on the device as ``name``.

        These are the calls ``load_lora_adapter(..., hotswap=True)`` makes (diffusers 0.42:
        UNet keys to PEFT names, ``_create_lora_config``, PEFT's ``check_hotswap_configs_compatible``
        and ``hotswap_adapter_from_state_dict``) without its error handling, which deletes the
        named adapter, here the slot, when a hotswap fails. Everything that could fail is checked
        before a weight is touched.
        """
        import torch
        from peft.utils.hotswap import check_hotswap_configs_compatible, hotswap_adapter_from_state_dict

        unet = self.pipe.unet
        refusal = (
            f"the compiled path with a slot (ZTHUMB_COMPILE={self.mode}, ZTHUMB_COMPILE_LORA=slot) "
            "hot-swaps UNet adapters only (ZTHUMB_COMPILE_LORA=fuse merges text-encoder layers too)"
        )
        by_component = lora_weights(
            self.pipe, state_dict, network_alphas, metadata, components=("unet",), refusal=refusal, name=SLOT
        )
        if "unet" not in by_component:
            raise SlotError("it holds no UNet LoRA layers", code="lora_invalid")
        weights, config = by_component["unet"]
        rank = adapter_rank(weights)
        if rank > self.max_rank:
            raise SlotError(
                f"its LoRA rank is {rank}, above the compiled slot rank {self.max_rank} "
                "(ZTHUMB_COMPILE_MAX_RANK); serving it would recompile the UNet",
                code="lora_rank_exceeds_slot",
            )
        modules = {key.rsplit(".lora_", 1)[0] for key in weights}
        outside = sorted(modules - self.modules)
        if outside or any(not key.endswith(("lora_A.weight", "lora_B.weight")) for key in weights):
            raise SlotError(
                f"it has LoRA layers outside the compiled slot ({', '.join(outside[:3]) or 'LoRA biases'}"
                f"{', …' if len(outside) > 3 else ''}; the slot covers ZTHUMB_COMPILE_TARGET_MODULES="
                f"{','.join(self.target_modules)}); serving it would recompile the UNet",
                code="lora_targets_outside_slot",
            )
        try:
            check_hotswap_configs_compatible(unet.peft_config[SLOT], config)
        except ValueError as exc:
            raise SlotError(
                f"its LoRA config cannot be hot-swapped into the compiled slot: {exc}",
                code="lora_unsupported_compiled",
            ) from exc
        swapped = {f"{key.removesuffix('.weight')}.{SLOT}.weight": value for key, value in weights.items()}
        self.current = None  # from here the slot's content changes
        hotswap_adapter_from_state_dict(model=unet, state_dict=swapped, adapter_name=SLOT, config=config)
        with torch.no_grad():
            views = [t for a, b in self._a_b for t in (a.narrow(0, 0, rank), b.narrow(1, 0, rank))]
            self._resident[name] = _Resident(
                views=views,
                weights=[view.clone() for view in views],
                scalings=torch.stack(self.scalings).clone(),
                rank=rank,
            )
        self.current = name

    def activate(self, active: Sequence[tuple[str, float]]) -> None:
        """Put the one resident adapter into the slot (if it is not there) at its scale."""
        import torch

        ((name, scale),) = active
        resident = self._resident[name]
        with torch.no_grad():
            if self.current != name:
                torch._foreach_zero_(self.params)
                torch._foreach_copy_(resident.views, resident.weights)
                self.current = name
            torch._foreach_copy_(self.scalings, list((resident.scalings * scale).unbind(0)))

    def silence(self) -> None:
        """``lora_scale: 0`` / no adapter: every slot scaling 0 (the weights stay where they are)."""
        import torch

        with torch.no_grad():
            torch._foreach_zero_(self.scalings)

    def forget(self, name: str) -> None:
        self._resident.pop(name, None)
        if self.current == name:
            self.current = None

    def resident_bytes(self) -> int:
        return sum(w.numel() * w.element_size() for r in self._resident.values() for w in r.weights)
