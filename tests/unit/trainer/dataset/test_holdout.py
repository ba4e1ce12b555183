"""spec.dataset.holdout: which images prepare-dataset keeps out of training, and the refusals."""

from __future__ import annotations

import json
import shutil

import pytest
from pydantic import ValidationError
from zthumb_contract.spec import LoRAFinetuneSpec
from zthumb_trainer.dataset.holdout import HoldoutError, held_out
from zthumb_trainer.dataset.prepare import DatasetError, load_manifest, prepare_dataset
from zthumb_trainer.train.batches import epoch_batches

NAMES = [f"img{index:03d}.png" for index in range(200)]


def test_no_holdout_by_default():
    assert LoRAFinetuneSpec().dataset.holdout == 0
    assert held_out(NAMES, 0) == set()


def test_the_split_depends_on_names_not_their_order():
    assert held_out(NAMES, 0.2) == held_out(list(reversed(NAMES)), 0.2)
    assert held_out(NAMES, 7) == held_out(list(reversed(NAMES)), 7)
    assert len(held_out(NAMES, 7)) == 7
    assert 20 < len(held_out(NAMES, 0.2)) < 60  # about a fifth of 200


def test_adding_images_does_not_reshuffle_the_split():
    more = [*NAMES, *(f"new{index:03d}.png" for index in range(100))]
    before, after = held_out(NAMES, 0.2), held_out(more, 0.2)
    # A fraction: every image already there stays on its side.
    assert after & set(NAMES) == before
    # A count: an added image moves at most one image back into training per new image held out.
    before_count, after_count = held_out(NAMES, 10), held_out(more, 10)
    assert len(before_count - after_count) == len(after_count - set(NAMES))


def test_a_small_fraction_still_holds_out_one_image():
    assert len(held_out(NAMES[:3], 0.001)) == 1


@pytest.mark.parametrize("holdout", [3, 5, 0.9999999])  # the fraction: above every name's score
def test_a_holdout_that_leaves_nothing_to_train_on_is_refused_naming_the_field(holdout):
    with pytest.raises(HoldoutError, match=r"spec\.dataset\.holdout") as error:
        held_out(NAMES[:3], holdout)
    assert "none to train on" in str(error.value)


@pytest.mark.parametrize("holdout", [-1, 2.5, 10_001])
def test_the_spec_refuses_a_holdout_that_is_neither_a_count_nor_a_fraction(holdout):
    with pytest.raises(ValidationError, match="holdout"):
        LoRAFinetuneSpec.model_validate({"dataset": {"holdout": holdout}})


def test_prepare_marks_the_held_out_images_and_training_never_batches_them(tmp_path, synthetic_dataset):
    prepared = prepare_dataset(
        synthetic_dataset, tmp_path / "run", resolution=256, trigger_word="zt", holdout=2
    )
    manifest = json.loads((tmp_path / "run" / "dataset" / "manifest.json").read_text())
    marked = {entry["source"] for entry in manifest["entries"] if entry["holdout"]}
    assert marked == held_out([entry["source"] for entry in manifest["entries"]], 2) and len(marked) == 2
    assert manifest["holdout"] == 2
    stats = json.loads((tmp_path / "run" / "dataset" / "stats.json").read_text())
    assert stats["images_held_out"] == 2 and stats["images_used"] == 8

    training = load_manifest(tmp_path / "run").for_training()
    assert len(training.entries) == 6 and not {entry.source for entry in training.entries} & marked
    for epoch in range(5):
        for batch in epoch_batches(training, 2, seed=1, epoch=epoch):
            assert all(not training.entries[index].holdout for index in batch)
    # The split is part of the dataset hash (what the adapter saw); no holdout keeps the old hash.
    plain = prepare_dataset(synthetic_dataset, tmp_path / "plain", resolution=256, trigger_word="zt")
    assert plain.dataset_hash != prepared.dataset_hash
    assert not plain.holdout_entries


def test_prepare_refuses_a_holdout_of_every_image_naming_the_field(tmp_path, synthetic_dataset):
    with pytest.raises(DatasetError, match=r"spec\.dataset\.holdout"):
        prepare_dataset(synthetic_dataset, tmp_path / "run", resolution=256, holdout=8)
    assert not (tmp_path / "run" / "dataset").exists()
    assert not [path for path in (tmp_path / "run").iterdir() if path.name.startswith("dataset")]


def test_adding_an_image_keeps_the_prepared_split_of_a_fraction(tmp_path, synthetic_dataset):
    first = prepare_dataset(synthetic_dataset, tmp_path / "a", resolution=256, holdout=0.5)
    grown = tmp_path / "grown"
    shutil.copytree(synthetic_dataset, grown)
    for path in list(grown.iterdir()):
        if path.suffix == ".png":
            shutil.copy(path, grown / f"extra-{path.name}")
            shutil.copy(path.with_suffix(".txt"), grown / f"extra-{path.stem}.txt")
    second = prepare_dataset(grown, tmp_path / "b", resolution=256, holdout=0.5)
    before = {entry.source for entry in first.holdout_entries}
    after = {entry.source for entry in second.holdout_entries}
    assert after & {entry.source for entry in first.entries} == before


def test_the_operators_prepare_step_passes_the_holdout_to_the_cli(tmp_path, synthetic_dataset):
    from typer.testing import CliRunner
    from zthumb_contract.dataset_spec import DatasetSpec
    from zthumb_contract.steps import spec_args
    from zthumb_trainer.cli import app

    args = [
        str(arg)
        for arg in spec_args(
            DatasetSpec(holdout=3, resolution=256), exclude={"path", "trigger_word", "source"}
        )
    ]
    result = CliRunner().invoke(
        app, ["prepare-dataset", "--dataset", str(synthetic_dataset), "--output", str(tmp_path), *args]
    )
    assert result.exit_code == 0, result.output
    assert "3 held out" in result.output
    refused = CliRunner().invoke(
        app,
        [
            "prepare-dataset",
            "--dataset",
            str(synthetic_dataset),
            "--output",
            str(tmp_path),
            "--resolution",
            "256",
            "--holdout",
            "8",
        ],
    )
    assert refused.exit_code != 0 and "spec.dataset.holdout" in refused.output
