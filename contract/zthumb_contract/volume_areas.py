"""Which area of the shared volume each path field of the LoRAFinetune spec may name.

The volume (docs/ARCHITECTURE.md, "Paths on the volume") has three areas: ``models/`` (checkpoints
and their configs), ``datasets/`` (the users' datasets) and ``outputs/`` (the pipeline's). A spec
path field names, relative to the data root, a target a step writes or reads, so a bad value is
data loss, not a typo: fetch-model replaces ``baseModel.configPath`` whole, and ``models`` there
deleted the base model, every run's adapter and the compile cache.

``PATH_FIELDS`` is the one table of those fields. ``spec.py`` enforces it, the CRD says the same to
the API server (a ``pattern`` and ``maxLength`` on each field, CEL rules on the field and on
``spec``; ``tests/unit/operator/test_crd_paths.py`` derives them from this table and evaluates
both sides on the same hostile values), and docs/ARCHITECTURE.md prints it. The rules:

1. Spelling: a relative POSIX path of at most ``MAX_PATH_LENGTH`` ASCII characters whose
   components, separated by single slashes, each match ``COMPONENT``: letters, digits, ``.``,
   ``_`` and ``-``, never starting with a dot (no ``.``/``..``, no hidden names: the atomic
   writers' staging names start with one) nor ending with one (SMB drops a trailing dot). No
   component ends with a ``WORK_SUFFIXES`` suffix: those are the fetch step's files beside a
   target (``<file>.part``, ``<file>.verified``, ``<dir>.part``), which another field's download
   would overwrite or delete.
2. Area: strictly below the field's own area (``models/…``, ``datasets/…``), never the area itself.
3. Reserved: no path equals, contains or lies inside a ``RESERVED_AREAS`` entry, the pipeline's:
   ``models/lora`` (every run's adapter, the server's LoRA root), ``datasets/cache`` (remote
   datasets, pruned by prepare-dataset) and ``outputs`` (every run's working files and report).
4. Apart: no two path fields of one spec name the same path or one inside the other. A directory
   target is replaced whole, deleting whatever lies inside it; two fields on one file overwrite
   each other's download (each checks its own SHA256); a target inside a file is never writable.
   Only fields of one area can meet; of two that do, the later in the table is refused, naming the
   earlier.

Comparisons ignore ASCII case: a ReadWriteMany volume may be case-insensitive (SMB), and there
``models/LoRA`` is ``models/lora``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from itertools import combinations
from typing import Any, Literal

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

MODELS = "models"
DATASETS = "datasets"
OUTPUTS = "outputs"
# The pipeline's own areas, with what they hold (for the messages and the docs).
LORA_ROOT = f"{MODELS}/lora"
DATASET_CACHE = f"{DATASETS}/cache"
RESERVED_AREAS: dict[str, str] = {
    LORA_ROOT: "every run's exported adapter",
    DATASET_CACHE: "the remote datasets' cache",
    OUTPUTS: "every run's working files and report",
}

# Beside a target, the fetch step writes <target>.part (a resumable download, the configs'
# staging directory) and <file>.verified (the checksum stamp).
PARTIAL_SUFFIX = ".part"
VERIFIED_SUFFIX = ".verified"
WORK_SUFFIXES = (PARTIAL_SUFFIX, VERIFIED_SUFFIX)

# A name component is at most 255 bytes on every filesystem; a whole path needs no more here, and
# the bound keeps the API server's CEL cost estimate small.
MAX_PATH_LENGTH = 255
COMPONENT = r"[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_-])?"
_COMPONENT = re.compile(COMPONENT)
_PATH_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/")


@dataclass(frozen=True)
class PathField:
    """One path field: its name below ``spec.`` (the CRD's camelCase), the area it may name, what
    it names there and what the pipeline does with it."""

    name: str
    area: str
    target: Literal["file", "directory"]
    use: str

    @property
    def pattern(self) -> str:
        """Rules 1 and 2 as far as a regular expression goes: the CRD's ``pattern`` (RE2, whose
        ``$`` is the end of the text)."""
        return rf"^{self.area}(/{COMPONENT})+$"


PATH_FIELDS: tuple[PathField, ...] = (
    PathField("baseModel.path", MODELS, "file", "fetch-model downloads the checkpoint to it"),
    PathField("baseModel.configPath", MODELS, "directory", "fetch-model replaces it whole with the configs"),
    PathField("dataset.path", DATASETS, "directory", "prepare-dataset reads the images and captions in it"),
    PathField("eval.clip.path", MODELS, "file", "eval downloads the CLIP weights to it"),
    PathField("eval.clip.configPath", MODELS, "directory", "eval replaces it whole with CLIP's configs"),
    PathField(
        "dataset.captioning.path", MODELS, "file", "prepare-dataset downloads the captioner's weights to it"
    ),
    PathField(
        "dataset.captioning.configPath",
        MODELS,
        "directory",
        "prepare-dataset replaces it whole with the captioner's configs",
    ),
    PathField("eval.dino.path", MODELS, "file", "eval downloads the DINOv2 weights to it"),
    PathField("eval.dino.configPath", MODELS, "directory", "eval replaces it whole with DINOv2's configs"),
    PathField("eval.aesthetic.path", MODELS, "file", "eval downloads the aesthetic head's weights to it"),
)
FIELDS_BY_NAME = {field.name: field for field in PATH_FIELDS}


def is_within(inner: str, outer: str) -> bool:
    """``inner`` is ``outer`` or lies inside it (ignoring ASCII case)."""
    return (inner.lower() + "/").startswith(outer.lower() + "/")


def overlaps(first: str, second: str) -> bool:
    """The same path, or one inside the other (ignoring ASCII case)."""
    return is_within(first, second) or is_within(second, first)


def path_problem(field: PathField, value: str) -> str | None:
    """Why ``value`` may not be ``field``'s path (rules 1-3), or None."""
    where = f"name a {field.target} below {field.area}/"
    if not value:
        return f"is empty: {where}"
    if len(value) > MAX_PATH_LENGTH:
        return f"is {len(value)} characters long, more than {MAX_PATH_LENGTH}"
    odd = next((char for char in value if char not in _PATH_CHARACTERS), None)
    if odd is not None:
        return (
            f"{value!r} holds {odd!r} (U+{ord(odd):04X}): a path on the volume is ASCII letters, digits, "
            "'.', '_', '-' and '/' only"
        )
    if value.startswith("/"):
        return f"{value!r} is absolute: {where}, relative to the volume"
    if value.endswith("/"):
        return f"{value!r} ends with '/': {where}, without a trailing slash"
    for component in value.split("/"):
        if not component:
            return f"{value!r} has an empty component ('//')"
        if not _COMPONENT.fullmatch(component):
            return (
                f"{value!r}: the component {component!r} starts or ends with '.' (no '.', '..' or "
                "hidden names; each starts with a letter, a digit or '_')"
            )
        if component.lower().endswith(WORK_SUFFIXES):
            return (
                f"{value!r}: the component {component!r} ends with {' or '.join(WORK_SUFFIXES)}, the "
                "names of the fetch step's working files beside a target"
            )
    area, _, below = value.partition("/")
    if area != field.area or not below:
        return f"{value!r} is not below {field.area}/: {where} ({field.use})"
    for reserved, holds in RESERVED_AREAS.items():
        if overlaps(value, reserved):
            return (
                f"{value!r} is, contains or lies inside {reserved}/, the pipeline's ({holds}): "
                f"{where} outside it"
            )
    return None


