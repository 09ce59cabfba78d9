"""Deterministic k-fold cross-validation splits (nnU-Net's ``splits_final.json`` idea).

The case ids are sorted, permuted with ``numpy.random.default_rng(seed)`` and the
permutation is cut into ``n_folds`` contiguous parts whose sizes differ by at most
one; fold ``k`` validates on part ``k`` and trains on the others. Every case is
validated in exactly one fold. The splits depend only on the set of case ids,
``n_folds`` and ``seed``, never on the order the dataset lists its cases, so
every configuration trained on the same dataset with the same ``data.split_seed``
sees the same folds and their out-of-fold predictions can be compared case by case.

``segfuse train --fold K`` writes all folds to ``splits.json`` in the fold's run
folder: a list of ``{"train": [...], "val": [...]}``, one entry per fold, ids sorted.

Example:
    >>> splits = kfold_splits(["c3", "c1", "c2", "c0"], n_folds=2, seed=0)
    >>> sorted(splits[0]["val"] + splits[1]["val"])
    ['c0', 'c1', 'c2', 'c3']
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from segfuse.data.cases import Case
from segfuse.data.layouts import read_dataset
from segfuse.io.atomic import atomic_write_text
from segfuse.io.errors import SegfuseInputError

__all__ = [
    "SPLITS_NAME",
    "dataset_fold",
    "fold_cases",
    "kfold_splits",
    "read_splits",
    "write_dataset_splits",
    "write_splits",
]

#: File name of the splits in a fold's run folder.
SPLITS_NAME = "splits.json"

Split = dict[str, list[str]]
T = TypeVar("T")


def kfold_splits(case_ids: Sequence[str], n_folds: int, seed: int) -> list[Split]:
    """``n_folds`` splits ``[{"train": ids, "val": ids}, ...]`` of ``case_ids``.

    Args:
        case_ids: unique case ids (any order).
        n_folds: number of folds, ``2 <= n_folds <= len(case_ids)``.
        seed: the split seed (``data.split_seed``).

    Raises:
        SegfuseInputError: duplicate ids, or a fold count the cases cannot fill.
    """
    ids = sorted(str(i) for i in case_ids)
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise SegfuseInputError(f"k-fold splits need unique case ids; repeated: {repeated}")
    if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise SegfuseInputError(f"config key data.folds: needs an integer >= 2, got {n_folds!r}")
    if n_folds > len(ids):
        raise SegfuseInputError(
            f"config key data.folds: {n_folds} folds need at least {n_folds} cases, the dataset has {len(ids)}"
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    parts = [set(part.tolist()) for part in np.array_split(order, n_folds)]
    return [
        {
            "train": [c for i, c in enumerate(ids) if i not in part],
            "val": [c for i, c in enumerate(ids) if i in part],
        }
        for part in parts
    ]


def fold_cases(cases: Sequence[T], n_folds: int, fold: int, seed: int) -> tuple[list[T], list[T]]:
    """``(train, val)`` cases of fold ``fold`` (objects with a ``case_id``), each sorted by id.

    Example:
        >>> train, val = fold_cases(dataset.cases, n_folds=5, fold=0, seed=0)  # doctest: +SKIP
    """
    if not 0 <= fold < n_folds:
        raise SegfuseInputError(
            f"config key data.fold: must be in 0 .. {n_folds - 1} (data.folds={n_folds}), got {fold}"
        )
    split = kfold_splits([c.case_id for c in cases], n_folds, seed)[fold]
    by_id = {c.case_id: c for c in cases}
    return [by_id[i] for i in split["train"]], [by_id[i] for i in split["val"]]


def dataset_fold(cfg) -> tuple[list[Case], list[Case]]:
    """``(train, val)`` cases of the dataset of a fold run's config (``cfg.data.fold`` set)."""
    if cfg.data.fold is None:
        raise SegfuseInputError("config key data.fold: not set; this is not a cross-validation fold run")
    dataset = read_dataset(cfg.data.dataset, primary=cfg.data.primary, aux=list(cfg.data.aux))
    return fold_cases(dataset.cases, cfg.data.folds, cfg.data.fold, cfg.data.split_seed)


def write_dataset_splits(run_dir: str | Path, cfg) -> Path:
    """Write every fold of ``cfg``'s dataset to ``run_dir/splits.json``; returns the path."""
    dataset = read_dataset(cfg.data.dataset, primary=cfg.data.primary, aux=list(cfg.data.aux))
    splits = kfold_splits([c.case_id for c in dataset.cases], cfg.data.folds, cfg.data.split_seed)
    return write_splits(Path(run_dir) / SPLITS_NAME, splits)


def write_splits(path: str | Path, splits: Sequence[Split]) -> Path:
    """Write ``splits`` as JSON (a list of ``{"train", "val"}``), atomically."""
    return atomic_write_text(Path(path), json.dumps(list(splits), indent=2) + "\n")


def read_splits(path: str | Path) -> list[Split]:
    """Read a ``splits.json`` (this module's or nnU-Net's ``splits_final.json``), checked."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SegfuseInputError(f"{path}: not a readable splits file ({exc})") from exc
    if not isinstance(data, list) or not all(
        isinstance(s, dict) and isinstance(s.get("train"), list) and isinstance(s.get("val"), list) for s in data
    ):
        raise SegfuseInputError(f"{path}: expected a list of {{'train': [...], 'val': [...]}}, one per fold")
    return [{"train": [str(i) for i in s["train"]], "val": [str(i) for i in s["val"]]} for s in data]
