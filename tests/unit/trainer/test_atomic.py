"""Staging and publishing what other processes read: whole or not at all, nothing left behind, and
never on top of what another writer created."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest
from zthumb_trainer.atomic import (
    publish_directory,
    publish_new_directory,
    publish_new_file,
    staging_directory,
    staging_path,
    write_text_atomically,
    writer_token,
)


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_staging_names_carry_the_host_and_random_hex_never_the_pid(tmp_path):
    target = tmp_path / "adapter"
    first, second = staging_path(target, "tmp"), staging_path(target, "tmp")
    assert first != second  # one process staging the same target twice: two names
    assert re.fullmatch(rf"\.adapter\.tmp-{re.escape(writer_token())}-[0-9a-f]{{6}}", first.name)
    host, random_part = writer_token().rsplit("-", 1)
    assert host == re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())  # the pod's name in Kubernetes
    assert re.fullmatch(r"[0-9a-f]{8}", random_part)


def test_a_forked_child_is_another_writer():
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.write(write, writer_token().encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_token = pipe.read()
    os.waitpid(child, 0)
    assert child_token and child_token != writer_token()


def test_a_staging_directory_is_new_and_never_an_existing_one(tmp_path):
    target = tmp_path / "a" / "run"
    staging = staging_directory(target)
    assert staging.is_dir() and not any(staging.iterdir()) and staging.parent == target.parent
    assert staging_directory(target) != staging


def test_publishing_onto_an_existing_directory_replaces_it_whole(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "weights").write_text("old")
    (target / "only-in-old").write_text("gone after the swap")
    staging = staging_directory(target)
    (staging / "weights").write_text("new")

    assert publish_directory(staging, target) == target

    assert _tree(target) == {"weights": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no staging, no retired copy


def test_publishing_creates_the_parent(tmp_path):
    staging = staging_directory(tmp_path / "run")
    (staging / "report.md").write_text("# report")

    publish_directory(staging, tmp_path / "outputs" / "eval" / "run")

    assert _tree(tmp_path / "outputs") == {"eval/run/report.md": "# report"}


def test_a_shared_entry_is_published_once_and_the_later_writer_keeps_its_staging(tmp_path):
    target = tmp_path / "cache" / "sha"
    first, second = staging_directory(target), staging_directory(target)
    (first / "a.txt").write_text("first")
    (second / "a.txt").write_text("second")

    assert publish_new_directory(first, target) is True
    assert publish_new_directory(second, target) is False

    assert _tree(target) == {"a.txt": "first"}
    assert _tree(second) == {"a.txt": "second"}  # the caller discards its own copy


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_shared_file_is_published_once(tmp_path, monkeypatch, hard_links):
    if not hard_links:  # a filesystem without hard links: the fallback checks the name first

        def no_link(*args):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    target = tmp_path / "model.safetensors"
    first, second = staging_path(target, "part"), staging_path(target, "part")
    first.write_text("first")
    second.write_text("second")

    assert publish_new_file(first, target) is True
    assert publish_new_file(second, target) is False

    assert target.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_write_text_atomically_replaces_the_file_and_leaves_no_staging_file(tmp_path):
    path = tmp_path / "samples.json"
    path.write_text("old")

    write_text_atomically(path, "new")

    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["samples.json"]
