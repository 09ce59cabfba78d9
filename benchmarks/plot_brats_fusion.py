"""Plot the per-subject results of the BraTS fusion study (issue 12) from its ``results.json``.

Two panels for one task, both rebuilt from the recorded numbers (no training here):

- left: each subject's headline Dice with early fusion (the 2 × 2 × 4 mm auxiliaries
  upsampled and stacked) on x, and with every other setting on y; points above the
  diagonal are subjects where that setting beats early fusion;
- right: mean headline Dice of every setting at each checkpoint of the time budget
  (the snapshots and the final weights), to show whether the ranking has settled.

Usage:
    python benchmarks/plot_brats_fusion.py docs/results/brats_fusion_23_k5_4min_taskA.json \
        --out docs/img/brats_fusion_taskA.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from brats_fusion import headline, per_subject

REFERENCE = "early_lowres"


def checkpoints_of(runs: list[dict]) -> list[str]:
    """Checkpoint names in training order: the snapshots (``050pct`` …), then ``final``."""
    names = {name for r in runs for name in r["scores"]}
    return [*sorted(names - {"final"}), "final"]


def plot(payload: dict, task: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in payload["runs"] if r["task"] == task]
    region = headline(task)
    table = per_subject(runs, "final")
    reference = table[(task, REFERENCE)]
    settings = sorted(s for (t, s) in table if t == task)
    colour = {s: plt.get_cmap("tab10")(i) for i, s in enumerate(settings)}
    fig, (pairs, curve) = plt.subplots(1, 2, figsize=(11, 5))
    for setting in settings:
        if setting == REFERENCE:
            continue
        subjects = table[(task, setting)]
        common = sorted(set(subjects) & set(reference))
        x = [reference[c][region][0] for c in common]
        y = [subjects[c][region][0] for c in common]
        pairs.scatter(x, y, s=22, color=colour[setting], label=f"{setting} (n={len(common)})")
    pairs.plot([0, 1], [0, 1], color="grey", lw=1)
    pairs.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"{REFERENCE}: {region} Dice", ylabel=f"setting: {region} Dice",
              title=f"Task {task}, per subject, final weights")
    pairs.legend(fontsize=8, loc="upper left")

    names = checkpoints_of(runs)
    for setting in settings:
        means = []
        for name in names:
            subjects = per_subject(runs, name).get((task, setting), {})
            values = [v[region][0] for v in subjects.values() if region in v]
            means.append(np.mean(values) if values else np.nan)
        curve.plot(range(len(names)), means, marker="o", color=colour[setting], label=setting)
    curve.set_xticks(range(len(names)), names)
    curve.set(xlabel="checkpoint (share of the time budget)", ylabel=f"mean {region} Dice",
              title="Does the ranking settle?")
    curve.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="results.json written by benchmarks/brats_fusion.py")
    parser.add_argument("--task", default="A", choices=("A", "B"))
    parser.add_argument("--out", type=Path, default=Path("docs/img/brats_fusion_taskA.png"))
    args = parser.parse_args(argv)
    plot(json.loads(args.results.read_text()), args.task, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
