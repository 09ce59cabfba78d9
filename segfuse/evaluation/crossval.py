"""Cross-validation: out-of-fold predictions, scored together, configurations compared case by case.

Out-of-fold (OOF) predictions. ``segfuse train --fold K`` ends by predicting its
fold's validation cases with the fold's final weights (``checkpoint_last.pt``,
not ``checkpoint_best.pt``, which was chosen on those same cases) into
``fold_K/validation/`` (:func:`predict_validation`; a ``predictions.json`` there
records the checkpoint's hash). ``segfuse cv-summary`` calls the same function
for every fold, which predicts only what is missing or stale — so a fold trained
without the CLI, or interrupted before that step, is completed there.

:func:`cv_summary` then scores, for each configuration (a folder of
``fold_0 … fold_{N-1}`` runs), the OOF predictions of every fold together with
:func:`segfuse.evaluation.evaluate.evaluate` — every case once, predicted by the
one model that never saw it — and compares the configurations on the cases they
share: per case, the mean Dice over the classes (and regions, when the evaluation
reports them); the best configuration is the one with the highest mean; against
each other one it reports the mean paired difference with a 95 % bootstrap
confidence interval (10,000 resamples of the cases, seed 0) and the cases it wins,
loses and ties, overall and per class.

Example:
    >>> result = cv_summary(["runs/unet3d", "runs/unet2d"], "cv")  # doctest: +SKIP
    >>> print(result.table())  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segfuse.config import Config, config_from_dict
from segfuse.data.splits import dataset_fold
from segfuse.evaluation.evaluate import EvaluationResult, evaluate
from segfuse.inference.checkpoints import fold_run_dirs
from segfuse.inference.model import load_model
from segfuse.inference.predict import BatchResult, predict
from segfuse.io.atomic import atomic_write_text
from segfuse.io.checkpoint import load_checkpoint
from segfuse.io.errors import SegfuseInputError
from segfuse.training.logging import LOG_NAME, log_file

__all__ = [
    "VALIDATION_DIR",
    "CVSummary",
    "Comparison",
    "Configuration",
    "Ranking",
    "bootstrap_ci",
    "compare_configurations",
    "cv_summary",
    "predict_validation",
]

log = logging.getLogger("segfuse.crossval")

#: Folder of a fold run holding its out-of-fold predictions.
VALIDATION_DIR = "validation"
N_BOOTSTRAP = 10_000


# ---------------------------------------------------------------- out-of-fold predictions


def _fold_config(run_dir: Path) -> tuple[dict[str, Any], Config]:
    state = load_checkpoint(run_dir / "checkpoint_last.pt")
    return state, config_from_dict(state["config"])


def predict_validation(
    run_dir: str | Path, *, device: str | None = None, progress: bool = True
) -> BatchResult | None:
    """Predict a fold run's validation cases with its ``checkpoint_last.pt`` into ``run_dir/validation``.

    Cases already predicted by the same checkpoint (hash in ``predictions.json``)
    are kept. Returns ``None`` when ``run_dir`` is not a cross-validation fold run.

    Args:
        run_dir: a fold's run folder (``segfuse train --fold K``).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``; default the run's ``training.device``.
        progress: a progress bar over the cases.
    """
    run_dir = Path(run_dir)
    state, cfg = _fold_config(run_dir)
    if cfg.data.fold is None:
        return None
    model = load_model(state, device=device or cfg.training.device)
    model.checkpoint = Path(state["path"])  # recorded (with its hash) in predictions.json
    _, val_cases = dataset_fold(cfg)
    with log_file(run_dir / LOG_NAME):
        result = predict(model, val_cases, run_dir / VALIDATION_DIR, resume=True, progress=progress)
        log.info("out-of-fold predictions with %s: %s", model.checkpoint.name, result.summary().replace("\n", "; "))
    return result


# ---------------------------------------------------------------- one configuration


@dataclass
class Configuration:
    """One configuration's cross-validation: its folds and the evaluation of all their OOF predictions.

    Attributes:
        name: how tables name it (the run folder's name).
        run_dir: the folder holding ``fold_0 …``.
        folds: the fold run folders, by fold number.
        fold_of: case id → the fold that validated it.
        evaluation: :func:`evaluate` over every OOF prediction (``<out>/<name>/``).
        dice: case id → class (or region) name → Dice.
    """

    name: str
    run_dir: Path
    folds: list[Path]
    fold_of: dict[str, int]
    evaluation: EvaluationResult
    dice: dict[str, dict[str, float]] = field(default_factory=dict)


def _check_folds(run: Path, folds: list[Path]) -> list[Config]:
    if not folds:
        raise SegfuseInputError(
            f"{run}: no fold runs inside (fold_0, fold_1, ... with a checkpoint); train them with "
            "`segfuse train --config CONFIG --fold K` for every fold K"
        )
    configs = []
    for folder in folds:
        if not (folder / "checkpoint_last.pt").is_file():
            raise SegfuseInputError(f"{folder}: no checkpoint_last.pt; finish it (segfuse train --resume {folder})")
        cfg = _fold_config(folder)[1]
        if cfg.data.fold is None:
            raise SegfuseInputError(f"{folder}: not a cross-validation run (its config has no data.fold)")
        if folder.name != f"fold_{cfg.data.fold}":
            raise SegfuseInputError(f"{folder}: its config says data.fold={cfg.data.fold}, its name says otherwise")
        configs.append(cfg)
    first = configs[0]
    for folder, cfg in zip(folds, configs, strict=True):
        for key, mine, theirs in (
            ("data.folds", cfg.data.folds, first.data.folds),
            ("data.split_seed", cfg.data.split_seed, first.data.split_seed),
            ("data.dataset", cfg.data.dataset, first.data.dataset),
        ):
            if mine != theirs:
                raise SegfuseInputError(
                    f"{folder}: {key} is {mine!r} but {folds[0]} has {theirs!r}; the folds of one configuration "
                    "must split the same dataset the same way"
                )
    present = {cfg.data.fold for cfg in configs}
    missing = sorted(set(range(first.data.folds)) - present)
    if missing:
        raise SegfuseInputError(
            f"{run}: folds {missing} of {first.data.folds} are missing (found {sorted(present)}); train them with "
            "`segfuse train --config CONFIG --fold K`"
        )
    return configs


def _score_configuration(
    run: Path, name: str, out_dir: Path, *, device: str | None, tolerance_mm: float, progress: bool
) -> Configuration:
    folds = fold_run_dirs(run)
    configs = _check_folds(run, folds)
    pairs: list[tuple[str, Path, Path]] = []
    fold_of: dict[str, int] = {}
    for folder, cfg in zip(folds, configs, strict=True):
        batch = predict_validation(folder, device=device, progress=progress)
        if batch is None or not batch.ok:
            failed = {} if batch is None else batch.failed
            raise SegfuseInputError(f"{folder}: out-of-fold prediction failed for {failed}")
        for case in dataset_fold(cfg)[1]:
            pairs.append((case.case_id, folder / VALIDATION_DIR / f"{case.case_id}.nii.gz", Path(case.label)))
            fold_of[case.case_id] = int(cfg.data.fold)
    target = out_dir / name
    target.mkdir(parents=True, exist_ok=True)
    manifest = target / "oof_pairs.csv"
    lines = ["case_id,pred,ref", *(f"{c},{p.resolve()},{r.resolve()}" for c, p, r in sorted(pairs))]
    atomic_write_text(manifest, "\n".join(lines) + "\n")
    labels = {k: v for k, v in configs[0].data.labels.items() if k != 0}
    evaluation = evaluate(manifest, None, target, labels=labels, tolerance_mm=tolerance_mm, progress=progress)
    dice: dict[str, dict[str, float]] = {}
    for row in evaluation.rows:
        dice.setdefault(row["case_id"], {})[str(row["name"])] = float(row["dice"])
    return Configuration(name, run, folds, fold_of, evaluation, dice)


# ---------------------------------------------------------------- comparison


def bootstrap_ci(diffs: np.ndarray, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of ``diffs`` (resampling cases)."""
    if diffs.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, diffs.size, size=(n_bootstrap, diffs.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


@dataclass
class Comparison:
    """The best configuration against another, paired over the cases both predicted.

    ``mean_difference`` is best minus other (positive: the best is better), in
    per-case mean Dice; ``ci95`` its bootstrap interval; ``wins``/``losses``/``ties``
    count the cases where the best is better / worse / equal. ``classes`` holds
    the same per class: ``{name: {"mean_difference", "ci95", "wins", "losses", "ties"}}``.
    """

    best: str
    other: str
    n_cases: int
    mean_difference: float
    ci95: tuple[float, float]
    wins: int
    losses: int
    ties: int
    classes: dict[str, dict[str, Any]]


def _paired(best: np.ndarray, other: np.ndarray, n_bootstrap: int, seed: int) -> dict[str, Any]:
    diffs = best - other
    return {
        "mean_difference": float(diffs.mean()) if diffs.size else math.nan,
        "ci95": bootstrap_ci(diffs, n_bootstrap, seed),
        "wins": int((diffs > 0).sum()),
        "losses": int((diffs < 0).sum()),
        "ties": int((diffs == 0).sum()),
    }


@dataclass
class Ranking:
    """:func:`compare_configurations`' result: shared cases and classes, means, ranking, paired comparisons."""

    cases: list[str]
    classes: list[str]
    means: dict[str, dict[str, float]]
    ranking: list[str]
    comparisons: list[Comparison]
    notes: list[str]


def compare_configurations(
    dice: dict[str, dict[str, dict[str, float]]], *, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0
) -> Ranking:
    """Rank configurations by mean per-case Dice on their shared cases; pair the best with each other one.

    Args:
        dice: configuration → case id → class (or region) name → Dice.
        n_bootstrap, seed: the bootstrap of the 95 % intervals.

    Example:
        >>> r = compare_configurations({"a": {"c0": {"x": 0.9}, "c1": {"x": 0.7}},
        ...                             "b": {"c0": {"x": 0.8}, "c1": {"x": 0.6}}})
        >>> r.ranking, round(r.comparisons[0].mean_difference, 6), r.comparisons[0].wins
        (['a', 'b'], 0.1, 2)
    """
    notes: list[str] = []
    names = list(dice)
    cases = sorted(set.intersection(*(set(dice[n]) for n in names)))
    if not cases:
        raise SegfuseInputError(
            "the configurations share no case: " + "; ".join(f"{n}: {sorted(dice[n])[:5]}..." for n in names)
        )
    for name in names:
        if len(dice[name]) != len(cases):
            notes.append(f"{name}: {len(dice[name]) - len(cases)} of its cases are not shared; compared on the others")
    classes = [k for k in dice[names[0]][cases[0]] if all(k in dice[n][case] for n in names for case in cases)]
    if not classes:
        raise SegfuseInputError(f"the configurations share no class: {[sorted(dice[n][cases[0]]) for n in names]}")

    def scores(name: str, cls: str | None) -> np.ndarray:
        if cls is None:
            return np.array([np.mean([dice[name][case][k] for k in classes]) for case in cases])
        return np.array([dice[name][case][cls] for case in cases])

    means = {n: {"mean": float(scores(n, None).mean()), **{k: float(scores(n, k).mean()) for k in classes}}
             for n in names}
    ranking = sorted(names, key=lambda n: -means[n]["mean"])  # stable: ties keep the order given
    best = ranking[0]
    comparisons = []
    for name in ranking[1:]:
        overall = _paired(scores(best, None), scores(name, None), n_bootstrap, seed)
        per_class = {k: _paired(scores(best, k), scores(name, k), n_bootstrap, seed) for k in classes}
        comparisons.append(Comparison(best, name, len(cases), classes=per_class, **overall))
    return Ranking(cases, classes, means, ranking, comparisons, notes)


@dataclass
class CVSummary:
    """What :func:`cv_summary` computed and wrote (``cv_summary.json``, ``cv_per_case.csv``)."""

    configurations: list[Configuration]
    cases: list[str]
    classes: list[str]
    means: dict[str, dict[str, float]]
    ranking: list[str]
    comparisons: list[Comparison]
    out_dir: Path
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> str:
        """Name of the configuration with the highest mean Dice on the shared cases."""
        return self.ranking[0]

    def table(self) -> str:
        """Per-configuration means on the shared cases, then the best against each other."""
        header = ("configuration", "folds", "cases", "mean Dice", *self.classes)
        rows = [header]
        by_name = {c.name: c for c in self.configurations}
        for name in self.ranking:
            m = self.means[name]
            rows.append((name, str(len(by_name[name].folds)), str(len(self.cases)), f"{m['mean']:.4f}",
                         *(f"{m[c]:.4f}" for c in self.classes)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.append(f"best: {self.best} (mean Dice {self.means[self.best]['mean']:.4f} over {len(self.cases)} "
                     "out-of-fold cases)")
        for comp in self.comparisons:
            low, high = comp.ci95
            lines.append(
                f"  vs {comp.other}: {comp.mean_difference:+.4f} mean Dice per case "
                f"(95% CI {low:+.4f} to {high:+.4f}), better on {comp.wins} cases, worse on {comp.losses}, "
                f"tied on {comp.ties}"
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "classes": self.classes,
            "configurations": [
                {
                    "name": c.name,
                    "run_dir": str(c.run_dir),
                    "folds": [str(f) for f in c.folds],
                    "n_cases_evaluated": len(c.dice),
                    "evaluation": str(c.evaluation.out_dir),
                    "mean_dice": self.means[c.name]["mean"],
                    "class_dice": {k: self.means[c.name][k] for k in self.classes},
                }
                for c in self.configurations
            ],
            "ranking": self.ranking,
            "best": self.best,
            "comparisons": [
                {
                    "best": c.best,
                    "other": c.other,
                    "n_cases": c.n_cases,
                    "mean_difference": c.mean_difference,
                    "ci95": list(c.ci95),
                    "wins": c.wins,
                    "losses": c.losses,
                    "ties": c.ties,
                    "classes": {k: {**v, "ci95": list(v["ci95"])} for k, v in c.classes.items()},
                }
                for c in self.comparisons
            ],
            "method": {
                "case_score": "mean Dice over the classes of the case",
                "difference": "best minus other, per case, then averaged",
                "ci95": f"percentile bootstrap over cases, {N_BOOTSTRAP} resamples, seed 0",
                "predictions": "each case predicted by the checkpoint_last.pt of the fold that validated it",
            },
            "notes": self.notes,
        }


def _unique_names(runs: Sequence[Path]) -> list[str]:
    names = [r.resolve().name for r in runs]
    if len(set(names)) == len(names):
        return names
    return [str(r) for r in runs]


def cv_summary(
    runs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    device: str | None = None,
    tolerance_mm: float = 1.0,
    progress: bool = True,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
) -> CVSummary:
    """Score each configuration's out-of-fold predictions and compare the configurations case by case.

    Args:
        runs: one folder per configuration, each holding its ``fold_K`` runs
            (``<output_dir>/<name>`` of ``segfuse train --fold K``).
        out_dir: writes ``cv_summary.json``, ``cv_per_case.csv`` and one
            :func:`evaluate` folder per configuration (``<out_dir>/<name>/``).
        device: for the OOF predictions still to make (default: each run's ``training.device``).
        tolerance_mm: the surface Dice tolerance of the evaluation.
        progress: progress bars.
        n_bootstrap, seed: the bootstrap of the confidence intervals.

    Raises:
        SegfuseInputError: a folder without fold runs, missing folds, folds that
            split differently, or configurations that share no case.
    """
    run_paths = [Path(r) for r in runs]
    if not run_paths:
        raise SegfuseInputError("cv-summary needs at least one folder of fold runs")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    configs = [
        _score_configuration(run, name, out_dir, device=device, tolerance_mm=tolerance_mm, progress=progress)
        for run, name in zip(run_paths, _unique_names(run_paths), strict=True)
    ]
    comparison = compare_configurations({c.name: c.dice for c in configs}, n_bootstrap=n_bootstrap, seed=seed)
    cases, classes = comparison.cases, comparison.classes
    result = CVSummary(configs, cases, classes, comparison.means, comparison.ranking, comparison.comparisons, out_dir,
                       comparison.notes)
    atomic_write_text(out_dir / "cv_summary.json", json.dumps(result.to_dict(), indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", "configuration", "fold", "class", "dice"])
    for config in configs:
        for case in result.cases:
            for cls in classes:
                writer.writerow([case, config.name, config.fold_of[case], cls, f"{config.dice[case][cls]:.6f}"])
            mean = np.mean([config.dice[case][k] for k in classes])
            writer.writerow([case, config.name, config.fold_of[case], "mean", f"{mean:.6f}"])
    atomic_write_text(out_dir / "cv_per_case.csv", buffer.getvalue())
    return result
