"""cv-summary: out-of-fold predictions of every fold scored together, configurations compared per case."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import make_dataset, tiny_config

from segfuse.cli import main
from segfuse.config import config_from_dict
from segfuse.data.layouts import read_dataset
from segfuse.data.splits import kfold_splits
from segfuse.evaluation.crossval import compare_configurations, cv_summary, predict_validation
from segfuse.factory import build_model
from segfuse.io.checkpoint import save_checkpoint

FOLDS = 2


def _fold_runs(root: Path, manifest: Path, seed: int, folds=range(FOLDS)) -> Path:
    """A configuration's fold runs without training: each fold's checkpoint_last.pt holds seeded weights."""
    for fold in folds:
        raw = tiny_config(manifest, root)
        raw["data"].update(folds=FOLDS, fold=fold, labels={0: "background", 1: "lesion"}, primary="t1")
        cfg = config_from_dict(raw)
        torch.manual_seed(seed + fold)
        net = build_model(cfg)
        (root / f"fold_{fold}").mkdir(parents=True)
        save_checkpoint({"model": net.state_dict(), "config": cfg.to_dict(), "in_channels": 1},
                        root / f"fold_{fold}" / "checkpoint_last.pt")
    return root


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_cases=5)


def test_paired_comparison_of_designed_scores() -> None:
    a = {"c0": 0.9, "c1": 0.8, "c2": 0.7, "c3": 0.6}
    b = {"c0": 0.8, "c1": 0.8, "c2": 0.5, "c3": 0.7}
    dice = {name: {c: {"x": v, "y": v} for c, v in scores.items()} for name, scores in (("b", b), ("a", a))}
    ranking = compare_configurations(dice, n_bootstrap=2000, seed=0)
    assert ranking.ranking == ["a", "b"] and ranking.cases == ["c0", "c1", "c2", "c3"]
    assert ranking.means["a"]["mean"] == pytest.approx(0.75) and ranking.means["b"]["x"] == pytest.approx(0.7)
    comp = ranking.comparisons[0]
    assert (comp.best, comp.other) == ("a", "b")
    assert comp.mean_difference == pytest.approx(0.05)
    assert (comp.wins, comp.losses, comp.ties) == (2, 1, 1)
    low, high = comp.ci95
    assert -0.1 <= low < 0.05 < high <= 0.2  # the bootstrap mean of 4 diffs stays within their range
    assert comp.classes["y"]["mean_difference"] == pytest.approx(0.05)

    # a consistent gain: the interval excludes zero
    worse = {"c0": 0.7, "c1": 0.65, "c2": 0.55, "c3": 0.5}
    dice["b"] = {c: {"x": v, "y": v} for c, v in worse.items()}
    comp = compare_configurations(dice, n_bootstrap=2000, seed=0).comparisons[0]
    assert comp.ci95[0] > 0 and comp.wins == 4

    # cases not shared are left out, with a note
    dice["b"]["c9"] = {"x": 1.0, "y": 1.0}
    assert "1 of its cases are not shared" in compare_configurations(dice).notes[0]


@pytest.mark.slow
def test_cv_summary_scores_every_case_once_from_the_fold_that_validated_it(manifest, tmp_path, capsys) -> None:
    runs = {"alpha": _fold_runs(tmp_path / "runs" / "alpha", manifest, 0),
            "beta": _fold_runs(tmp_path / "runs" / "beta", manifest, 10)}
    ids = sorted(c.case_id for c in read_dataset(manifest).cases)
    splits = kfold_splits(ids, FOLDS, seed=0)
    # a fold predicted beforehand (as `segfuse train --fold` does) is reused, not predicted again
    first = predict_validation(runs["alpha"] / "fold_0", progress=False)
    assert sorted(r.case_id for r in first.succeeded) == splits[0]["val"]
    stamp = (runs["alpha"] / "fold_0" / "validation" / f"{splits[0]['val'][0]}.nii.gz").stat().st_mtime_ns

    assert main(["cv-summary", str(runs["alpha"]), str(runs["beta"]), "--out", str(tmp_path / "cv"),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "best:" in printed and "95% CI" in printed
    assert (runs["alpha"] / "fold_0" / "validation" / f"{splits[0]['val'][0]}.nii.gz").stat().st_mtime_ns == stamp

    for run in runs.values():  # each fold predicted exactly its own validation cases
        for fold in range(FOLDS):
            got = sorted(p.name[: -len(".nii.gz")] for p in (run / f"fold_{fold}" / "validation").glob("*.nii.gz"))
            assert got == splits[fold]["val"]

    summary = json.loads((tmp_path / "cv" / "cv_summary.json").read_text())
    assert summary["cases"] == ids and summary["classes"] == ["lesion"]
    # every number traces back to the per-configuration evaluations
    per_case = {}
    for name in runs:
        with open(tmp_path / "cv" / name / "per_case.csv", newline="") as f:
            per_case[name] = {r["case_id"]: float(r["dice"]) for r in csv.DictReader(f)}
        assert sorted(per_case[name]) == ids
        entry = next(c for c in summary["configurations"] if c["name"] == name)
        assert entry["mean_dice"] == pytest.approx(np.mean(list(per_case[name].values())))
    best, other = summary["ranking"]
    assert summary["best"] == best
    assert np.mean(list(per_case[best].values())) >= np.mean(list(per_case[other].values()))
    comp = summary["comparisons"][0]
    diffs = np.array([per_case[best][c] - per_case[other][c] for c in ids])
    assert comp["mean_difference"] == pytest.approx(diffs.mean())
    assert (comp["wins"], comp["losses"], comp["ties"]) == ((diffs > 0).sum(), (diffs < 0).sum(), (diffs == 0).sum())
    assert comp["ci95"][0] <= comp["mean_difference"] + 1e-12 and comp["mean_difference"] <= comp["ci95"][1] + 1e-12
    with open(tmp_path / "cv" / "cv_per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    folds_of = {r["case_id"]: int(r["fold"]) for r in rows}
    assert all(c in splits[k]["val"] for c, k in folds_of.items())


def test_cv_summary_names_missing_folds_and_non_fold_folders(manifest, tmp_path, capsys) -> None:
    partial = _fold_runs(tmp_path / "partial", manifest, 0, folds=[0])
    with pytest.raises(ValueError, match=r"partial: folds \[1\] of 2 are missing"):
        cv_summary([partial], tmp_path / "cv", progress=False)
    (tmp_path / "empty").mkdir()
    assert main(["cv-summary", str(tmp_path / "empty"), "--out", str(tmp_path / "cv")]) == 2
    assert "no fold runs inside" in capsys.readouterr().err
