"""Plot the per-subject results of the BraTS fusion study (issue 12) from its ``results.json``.

Two panels for one task, both rebuilt from the recorded numbers (no training here):

- left: each subject's headline Dice with early fusion (the 2 × 2 × 4 mm auxiliaries
  upsampled and stacked) on x, and with every other setting on y; points above the
  diagonal are subjects where that setting beats early fusion;
- right: mean headline Dice of every setting at each checkpoint of the time budget
  (the snapshots and the final weights), to show whether the ranking has settled.

Usage:
    python benchmarks/plot_brats_fusion.py docs/results/brats_fusion_23_k5_4min_taskA_folds0-3.json \
        --out docs/img/brats_fusion_taskA.png
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


def plot(payload: dict, task: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in payload["runs"] if r.get("task") == task]
    region = headline(task)
    names = checkpoints_of(runs)
    tables = {name: per_subject(runs, name) for name in names}  # {checkpoint: {(task, setting): …}}
    settings = sorted(s for (t, s) in tables.get("final", {}) if t == task)
    if REFERENCE not in settings:
        raise ValueError(f"task {task} has no final {REFERENCE} scores (settings found: {settings or 'none'})")
    reference = dice_of(tables["final"], task, REFERENCE, region)
    colour = {s: plt.get_cmap("tab10")(i) for i, s in enumerate(settings)}
    fig, (pairs, curve) = plt.subplots(1, 2, figsize=(11, 5))
    for setting in settings:
        if setting == REFERENCE:
            continue
        dice = dice_of(tables["final"], task, setting, region)
        common = sorted(set(dice) & set(reference))
        pairs.scatter([reference[c] for c in common], [dice[c] for c in common], s=22, color=colour[setting],
                      label=f"{setting} (n={len(common)})")
    pairs.plot([0, 1], [0, 1], color="grey", lw=1)
    pairs.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"{REFERENCE}: {region} Dice", ylabel=f"setting: {region} Dice",
              title=f"Task {task}, per subject, final weights")
    pairs.legend(fontsize=8, loc="upper left")

    for setting in settings:
        means = [np.mean(list(d.values())) if (d := dice_of(tables[name], task, setting, region)) else np.nan
                 for name in names]
        curve.plot(range(len(names)), means, marker="o", color=colour[setting], label=setting)
    curve.set_xticks(range(len(names)), names)
    curve.set(xlabel="checkpoint (share of the time budget)", ylabel=f"mean {region} Dice",
              title="Does the ranking settle?")
    curve.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="results.json written by benchmarks/brats_fusion.py")
    parser.add_argument("--task", default="A", choices=("A", "B"))
    parser.add_argument("--out", type=Path, default=Path("docs/img/brats_fusion_taskA.png"))
    args = parser.parse_args(argv)
    try:
        payload = json.loads(args.results.read_text())
    except (OSError, json.JSONDecodeError) as err:
        print(f"{args.results}: cannot read the study's results.json: {err}", file=sys.stderr)
        return 2
    if not isinstance(payload, dict) or not isinstance(payload.get("runs"), list):
        print(f"{args.results}: not a results.json of benchmarks/brats_fusion.py (no 'runs' list; "
              f"older studies wrote another format)", file=sys.stderr)
        return 2
    if args.out.resolve() == args.results.resolve():
        print(f"{args.out}: the plot would overwrite its input", file=sys.stderr)
        return 2
    try:
        plot(payload, args.task, args.out)
    except ValueError as err:
        print(f"{args.results}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
