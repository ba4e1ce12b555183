"""Print the build context files a Dockerfile reads, as ``sha256  path`` lines (sorted by path).

    python3 hack/images/image_inputs.py ROOT DOCKERFILE

hack/images/build-images.sh hashes this listing (with the base image and the build args) into an image's
inputs hash: an image is rebuilt only when that hash changes, so the listing's format is part of
every built image's label and must stay byte for byte the same.

The files are the sources of COPY/ADD (not ``--from``) and of ``RUN --mount=type=bind`` (not
``from=``), directories walked, minus what the root's .dockerignore drops. Standard library only:
the script runs it with the host's python3, before any virtual environment exists.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shlex
import sys
from collections.abc import Iterable

_MOUNT = re.compile(r"--mount=(\S+)")


def context_sources(dockerfile_text: str) -> set[str]:
    """The build context paths (files or directories) the Dockerfile's instructions name."""
    lines = re.sub(r"\\\n", " ", dockerfile_text).splitlines()
    sources: set[str] = set()
    for line in lines:
        words = line.strip().split()
        if not words:
            continue
        instruction = words[0].upper()
        if instruction in ("COPY", "ADD"):
            args = shlex.split(line.strip())[1:]
            if any(arg.startswith("--from") for arg in args):
                continue
            paths = [arg for arg in args if not arg.startswith("--")]
            sources.update(paths[:-1])  # the last one is the destination
        if instruction == "RUN":
            for mount in _MOUNT.finditer(line):
                options = dict(kv.split("=", 1) for kv in mount.group(1).split(",") if "=" in kv)
                is_context_bind = options.get("type", "bind") == "bind" and "from" not in options
                if is_context_bind and "source" in options:
                    sources.add(options["source"])
    return sources


def read_dockerignore(path: str) -> list[str]:
    """The patterns of a .dockerignore file (none when it is missing); ``#`` starts a comment."""
    if not os.path.exists(path):
        return []
    with open(path) as lines:
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def is_ignored(rel: str, patterns: Iterable[str]) -> bool:
    """Whether a root-relative path is dropped: a pattern (a leading ``**/`` removed) matches the
    whole path or the name of any of its components."""
    parts = rel.split("/")
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        if fnmatch.fnmatch(rel, bare) or any(fnmatch.fnmatch(part, bare) for part in parts):
            return True
    return False


def context_files(root: str, dockerfile: str) -> list[str]:
    """The root-relative files the Dockerfile reads from the context, sorted.

    Raises SystemExit naming the Dockerfile when a source path does not exist."""
    with open(os.path.join(root, dockerfile)) as text:
        sources = context_sources(text.read())
    patterns = read_dockerignore(os.path.join(root, ".dockerignore"))
    files: set[str] = set()
    for src in sorted(sources):
        path = os.path.join(root, src)
        if os.path.isfile(path):
            files.add(os.path.normpath(src))
            continue
        if not os.path.isdir(path):
            sys.exit(f"{dockerfile}: build context path {src!r} does not exist")
        for dirpath, dirnames, filenames in os.walk(path):
            rel_dir = os.path.relpath(dirpath, root)
            dirnames[:] = [d for d in dirnames if not is_ignored(os.path.join(rel_dir, d), patterns)]
            for name in filenames:
                rel = os.path.normpath(os.path.join(rel_dir, name))
                if not is_ignored(rel, patterns):
                    files.add(rel)
    return sorted(files)


def listing(root: str, dockerfile: str) -> list[str]:
    """``sha256 path`` for every context file of the Dockerfile (the inputs hash's lines)."""
    out = []
    for rel in context_files(root, dockerfile):
        with open(os.path.join(root, rel), "rb") as data:
            out.append(f"{hashlib.file_digest(data, 'sha256').hexdigest()} {rel}")
    return out


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: image_inputs.py ROOT DOCKERFILE")
    root, dockerfile = argv
    for line in listing(root, dockerfile):
        print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
