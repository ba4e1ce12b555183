"""LoRA adapter files: confinement to the LoRA root, formats, and content fingerprints.

Where an adapter may come from
    Only from inside ``ZTHUMB_LORA_ROOT``. A request names it relative to the root or by an
    absolute path inside it. ``..`` components, absolute paths outside the root and symlinks
    whose target resolves outside the root are refused; only ``.safetensors`` is ever read
    (pickle formats such as ``.bin``/``.pt``/``.ckpt`` are refused before any byte is read).
    A directory means its ``pytorch_lora_weights.safetensors`` (what ``save_lora_weights``
    and the trainer's export write).

Which formats load
    diffusers/PEFT files (``unet.…lora_A/lora_B`` or ``…lora.down/up``) and kohya/A1111 files
    (``lora_unet_…lora_down/lora_up`` + ``alpha``): diffusers' ``lora_state_dict`` converts them.
    diffusers files may carry their PEFT ``LoraConfig`` (``lora_alpha``, ``r``, … per component)
    as JSON under ``lora_adapter_metadata`` in the safetensors header (``save_lora_weights(…,
    unet_lora_adapter_metadata=…)``, the trainer's export); it is parsed out of the same bytes
    and honoured, so an adapter trained with alpha ≠ rank keeps its alpha/rank scaling. kohya
    files carry their alphas as tensors instead.

How a replaced file is noticed without reading it
    Each adapter is identified by (resolved path, sha256 of the file). Hashing a file on every
    request would read it from disk, so the sha256 is cached per path together with a cheap
    *stat fingerprint* ``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)``. A request only
    ``stat``s the file (metadata, no content read): while the fingerprint is unchanged the
    cached sha256 is used and, if the adapter is resident, nothing is read. Any replacement —
    an atomic rename (new inode), an in-place rewrite (new mtime/ctime/size) — changes the
    fingerprint, so the file is hashed again and, its sha256 being new, loaded again. When an
    adapter is loaded, the bytes that are hashed are the bytes that are loaded (one read), so
    the sha256 reported is always the sha256 of the weights in use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from zthumb.errors import AdapterLoadError, AdapterNotFoundError, AdapterRefusedError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("zthumb.lora")

ADAPTER_FILE = "pytorch_lora_weights.safetensors"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}

Fingerprint = tuple[int, int, int, int, int]


class AdapterWeights(NamedTuple):
    """An adapter file as read: its tensors, diffusers' adapter metadata, and the sha256 of the bytes."""

    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] | None  # the file's ``lora_adapter_metadata`` (None when it has none)
    sha256: str


def lora_adapter_metadata(data: bytes) -> dict[str, Any] | None:
    """diffusers' LoRA adapter metadata from the header of safetensors ``data`` (None if absent).

    What ``diffusers.utils.state_dict_utils._load_sft_state_dict_metadata`` reads from a file
    (which it can only open by path): the header's ``__metadata__`` minus ``format``, then the
    JSON string under ``lora_adapter_metadata``, if any. The header is an 8-byte little-endian
    length followed by that many bytes of JSON.
    """
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY

    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    metadata = dict(header.get("__metadata__") or {})
    metadata.pop("format", None)
    raw = metadata.get(LORA_ADAPTER_METADATA_KEY)
    if not raw:
        return None
    parsed = json.loads(raw)
    if parsed is not None and not isinstance(parsed, dict):
        raise ValueError(f"{LORA_ADAPTER_METADATA_KEY} is not a JSON object")
    return parsed


