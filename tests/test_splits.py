"""k-fold splits: deterministic, a partition of the cases, written beside each fold's run; train.log."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_training import make_dataset, tiny_config

from segfuse.config import config_from_dict
from segfuse.data.layouts import read_dataset
from segfuse.data.splits import SPLITS_NAME, fold_cases, kfold_splits, read_splits, write_splits
from segfuse.io.checkpoint import load_checkpoint
from segfuse.io.errors import SegfuseInputError
from segfuse.machine import cpu_model
from segfuse.training.loop import train

IDS = [f"case{i:02d}" for i in range(11)]


@pytest.mark.parametrize("n_folds", [2, 3, 5, 11])
def test_folds_partition_the_cases_with_sizes_differing_by_at_most_one(n_folds: int) -> None:
    splits = kfold_splits(IDS, n_folds, seed=0)
    assert len(splits) == n_folds
    vals = [s["val"] for s in splits]
    assert sorted(i for v in vals for i in v) == IDS  # every case validated exactly once
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    for split in splits:
        assert sorted(split["train"] + split["val"]) == IDS
        assert not set(split["train"]) & set(split["val"])
        assert split["val"] == sorted(split["val"]) and split["train"] == sorted(split["train"])


def test_splits_depend_on_ids_and_seed_not_on_order() -> None:
    shuffled = IDS[::-1][5:] + IDS[::-1][:5]
    assert kfold_splits(shuffled, 5, seed=3) == kfold_splits(IDS, 5, seed=3)
    assert kfold_splits(IDS, 5, seed=3) != kfold_splits(IDS, 5, seed=4)
    # a fixed expectation (numpy's default_rng(0) permutation of the sorted ids, cut in two):
    # a change of method, which would change every user's folds, cannot pass unnoticed
    assert kfold_splits(["e", "d", "c", "b", "a"], 2, seed=0) == [
        {"train": ["a", "b"], "val": ["c", "d", "e"]},
        {"train": ["c", "d", "e"], "val": ["a", "b"]},
    ]


def test_bad_fold_counts_name_the_key() -> None:
    with pytest.raises(SegfuseInputError, match=r"data\.folds.*5 folds need at least 5 cases.*has 3"):
        kfold_splits(["a", "b", "c"], 5, seed=0)
    with pytest.raises(SegfuseInputError, match=r"data\.folds.*>= 2"):
        kfold_splits(["a", "b", "c"], 1, seed=0)
    with pytest.raises(SegfuseInputError, match=r"unique.*\['a'\]"):
        kfold_splits(["a", "a", "b"], 2, seed=0)


def test_config_fold_defaults_to_five_folds_and_is_checked(tmp_path: Path) -> None:
    cfg = config_from_dict({"data": {"fold": 2}})
    assert cfg.data.folds == 5
    with pytest.raises(SegfuseInputError, match=r"data\.fold: must be in 0 \.\. 2"):
        config_from_dict({"data": {"fold": 3, "folds": 3}})
    with pytest.raises(SegfuseInputError, match=r"data\.val_cases.*data\.fold"):
        config_from_dict({"data": {"fold": 0, "val_cases": ["a"]}})
    with pytest.raises(SegfuseInputError, match=r"data\.folds: needs 2 or more"):
        config_from_dict({"data": {"folds": 1}})


def test_write_and_read_splits_round_trip(tmp_path: Path) -> None:
    splits = kfold_splits(IDS, 3, seed=1)
    path = write_splits(tmp_path / SPLITS_NAME, splits)
    assert read_splits(path) == splits
    (tmp_path / "bad.json").write_text('{"train": []}')
    with pytest.raises(SegfuseInputError, match="list of"):
        read_splits(tmp_path / "bad.json")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_cases=5)


def test_fold_training_writes_its_folder_splits_and_log(manifest: Path, tmp_path: Path) -> None:
    raw = tiny_config(manifest, tmp_path, iterations=2)
    raw["data"].update(folds=2, fold=1)
    result = train(config_from_dict(raw), progress=False)
    assert result.run_dir == tmp_path / "tiny" / "fold_1"

    splits = json.loads((result.run_dir / SPLITS_NAME).read_text())
    ids = [c.case_id for c in read_dataset(manifest).cases]
    assert splits == kfold_splits(ids, 2, seed=0)
    train_ids, val_ids = fold_cases(read_dataset(manifest).cases, 2, 1, 0)
    assert [c.case_id for c in val_ids] == splits[1]["val"]
    # the validation cases of the run are the fold's: validation Dice is reported for them
    state = load_checkpoint(result.run_dir / "checkpoint_last.pt")
    assert state["config"]["data"]["fold"] == 1 and state["config"]["data"]["folds"] == 2
    assert "val_mean_dice" in state["history"][-1]

    log = (result.run_dir / "train.log").read_text().splitlines()
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO segfuse\.train: "
    assert re.match(stamp + rf"run folder .*fold_1: {len(train_ids)} training and {len(val_ids)} validation", log[0])
    assert re.match(stamp + re.escape(f"machine: {cpu_model()}, "), log[1])  # where the run's speed was measured
    epochs = [line for line in log if "iteration=" in line]
    assert len(epochs) == 1 and "train_loss=" in epochs[0] and "val_mean_dice=" in epochs[0]
    assert re.match(stamp + "finished 2 iterations", log[-1])
