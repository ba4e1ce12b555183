"""Convert an SDXL UNet to a GGUF file that the ``gguf`` backend loads quantized.

Input: a diffusers model directory (``unet/`` inside), a UNet directory, a diffusers UNet
``.safetensors`` file, or an original single-file SDXL checkpoint
(``model.diffusion_model.*`` keys; converted with diffusers' own mapping, which needs the
UNet config from ``--config``).

Output: tensors named exactly like the diffusers ``UNet2DConditionModel`` state dict — the
layout ``UNet2DConditionModel.from_single_file`` loads as is (its keys match the model, so
no LDM conversion runs on the quantized tensors). Types:

* 2-D ``.weight`` tensors (the Linear layers: attention projections, feed-forward, time and
  text-time embeddings) whose row length is a multiple of 32 -> **Q8_0** (34 bytes per 32
  weights: 26.6% of fp32);
* convolutions and other >=2-D tensors -> F16 (``--other f32`` keeps F32);
* 1-D tensors (biases, norms) -> F32.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger("zthumb.gguf_convert")

LDM_UNET_PREFIX = "model.diffusion_model."
ARCH = "sdxl"


@dataclass
class ConversionReport:
    tensors: int = 0
    quantized: int = 0
    quantized_fp32_bytes: int = 0
    quantized_bytes: int = 0
    other_bytes: int = 0
    output_bytes: int = 0
    types: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return self.__dict__ | {}


def _read_safetensors(paths: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in paths:
        state.update(load_file(str(path)))
    return state


def _unet_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("diffusion_pytorch_model*.safetensors"))
    files = [f for f in files if not f.name.endswith(".index.json")]
    if not files:
        raise FileNotFoundError(f"no diffusion_pytorch_model*.safetensors in {directory}")
    # Prefer the full-precision weights when variants (fp16) sit next to them.
    plain = [f for f in files if ".fp16." not in f.name]
    return plain or files


def load_unet_state_dict(src: Path, config: Path | None = None) -> dict[str, torch.Tensor]:
    """The UNet state dict in diffusers layout, from any supported source."""
    if src.is_dir():
        unet_dir = src / "unet" if (src / "unet").is_dir() else src
        return _read_safetensors(_unet_files(unet_dir))
    if src.suffix != ".safetensors":
        raise ValueError(f"{src}: only .safetensors inputs are read (never pickle)")
    state = _read_safetensors([src])
    if not any(key.startswith(LDM_UNET_PREFIX) for key in state):
        return state
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    if config is None:
        raise ValueError("a single-file checkpoint needs --config (a diffusers SDXL dir or its unet/ dir)")
    config_file = config / "unet" / "config.json" if (config / "unet").is_dir() else config / "config.json"
    unet_config = json.loads(config_file.read_text())
    unet_state = {k: v for k, v in state.items() if k.startswith(LDM_UNET_PREFIX)}
    return convert_ldm_unet_checkpoint(unet_state, unet_config)


def tensor_plan(name: str, shape: tuple[int, ...], block_size: int = 32) -> str:
    """Which GGUF type a tensor is stored as: 'Q8_0', 'F16' or 'F32'."""
    if len(shape) == 2 and name.endswith(".weight") and shape[1] % block_size == 0:
        return "Q8_0"
    if len(shape) >= 2:
        return "F16"
    return "F32"


def convert(src: Path, dst: Path, config: Path | None = None, other: str = "f16") -> ConversionReport:
    """Write ``dst`` (.gguf) from ``src``; returns what was written."""
    import gguf
    import numpy as np

    q8 = gguf.GGMLQuantizationType.Q8_0
    block_size, _ = gguf.GGML_QUANT_SIZES[q8]
    state = load_unet_state_dict(src, config)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch=ARCH)
    writer.add_string("zthumb.source", src.name)
    writer.add_string("zthumb.layout", "diffusers.UNet2DConditionModel")
    report = ConversionReport()
    for name in sorted(state):
        array: np.ndarray = state[name].detach().to("cpu").float().numpy()
        kind = tensor_plan(name, tuple(array.shape), block_size)
        if kind == "F16" and other == "f32":
            kind = "F32"
        if kind == "Q8_0":
            data = gguf.quants.quantize(array, q8)
            writer.add_tensor(name, data, raw_dtype=q8)
            report.quantized += 1
            report.quantized_fp32_bytes += array.size * 4
            report.quantized_bytes += data.nbytes
        else:
            data = array.astype(np.float16 if kind == "F16" else np.float32)
            writer.add_tensor(name, data)
            report.other_bytes += data.nbytes
        report.tensors += 1
        report.types[kind] = report.types.get(kind, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(dst)
    report.output_bytes = dst.stat().st_size
    log.info("wrote %s", dst, extra=report.as_dict())
    return report