def _fingerprint(path: Path) -> Fingerprint:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class AdapterRef:
    """One adapter file as it is now: where it lives and the sha256 of its content."""

    display_path: str  # relative to the LoRA root, as reported to clients
    file: Path  # resolved .safetensors file inside the root
    sha256: str
    files: AdapterFiles = field(compare=False, repr=False)
    # The request field that named it (``lora_path`` or ``loras[i].path``): errors about this
    # adapter, including ones found only when it is loaded on the device worker, name it.
    request_field: str = field(default="lora_path", compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (str(self.file), self.sha256)

    def read(self) -> AdapterWeights:
        """Read the weights once; returns them, their metadata and the sha256 of exactly those bytes."""
        return self.files.read(self.file, self.request_field)


class AdapterFiles:
    """Resolves adapter paths inside the LoRA root and remembers their sha256 by fingerprint."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._hashes: dict[Path, tuple[Fingerprint, str]] = {}
        self._lock = threading.Lock()
        self.hash_reads = 0  # how many times a file's content was read (for tests and metrics)

    # --- confinement -------------------------------------------------------------------
    def resolve(self, requested: str, field_name: str = "lora_path") -> tuple[Path, str]:
        """Map a requested path to (resolved .safetensors file, display path); refuse escapes.

        ``field_name`` is the request field that named it, for the error messages.
        """
        if not requested or "\x00" in requested:
            raise AdapterRefusedError(f"{field_name} is empty or malformed", field=field_name)
        candidate = Path(requested)
        if ".." in candidate.parts:
            raise AdapterRefusedError(
                f"{field_name} must not contain '..' components", field=field_name, code="lora_path_traversal"
            )
        try:
            root = self.root.resolve(strict=True)
        except FileNotFoundError as exc:
            raise AdapterNotFoundError(f"the LoRA root {self.root} does not exist", field=field_name) from exc
        if candidate.is_absolute():
            if not (candidate.is_relative_to(self.root) or candidate.is_relative_to(root)):
                raise AdapterRefusedError(
                    f"{field_name} {requested!r} is outside the LoRA root {self.root}",
                    field=field_name,
                    code="lora_path_outside_root",
                )
            lexical = candidate
        else:
            lexical = root / candidate
        try:
            target = lexical.resolve(strict=True)
        except FileNotFoundError as exc:
            raise AdapterNotFoundError(
                f"no adapter at {requested!r} under the LoRA root", field=field_name
            ) from exc
        except (OSError, RuntimeError) as exc:  # symlink loops, permission problems
            raise AdapterRefusedError(
                f"{field_name} {requested!r} cannot be resolved: {exc}", field=field_name
            ) from exc
        self._check_inside(target, root, requested, field_name)
        display = str(target.relative_to(root))

        if target.is_dir():
            file = target / ADAPTER_FILE
            if not file.exists():
                pickles = sorted(p.name for p in target.iterdir() if p.suffix in PICKLE_SUFFIXES)
                if pickles:
                    raise AdapterRefusedError(
                        f"{requested!r} holds only pickle weights ({', '.join(pickles)}); "
                        "only .safetensors adapters are loaded",
                        field=field_name,
                        code="lora_format_refused",
                    )
                raise AdapterNotFoundError(f"directory {requested!r} has no {ADAPTER_FILE}", field=field_name)
            target = file.resolve(strict=True)
            self._check_inside(target, root, requested, field_name)
        if target.suffix != ".safetensors":
            kind = "pickle" if target.suffix in PICKLE_SUFFIXES else f"{target.suffix or 'extensionless'}"
            raise AdapterRefusedError(
                f"{requested!r} is a {kind} file; only .safetensors adapters are loaded (never pickle)",
                field=field_name,
                code="lora_format_refused",
            )
        if not target.is_file():
            raise AdapterNotFoundError(f"{requested!r} is not a regular file", field=field_name)
        return target, display

    @staticmethod
    def _check_inside(target: Path, root: Path, requested: str, field_name: str) -> None:
        if not target.is_relative_to(root):
            raise AdapterRefusedError(
                f"{field_name} {requested!r} resolves outside the LoRA root (symlink escape)",
                field=field_name,
                code="lora_path_symlink_escape",
            )

    # --- fingerprints ------------------------------------------------------------------------
    def ref(self, requested: str, field_name: str = "lora_path") -> AdapterRef:
        """Resolve and identify an adapter; reads the file only if it is new or changed."""
        file, display = self.resolve(requested, field_name)
        fingerprint = _fingerprint(file)
        with self._lock:
            known = self._hashes.get(file)
        if known is not None and known[0] == fingerprint:
            return AdapterRef(display, file, known[1], self, field_name)
        digest = self._hash_file(file)
        with self._lock:
            self._hashes[file] = (fingerprint, digest)
        return AdapterRef(display, file, digest, self, field_name)

    def _hash_file(self, file: Path) -> str:
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        self.hash_reads += 1
        return digest.hexdigest()

    def read(self, file: Path, field_name: str = "lora_path") -> AdapterWeights:
        """Read and parse the file in one go; the sha256 is of the bytes parsed (tensors and header)."""
        from safetensors.torch import load as load_safetensors

        before = _fingerprint(file)
        data = file.read_bytes()
        self.hash_reads += 1
        digest = hashlib.sha256(data).hexdigest()
        if _fingerprint(file) == before:
            with self._lock:
                self._hashes[file] = (before, digest)
        try:
            state_dict = load_safetensors(data)
        except Exception as exc:
            raise AdapterLoadError(
                f"{file.name} is not a valid safetensors file: {exc}", field=field_name
            ) from exc
        if not state_dict:
            raise AdapterLoadError(f"{file.name} holds no tensors", field=field_name)
        try:
            metadata = lora_adapter_metadata(data)
        except (ValueError, struct.error) as exc:  # json.JSONDecodeError is a ValueError
            raise AdapterLoadError(
                f"{file.name} has unreadable LoRA adapter metadata: {exc}", field=field_name
            ) from exc
        return AdapterWeights(state_dict, metadata, digest)
