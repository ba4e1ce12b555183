"""Writing what another process may be reading: the server (adapters, reports), a resumed pod
(checkpoints), a later step or a concurrent run on the shared volume (datasets, configs, models).

Everything is written under a staging name beside its target and then renamed into place, so a
reader sees the old content or the new one, whole, never half of either.

Staging names start with a dot and carry a writer token (``writer_token``): the host name, which
in Kubernetes is the pod's name, plus random hex, never the PID. Every step pod's process is PID 1,
so two pods of the same step on one ReadWriteMany volume would otherwise share a staging name and
delete or append to each other's half-written files. A writer only ever creates, fills and removes
names carrying its own token; what a killed writer left behind is recognisable by the leading dot
(``dataset.sources.prune_cache`` removes it after a grace period).

Two ways to publish, chosen by who owns the target:

* replace (``publish_directory``, ``write_text_atomically``): the target is this run's own output,
  which the same run legitimately writes again: its adapter (``export.adapter``), its eval report
  (``eval.run``), its checkpoints and prepared dataset, its stamps and sample index;
* no replace (``publish_new_directory``, ``publish_new_file``): the target is a shared cache entry
  that every writer fills with the same verified content: the dataset cache, the base model, the
  model configs, the CLIP model. The first complete one wins; a later writer discards its own
  staging and uses (after verifying it) the winner's. A directory cannot be renamed onto a
  non-empty one (ENOTEMPTY/EEXIST) and a hard link cannot be made onto an existing name (EEXIST),
  so the refusal is atomic on a local filesystem and on NFS alike, with no lock.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import socket
from pathlib import Path

# This process's random part of the writer token: new in a forked child, so a parent and its
# child never share a staging name either.
_process_secret = secrets.token_hex(4)


def _new_process_secret() -> None:
    global _process_secret  # noqa: PLW0603 - one per process by design
    _process_secret = secrets.token_hex(4)


os.register_at_fork(after_in_child=_new_process_secret)


def writer_token() -> str:
    """This process as a writer on the shared volume: ``<host name>-<random hex>``, the same for
    the life of the process (so it finds its own partial downloads again) and unique among the
    writers on the volume (the host name of a pod is its name; the random part tells apart two
    processes on one host)."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"
    return f"{host}-{_process_secret}"


def staging_path(target: Path, purpose: str) -> Path:
    """A name beside ``target`` that no other writer uses: hidden, the purpose, the writer token and
    fresh random hex (one process may stage the same target twice)."""
    return target.with_name(f".{target.name}.{purpose}-{writer_token()}-{secrets.token_hex(3)}")


def staging_directory(target: Path, purpose: str = "tmp") -> Path:
    """A new, empty staging directory for ``target``, created by this writer (never an existing one:
    nothing another writer is filling is touched)."""
    staging = staging_path(target, purpose)
    staging.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir()
    return staging


def publish_directory(staging: Path, target: Path, attempts: int = 5) -> Path:
    """Rename the finished ``staging`` directory to ``target`` (same filesystem), replacing what was
    there: for the run's own outputs only (see the module docstring).

    A directory cannot be renamed onto a non-empty one, so an existing ``target`` is first renamed
    to a retired name of this writer's and removed afterwards: for the instant between the two
    renames there is no ``target``, but a reader never sees a mix of the old and the new files.
    A concurrent publisher of the same target makes a rename fail; each failure retries, bounded.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        if publish_new_directory(staging, target):
            return target
        retired = staging_path(target, "old")
        try:
            os.rename(target, retired)
        except FileNotFoundError:
            continue  # another publisher retired it first: try again
        shutil.rmtree(retired, ignore_errors=True)
    raise OSError(errno.EBUSY, f"{target}: other writers kept publishing it; gave up after {attempts} tries")


def publish_new_directory(staging: Path, target: Path) -> bool:
    """Rename ``staging`` to ``target`` unless a non-empty ``target`` exists; True when this writer's
    staging became the target. False leaves ``staging`` in place for the caller to discard."""
    try:
        os.rename(staging, target)
    except OSError as error:
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    return True


def publish_new_file(staging: Path, target: Path) -> bool:
    """Give ``staging`` the name ``target`` unless ``target`` exists; True when this writer's file
    became the target. Either way ``staging``'s own name is gone afterwards.

    A hard link fails with EEXIST when the name is taken, atomically (NFS included). On a
    filesystem without hard links the file is renamed after checking the name is free: two
    writers publishing at that very instant both succeed, one replacing the other's file, and
    both files passed the same SHA256 check first, so no reader sees other content.
    """
    try:
        os.link(staging, target)
    except FileExistsError:
        staging.unlink()
        return False
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if target.exists():
            staging.unlink()
            return False
        os.replace(staging, target)
        return True
    staging.unlink()
    return True


def write_text_atomically(path: Path, text: str) -> None:
    """``path`` holds ``text``, replacing what it held in one rename (the run's own file, or a
    stamp every writer would write the same)."""
    staging = staging_path(path, "tmp")
    staging.write_text(text)
    os.replace(staging, path)
