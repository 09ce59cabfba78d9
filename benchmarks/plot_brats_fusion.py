"""Plot the per-subject results of the BraTS fusion study (issue 12) from its ``results.json``.

Two panels for one task, both rebuilt from the recorded numbers (no training here):

- left: each subject's headline Dice with early fusion (the 2 × 2 × 4 mm auxiliaries
  upsampled and stacked) on x, and with every other setting on y; points above the
  diagonal are subjects where that setting beats early fusion;
- right: mean headline Dice of every setting at each checkpoint of the time budget
  (the snapshots and the final weights) against minutes of optimisation, to show
  whether the ranking has settled. Given several studies of the same subjects at
  different budgets (e.g. 4 and 7 minutes per run), each budget is drawn as its own
  line per setting (longest solid), and the left panel shows the longest budget.

Usage:
    python benchmarks/plot_brats_fusion.py docs/results/brats_fusion_23_k5_4min_taskA_folds0-3.json \
        --out docs/img/brats_fusion_taskA.png
    python benchmarks/plot_brats_fusion.py docs/results/brats_fusion_taskB_2026-12-07.json \
        docs/results/brats_fusion_taskB_7min_2026-12-07.json --task B --out docs/img/brats_fusion_taskB.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from brats_fusion import dice_of, headline, per_subject

from segfuse.io.atomic import atomic_output_path

REFERENCE = "early_lowres"


def checkpoints_of(runs: list[dict]) -> list[str]:
    """Checkpoint names in training order: the snapshots (``050pct`` …), then ``final``."""
    names = {name for r in runs for name in r["scores"]}
    return [*sorted(names - {"final"}), "final"]


def minutes_at(name: str, budget: float) -> float:
    """Minutes of optimisation at checkpoint ``name`` (``050pct`` or ``final``) of a ``budget``-minute run."""
    return budget if name == "final" else budget * int(name.removesuffix("pct")) / 100


def plot(payload: dict, task: str, out: Path, only: list[str] | None = None) -> None:
    """Draw ``payload["runs"]`` of ``task`` (runs of one or several budgets, ``minutes`` each) to ``out``.

    ``only``: the settings to draw (the reference is always kept for the left panel); default every one.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = [r for r in payload["runs"] if r.get("task") == task]
    budgets = sorted({float(r.get("minutes", 1.0)) for r in every})
    # {budget: {checkpoint: {(task, setting): …}}}, each table built once
    tables_of = {}
    for b in budgets:
        group = [r for r in every if float(r.get("minutes", 1.0)) == b]
        tables_of[b] = {name: per_subject(group, name) for name in checkpoints_of(group)}
    tables = tables_of[budgets[-1]] if budgets else {}  # the left panel: the longest budget
    region = headline(task)
    measure = "Dice, mean over regions" if region == "mean" else f"{region} Dice"
    settings = sorted(s for (t, s) in tables.get("final", {}) if t == task)
    if REFERENCE not in settings:
        raise ValueError(f"task {task} has no final {REFERENCE} scores (settings found: {settings or 'none'})")
    reference = dice_of(tables["final"], task, REFERENCE, region)
    everywhere = sorted({s for b in budgets for (t, s) in tables_of[b]["final"] if t == task})
    if only:
        unknown = sorted(set(only) - set(everywhere))
        if unknown:
            raise ValueError(f"task {task} has no settings {unknown} (found: {everywhere})")
        settings = [s for s in settings if s in only or s == REFERENCE]
        everywhere = [s for s in everywhere if s in only or s == REFERENCE]
    colour = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(everywhere)}
    fig, (pairs, curve) = plt.subplots(1, 2, figsize=(11, 5))
    for setting in settings:
        if setting == REFERENCE:
            continue
        dice = dice_of(tables["final"], task, setting, region)
        common = sorted(set(dice) & set(reference))
        pairs.scatter([reference[c] for c in common], [dice[c] for c in common], s=22, color=colour[setting],
                      label=f"{setting} (n={len(common)})")
    pairs.plot([0, 1], [0, 1], color="grey", lw=1)
    pairs.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"{REFERENCE}: {measure}", ylabel=f"setting: {measure}",
              title=f"Task {task}, per subject, final weights ({budgets[-1]:g} min)")
    pairs.legend(fontsize=8, loc="upper left")

    styles = ("-", "--", ":", "-.")
    for rank, budget in enumerate(reversed(budgets)):
        for setting in everywhere:
            means = [np.mean(list(d.values())) if (d := dice_of(table, task, setting, region)) else np.nan
                     for table in tables_of[budget].values()]
            if np.all(np.isnan(means)):
                continue
            label = setting if len(budgets) == 1 else f"{setting} ({budget:g} min runs)"
            curve.plot([minutes_at(name, budget) for name in tables_of[budget]], means, marker="o",
                       linestyle=styles[rank % len(styles)], color=colour[setting], label=label)
    curve.set(xlabel="minutes of optimisation (snapshots and final weights)", ylabel=f"{measure}, mean over subjects",
              title="Does the ranking settle?")
    curve.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+",
                        help="results.json written by benchmarks/brats_fusion.py; several: studies at other budgets")
    parser.add_argument("--task", default="A", choices=("A", "B"))
    parser.add_argument("--settings", nargs="+", help="draw only these settings (e.g. primary_only early_lowres)")
    parser.add_argument("--out", type=Path, default=Path("docs/img/brats_fusion_taskA.png"))
    args = parser.parse_args(argv)
    runs = []
    for path in args.results:
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            print(f"{path}: cannot read the study's results.json: {err}", file=sys.stderr)
            return 2
        if not isinstance(payload, dict) or not isinstance(payload.get("runs"), list):
            print(f"{path}: not a results.json of benchmarks/brats_fusion.py (no 'runs' list; "
                  f"older studies wrote another format)", file=sys.stderr)
            return 2
        if args.out.resolve() == path.resolve():
            print(f"{args.out}: the plot would overwrite its input", file=sys.stderr)
            return 2
        runs += payload["runs"]
    try:
        plot({"runs": runs}, args.task, args.out, args.settings)
    except ValueError as err:
        print(f"{' '.join(map(str, args.results))}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
