"""Benchmark: segfuse on MSD hippocampus at a fixed wall-clock training budget on this CPU.

Fixed split: the 200 cases of ``../shared/data/hippocampus`` split 160/40 by
``segfuse.data.layouts.split_cases(cases, 40, seed=0)``. segfuse trains for the
budget (optimisation time; validation on the 40 for the Dice-vs-time curve is
extra wall time), then predicts the 40 with the *last* checkpoint (no model
selection on the evaluation cases) and evaluates them with ``segfuse evaluate``.

Usage:
    python benchmarks/train_hippocampus.py --minutes 30                  # full (issue 3)
    python benchmarks/train_hippocampus.py --quick                       # 3-minute smoke run
    python benchmarks/train_hippocampus.py --config configs/hippocampus_2d.yaml --minutes 30

Writes ``<out>/results.json``, ``<out>/evaluation/`` and ``docs/img/train_hippocampus_<mode>.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from segfuse.machine import machine_info

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hippocampus"


def plot_curve(metrics_csv: Path, out_png: Path, title: str) -> None:
    from matplotlib.figure import Figure

    rows = [r for r in csv.DictReader(metrics_csv.open()) if r.get("val_mean_dice")]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    minutes = [float(r["train_s"]) / 60 for r in rows]
    for key in [k for k in rows[0] if k.startswith("val_dice_")] if rows else []:
        ax.plot(minutes, [float(r[key]) for r in rows], marker="o", label=key[len("val_dice_"):])
    if rows:
        ax.plot(minutes, [float(r["val_mean_dice"]) for r in rows], "k--", label="mean")
    ax.set_xlabel("training time (min, validation excluded)")
    ax.set_ylabel("Dice on the 40 held-out cases")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "hippocampus_3d.yaml")
    parser.add_argument("--minutes", type=float, default=30.0, help="optimisation time budget")
    parser.add_argument("--quick", action="store_true", help="3-minute smoke run")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--val-every", type=int, default=None, help="validate every N epochs (default: config)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"benchmark needs the hippocampus data at {args.data}", file=sys.stderr)
        return 2
    minutes = 3.0 if args.quick else args.minutes

    from segfuse.config import load_config
    from segfuse.data.layouts import read_dataset, split_cases
    from segfuse.evaluation.evaluate import evaluate, reference_folder
    from segfuse.inference.predict import predict
    from segfuse.training.loop import train

    dataset = read_dataset(args.data)
    train_cases, val_cases = split_cases(dataset.cases, 40, seed=0)
    mode = load_config(args.config).model.mode
    out = args.out or REPO / "runs" / f"bench_train_hippocampus_{mode}{'_quick' if args.quick else ''}"
    overrides = [
        f"data.dataset={args.data}",
        "training.schedule=time",
        f"training.max_minutes={minutes}",
        "training.iterations=1000000",
        f"experiment.output_dir={out}",
        "experiment.name=run",
        *([f"training.val_every={args.val_every}"] if args.val_every else []),
        *args.overrides,
    ]
    cfg = load_config(args.config, overrides)
    cfg.data.val_cases = [c.case_id for c in val_cases]
    run_dir = out / "run"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    started = time.monotonic()
    result = train(cfg, run_dir=run_dir)
    wall = time.monotonic() - started
    pred_dir = out / "predictions"
    t0 = time.monotonic()
    batch = predict(run_dir / "checkpoint_last.pt", val_cases, pred_dir, device="cpu", progress=True)
    predict_s = (time.monotonic() - t0) / max(1, len(val_cases))
    refs = reference_folder(val_cases, out / "references")
    labels = {k: v for k, v in dataset.labels.items() if k}
    evaluation = evaluate(pred_dir, refs, out / "evaluation", labels=labels, progress=False)
    print(evaluation.table())
    classes = {name: {m: entry["metrics"][m]["mean"] for m in ("dice", "hd95_mm", "nsd")}
               for name, entry in evaluation.summary["classes"].items()}
    last = result.history[-1]
    results = {
        "benchmark": "train_hippocampus",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": machine_info(),
        "mode": mode,
        "split": {"train": len(train_cases), "eval": len(val_cases), "seed": 0},
        "budget_minutes": minutes,
        "iterations": result.iteration,
        "train_seconds": last.get("train_s"),
        "seconds_per_iteration": (last.get("train_s") or 0) / max(1, result.iteration),
        "wall_seconds_training_incl_validation": round(wall, 1),
        "predict_seconds_per_case": round(predict_s, 3),
        "failed_cases": batch.failed,
        "mean_dice": evaluation.summary["mean_dice"],
        "classes": classes,
        "curve": [{k: r[k] for k in r if k.startswith("val_") or k in ("iteration", "train_s")}
                  for r in result.history if "val_mean_dice" in r],
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    png = REPO / "docs" / "img" / f"train_hippocampus_{mode}{'_quick' if args.quick else ''}.png"
    plot_curve(run_dir / "metrics.csv", png, f"segfuse {mode}, hippocampus 160/40, {minutes:g} min CPU budget")
    print(json.dumps({k: results[k] for k in ("iterations", "seconds_per_iteration", "mean_dice", "classes",
                                                "predict_seconds_per_case")}, indent=2))
    print(f"results: {out / 'results.json'}; plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
