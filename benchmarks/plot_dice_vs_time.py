"""Plot mean Dice against training time for every hippocampus run recorded in ``docs/results`` (issue 5 §1).

Reads the JSON files the hippocampus benchmarks write (copied into
``docs/results``):

- ``train_hippocampus_*.json`` (segfuse: ``benchmarks/train_hippocampus.py``),
  curve = the training loop's validation on the 40 held-out cases;
- ``peers_*.json`` (MONAI peers: ``benchmarks/peers_hippocampus.py``), curve =
  in-memory MONAI ``compute_dice`` every few minutes, last point = segfuse evaluate;
- ``nnunet_hippocampus_*.json`` (``benchmarks/nnunet_hippocampus.sh``): nnU-Net
  keeps no curve on the 40, so only its final points (with and without mirroring).

Every x value is optimisation time (batches + forward + backward + step), the
quantity each benchmark's budget counts. No training happens here; the plot is
rebuilt from the recorded numbers.

Usage:
    python benchmarks/plot_dice_vs_time.py                     # docs/img/hippocampus_dice_vs_time.png
    python benchmarks/plot_dice_vs_time.py --results docs/results --out /tmp/plot.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _segfuse_series(data: dict) -> tuple[list[float], list[float]]:
    curve = data.get("curve") or []
    minutes = [p["train_s"] / 60 for p in curve]
    dice = [p["val_mean_dice"] for p in curve]
    if data.get("train_seconds") and data.get("mean_dice") is not None:
        minutes.append(data["train_seconds"] / 60)  # the final, file-based evaluation
        dice.append(data["mean_dice"])
    return minutes, dice


def _peer_series(data: dict) -> tuple[list[float], list[float]]:
    curve = data.get("curve") or []
    return [p["train_s"] / 60 for p in curve], [p["val_mean_dice"] for p in curve]


def collect(results: Path) -> list[dict]:
    """One entry per line or point: ``{"label", "minutes", "dice", "style"}``."""
    series = []
    for path in sorted(results.glob("train_hippocampus_*.json")):
        data = json.loads(path.read_text())
        if "curve" not in data:
            continue  # a summary file, not a run
        mode = data.get("mode", "3d").upper()
        minutes, dice = _segfuse_series(data)
        # a rerun is stored as train_hippocampus_<mode>_<tag>.json and labelled with its tag
        tag = path.stem.removeprefix("train_hippocampus_").removeprefix(mode.lower()).strip("_")
        label = f"segfuse {mode}" + (f" ({tag})" if tag else "")
        series.append({"label": label, "minutes": minutes, "dice": dice, "style": "-o"})
    for path in sorted(results.glob("peers_*.json")):
        data = json.loads(path.read_text())
        minutes, dice = _peer_series(data)
        name = {"flexibleunet": "MONAI FlexibleUNet-resnet18", "dynunet": "MONAI DynUNet (nnU-Net plan)"}
        series.append({"label": name.get(data["peer"], data["peer"]), "minutes": minutes, "dice": dice,
                       "style": "--s"})
    for path in sorted(results.glob("nnunet_hippocampus_*.json")):
        data = json.loads(path.read_text())
        minutes = data["training"]["train_seconds"] / 60
        for variant, row in data["variants"].items():
            series.append({"label": f"nnU-Net v2 3d_fullres ({variant.replace('_', ' ')})", "minutes": [minutes],
                           "dice": [row["mean_dice"]], "style": "D"})
    return series


def plot(series: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for s in series:
        ax.plot(s["minutes"], s["dice"], s["style"], label=s["label"], markersize=5)
    ax.set_xlabel("optimisation time (minutes, 2-core CPU)")
    ax.set_ylabel("mean Dice on the 40 held-out cases")
    ax.set_title("MSD hippocampus, 160/40 split (seed 0), equal CPU budget")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 0.78))  # between the curves
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=REPO / "docs" / "results")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "hippocampus_dice_vs_time.png")
    args = parser.parse_args(argv)
    series = collect(args.results)
    if not series:
        print(f"no hippocampus results in {args.results}")
        return 1
    print(f"wrote {plot(series, args.out)} ({len(series)} series)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