def value_at(spec: Mapping[str, Any], name: str) -> Any:
    """The value of the dotted field ``name`` in a spec as the CRD spells it (None when absent)."""
    node: Any = spec
    for key in name.split("."):
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def overlap_problems(spec: Mapping[str, Any]) -> Iterator[tuple[PathField, str]]:
    """Rule 4 for a spec as the CRD spells it: (the refused field, why) for each pair that meets."""
    present = [(field, value_at(spec, field.name)) for field in PATH_FIELDS]
    paths = [(field, value) for field, value in present if isinstance(value, str)]
    for (earlier, first), (later, second) in combinations(paths, 2):
        if earlier.area != later.area or not overlaps(first, second):
            continue
        if first.lower() == second.lower():
            relation = "is the same path as"
        elif is_within(second, first):
            relation = "lies inside"
        else:
            relation = "contains"
        yield (
            later,
            (
                f"{second!r} {relation} spec.{earlier.name} ({first!r}): no two path fields may share a path "
                "or nest, since a directory target is replaced whole and a file target overwritten"
            ),
        )


def check_on_volume(field: PathField, value: str) -> str:
    """Rules 1-3 for one value of ``field`` as a pydantic error (its location is the field)."""
    problem = path_problem(field, value)
    if problem is not None:
        raise PydanticCustomError("volume_path", "{problem}", {"problem": problem})
    return value


def on_volume(name: str) -> AfterValidator:
    """``check_on_volume`` for the path field ``name`` (below ``spec.``) as a pydantic validator.

    The check is a module-level function, not a closure: this one runs once, when the spec's
    classes are defined, and only what runs at validation time can be tested (and mutated): a
    mutant of this line could only be switched on after the classes it builds exist."""
    return AfterValidator(partial(check_on_volume, FIELDS_BY_NAME[name]))  # pragma: no mutate


def check_apart(spec: Mapping[str, Any]) -> None:
    """Rule 4 as a pydantic error (for a model validator of the whole spec, which has no location:
    the message starts with the refused field)."""
    for field, problem in overlap_problems(spec):
        raise PydanticCustomError(
            "volume_paths_overlap", "spec.{field}: {problem}", {"field": field.name, "problem": problem}
        )
