"""segfuse-side helper for benchmarks/nnunet_hippocampus.sh (runs in segfuse's venv, not nnU-Net's).

Verbs:
    convert   --data DIR --raw DIR      the 160 -> imagesTr/labelsTr, the 40 -> imagesTs (+ their references)
    evaluate  --work DIR --budget-minutes M --predict-seconds NAME=S ...
              score each predictions_<NAME>/ with segfuse's evaluate; write results.json and results.md

The split is segfuse's: ``segfuse.data.layouts.split_cases(cases, 40, seed=0)``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

DATASET = "Dataset004_Hippocampus"


def convert(data: Path, raw: Path, references: Path) -> None:
    """Write nnU-Net v2's raw layout for the 160 training cases and imagesTs for the 40."""
    from segfuse.data.layouts import read_dataset, split_cases

    dataset = read_dataset(data)
    train, held_out = split_cases(dataset.cases, 40, seed=0)
    root = raw / DATASET
    if root.exists():
        shutil.rmtree(root)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    references.mkdir(parents=True, exist_ok=True)
    for case in train:
        shutil.copyfile(case.primary.path, root / "imagesTr" / f"{case.case_id}_0000.nii.gz")
        shutil.copyfile(case.label, root / "labelsTr" / f"{case.case_id}.nii.gz")
    for case in held_out:
        shutil.copyfile(case.primary.path, root / "imagesTs" / f"{case.case_id}_0000.nii.gz")
        shutil.copyfile(case.label, references / f"{case.case_id}.nii.gz")
    meta = {
        "name": "Hippocampus (segfuse 160/40 split, seed 0)",
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": len(train),
        "file_ending": ".nii.gz",
        "licence": "CC-BY-SA 4.0 (Medical Segmentation Decathlon)",
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    print(f"converted {len(train)} training and {len(held_out)} test cases into {root}")


def machine() -> dict[str, Any]:
    import os

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def evaluate_runs(work: Path, budget_minutes: float, predict_seconds: dict[str, float], n_cases: int,
                  nnunet_version: str, command: str) -> dict[str, Any]:
    """Score each ``work/predictions_<name>`` against ``work/references`` with segfuse's evaluate."""
    from segfuse.evaluation.evaluate import evaluate

    timing_files = sorted((work / "nnUNet_results").rglob("segfuse_budget.json"))
    if not timing_files:
        raise SystemExit(f"no segfuse_budget.json under {work / 'nnUNet_results'}: did training finish?")
    timing = json.loads(timing_files[-1].read_text())
    labels = {1: "Anterior", 2: "Posterior"}
    variants = {}
    for name, seconds in predict_seconds.items():
        pred = work / f"predictions_{name}"
        evaluation = evaluate(pred, work / "references", work / f"evaluation_{name}", labels=labels, progress=False)
        print(f"nnU-Net, {name}:\n{evaluation.table()}")
        variants[name] = {
            "inference_seconds_per_case": round(seconds / n_cases, 3),
            "mean_dice": evaluation.summary["mean_dice"],
            "classes": {cls: {m: entry["metrics"][m]["mean"] for m in ("dice", "hd95_mm", "nsd")}
                        for cls, entry in evaluation.summary["classes"].items()},
        }
    results = {
        "benchmark": "nnunet_hippocampus",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine(),
        "nnunetv2": nnunet_version,
        "split": {"train": 160, "eval": n_cases, "seed": 0,
                  "how": "segfuse.data.layouts.split_cases(cases, 40, seed=0)"},
        "budget_minutes": budget_minutes,
        "training": timing,
        "variants": variants,
    }
    (work / "results.json").write_text(json.dumps(results, indent=2))
    (work / "results.md").write_text(markdown(results))
    print(markdown(results))
    return results


def fmt(value: float | None, digits: int) -> str:
    """A number for the table; ``n/a`` where the metric is undefined (e.g. HD95 with an empty prediction)."""
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def markdown(r: dict[str, Any]) -> str:
    t = r["training"]
    lines = [
        "| peer | budget (min) | iterations | s/iteration | Dice anterior | Dice posterior | mean Dice "
        "| HD95 anterior (mm) | HD95 posterior (mm) | inference s/case |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in r["variants"].items():
        a, p = v["classes"]["Anterior"], v["classes"]["Posterior"]
        lines.append(
            f"| nnU-Net v2 3d_fullres ({name}) | {r['budget_minutes']:g} | {t['iterations']} "
            f"| {fmt(t['seconds_per_iteration'], 2)} | {fmt(a['dice'], 3)} | {fmt(p['dice'], 3)} "
            f"| {fmt(v['mean_dice'], 3)} | {fmt(a['hd95_mm'], 2)} | {fmt(p['hd95_mm'], 2)} "
            f"| {fmt(v['inference_seconds_per_case'], 2)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    c = verbs.add_parser("convert")
    c.add_argument("--data", type=Path, required=True)
    c.add_argument("--raw", type=Path, required=True)
    c.add_argument("--references", type=Path, required=True)
    e = verbs.add_parser("evaluate")
    e.add_argument("--work", type=Path, required=True)
    e.add_argument("--budget-minutes", type=float, required=True)
    e.add_argument("--predict-seconds", nargs="+", required=True, help="NAME=SECONDS per predictions_<NAME>")
    e.add_argument("--nnunet-version", default="unknown")
    e.add_argument("--command", default="")
    args = parser.parse_args(argv)
    if args.verb == "convert":
        convert(args.data, args.raw, args.references)
    else:
        seconds = {k: float(v) for k, v in (item.split("=", 1) for item in args.predict_seconds)}
        n = len(list((args.work / "references").glob("*.nii.gz")))
        command = args.command or " ".join(sys.argv)
        evaluate_runs(args.work, args.budget_minutes, seconds, n, args.nnunet_version, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
