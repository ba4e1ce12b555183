"""Writing what another process may be reading: the server (adapters, reports), a resumed pod
(checkpoints), a later step or a concurrent run on the shared volume (datasets, configs, stamps).

Everything is written under a staging name beside its target and then renamed into place, so a
reader sees the old content or the new one, whole, never half of either. Staging names start
with a dot and carry the writer's pid, so two writers never share one, and what a killed writer
left behind is recognisable (``dataset_sources.prune_cache`` removes it after a grace period).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path


def fresh_directory(path: Path) -> Path:
    """``path`` as a new, empty directory: what an interrupted earlier attempt left there is removed."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def publish_directory(staging: Path, target: Path) -> Path:
    """Rename the finished ``staging`` directory to ``target`` (same filesystem).

    A directory cannot be renamed onto a non-empty one, so an existing ``target`` is first renamed
    away and removed afterwards: for the instant between the two renames there is no ``target``,
    but a reader never sees a mix of the old and the new files.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        retired = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)
    return target


def write_text_atomically(path: Path, text: str) -> None:
    """``path`` holds ``text``, replacing what it held in one rename."""
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text(text)
    os.replace(staging, path)
