"""Staging and publishing what other processes read: whole or not at all, and nothing left behind."""

from __future__ import annotations

from pathlib import Path

from zthumb_trainer.atomic import fresh_directory, publish_directory, write_text_atomically


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_fresh_directory_drops_what_an_interrupted_attempt_left(tmp_path):
    staging = tmp_path / "a" / ".x.tmp-1"
    (staging / "old").mkdir(parents=True)
    (staging / "old" / "half.bin").write_text("half")

    assert fresh_directory(staging) == staging
    assert staging.is_dir() and not any(staging.iterdir())


def test_publishing_onto_an_existing_directory_replaces_it_whole(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "weights").write_text("old")
    (target / "only-in-old").write_text("gone after the swap")
    staging = fresh_directory(tmp_path / ".adapter.tmp-1")
    (staging / "weights").write_text("new")

    assert publish_directory(staging, target) == target

    assert _tree(target) == {"weights": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no staging, no retired copy


def test_publishing_creates_the_parent(tmp_path):
    staging = fresh_directory(tmp_path / ".run.tmp-1")
    (staging / "report.md").write_text("# report")

    publish_directory(staging, tmp_path / "outputs" / "eval" / "run")

    assert _tree(tmp_path / "outputs") == {"eval/run/report.md": "# report"}


def test_write_text_atomically_replaces_the_file_and_leaves_no_staging_file(tmp_path):
    path = tmp_path / "samples.json"
    path.write_text("old")

    write_text_atomically(path, "new")

    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["samples.json"]
