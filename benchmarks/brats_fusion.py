"""Benchmark: the value of a FLAIR auxiliary on BraTS (issue 5 §2), k-fold, on this CPU.

T1 is the primary; FLAIR is available at full resolution (``flair``) and as a
thick-slice 2 × 2 × 4 mm acquisition (``flair_2x2x4mm``). Variants:

- ``t1_only``: no auxiliary;
- ``early_full``: T1 and the 1 mm FLAIR as two input channels (early fusion);
- ``early_lowres``: T1 and the 2 × 2 × 4 mm FLAIR *upsampled* (trilinear, by
  physical coordinates) to the T1 grid, as two input channels;
- ``segfuse_{linear,mlp,conv}``: the 2 × 2 × 4 mm FLAIR at native resolution
  through that mapper, fused by ``concat``; ``segfuse_conv_add``, ``segfuse_conv_gated``;
- ``segfuse_conv_dropout``: conv/concat trained with modality dropout 0.3,
  evaluated with FLAIR present and absent (``segfuse ablate``).

Protocol, stated so it can be rerun: the 10 subjects of
``../shared/data/brats18_t1_flair`` sorted by id and dealt into ``--folds`` folds
(subject ``i`` → fold ``i mod k``); each fold trains on the others for
``--minutes`` of optimisation time and predicts its own subjects with the last
checkpoint; whole-tumour Dice and HD95 come from ``segfuse evaluate``. To fit a
2-core CPU the networks run in 2D on axial slices (patch 128 × 128, batch 8,
smp ResNet18 encoder, depth 4), cases cropped to the head; every other setting is
``configs/brats_t1_flair_lowres.yaml``. Each run is a fresh subprocess, so its
peak RSS is its own.

Usage:
    python benchmarks/brats_fusion.py --quick                 # 1 fold, 2 variants, 1 min each (< 10 min)
    python benchmarks/brats_fusion.py --folds 3 --minutes 2   # full: 9 variants x 3 folds (1 h 50 min on 2 cores)
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "configs" / "brats18_manifest.yaml"
BASE_CONFIG = REPO / "configs" / "brats_t1_flair_lowres.yaml"
AUX = "flair_2x2x4mm"
VARIANTS = ("t1_only", "early_full", "early_lowres", "segfuse_linear", "segfuse_mlp", "segfuse_conv",
            "segfuse_conv_add", "segfuse_conv_gated", "segfuse_conv_dropout")


def two_channel_dataset(out: Path, flair_name: str) -> Path:
    """A YAML manifest whose primary is a 4D (T1, FLAIR-on-the-T1-grid) NIfTI per subject."""
    import nibabel as nib
    import yaml

    from segfuse.data.layouts import read_dataset
    from segfuse.data.preprocess import resample

    manifest = out / f"{flair_name}_early" / "manifest.yaml"
    if manifest.is_file():
        return manifest
    manifest.parent.mkdir(parents=True, exist_ok=True)
    dataset = read_dataset(MANIFEST, aux=[flair_name])
    cases = []
    for case in dataset.cases:
        t1 = nib.load(case.primary.path)
        flair = nib.load(case.aux[flair_name].path)
        flair_data = np.asarray(flair.dataobj, dtype=np.float32)
        if flair.shape != t1.shape:  # the thick-slice FLAIR: upsample by physical coordinates
            flair_data = resample(flair_data[None], flair.affine, t1.affine, t1.shape, mode="bilinear")[0]
        stacked = np.stack([np.asarray(t1.dataobj, dtype=np.float32), flair_data], axis=-1)
        path = manifest.parent / f"{case.case_id}_t1_{flair_name}.nii.gz"
        nib.save(nib.Nifti1Image(stacked, t1.affine, t1.header), path)
        cases.append({"case_id": case.case_id, "primary": path.name, "label": str(case.label)})
    manifest.write_text(yaml.safe_dump({"labels": dataset.labels, "primary_name": "t1_" + flair_name,
                                        "cases": cases}))
    return manifest


def variant_overrides(variant: str, out: Path) -> list[str]:
    common = ["model.mode=2d", "model.widen_factor=1.0", "model.norm=batch", "training.patch_size=[128, 128]",
              "training.batch_size=8", "inference.overlap=0.25", "inference.sw_batch_size=8"]
    if variant == "t1_only":
        return [*common, "data.aux={}"]
    if variant in ("early_full", "early_lowres"):
        flair = "flair" if variant == "early_full" else AUX
        return [*common, f"data.dataset={two_channel_dataset(out, flair)}", "data.primary=null", "data.aux={}"]
    mapper, fusion = {"segfuse_linear": ("linear", "concat"), "segfuse_mlp": ("mlp", "concat"),
                      "segfuse_conv": ("conv", "concat"), "segfuse_conv_add": ("conv", "add"),
                      "segfuse_conv_gated": ("conv", "gated"), "segfuse_conv_dropout": ("conv", "concat")}[variant]
    dropout = 0.3 if variant == "segfuse_conv_dropout" else 0.0
    return [*common, f"data.aux.{AUX}.mapper={mapper}", f"data.aux.{AUX}.fusion={fusion}",
            f"data.aux.{AUX}.dropout={dropout}"]


def folds_of(case_ids: list[str], k: int) -> list[list[str]]:
    ordered = sorted(case_ids)
    return [ordered[i::k] for i in range(k)]


def _numeric(row: dict) -> dict:
    """A per_case.csv row with its number columns as floats (NaN for empty cells)."""
    out: dict = {}
    for key, value in row.items():
        try:
            out[key] = float(value) if value != "" else float("nan")
        except ValueError:
            out[key] = value
    return out


def run_one(job: dict) -> dict:
    """Train one variant on one fold, predict the fold, evaluate (in this process)."""
    from segfuse.config import load_config
    from segfuse.data.layouts import Dataset, read_dataset
    from segfuse.evaluation.ablate import ablate
    from segfuse.evaluation.evaluate import evaluate, reference_folder
    from segfuse.inference.predict import predict
    from segfuse.training.loop import train

    out = Path(job["out"])
    run_dir = out / "runs" / f"{job['variant']}_fold{job['fold']}"
    overrides = [
        *variant_overrides(job["variant"], out),
        "training.schedule=time", f"training.max_minutes={job['minutes']}", "training.iterations=1000000",
        "training.iterations_per_epoch=1000000", f"experiment.output_dir={out / 'runs'}",
        f"experiment.name={run_dir.name}", "training.num_threads=2", "training.val_every=0",
    ]
    cfg = load_config(BASE_CONFIG, overrides)
    cfg.data.val_cases = list(job["val_cases"])
    started = time.monotonic()
    result = train(cfg, run_dir=run_dir, progress=False)
    train_wall = time.monotonic() - started
    dataset = read_dataset(cfg.data.dataset, aux=list(cfg.data.aux))
    val = [c for c in dataset.cases if c.case_id in set(job["val_cases"])]
    refs = reference_folder(val, out / "references" / f"fold{job['fold']}")
    ckpt = run_dir / "checkpoint_last.pt"
    labels = {1: "whole_tumour"}
    scores: dict[str, list[dict]] = {}
    if job["variant"] == "segfuse_conv_dropout":
        sub = Dataset(root=dataset.root, layout=dataset.layout, cases=val, labels=dataset.labels,
                      primary_name=dataset.primary_name, aux_names=dataset.aux_names)
        ablate(ckpt, sub, run_dir / "ablation", progress=False)
        # per-subject rows of the two predictions ablate made: FLAIR present, FLAIR absent
        for setting, folder in (("flair present", "all"), ("flair absent", f"without_{AUX}")):
            per_case = run_dir / "ablation" / folder / "evaluation" / "per_case.csv"
            with per_case.open() as handle:
                scores[setting] = [_numeric(r) for r in csv.DictReader(handle) if r["label"] == "1"]
    else:
        preds = run_dir / "predictions"
        predict(ckpt, val, preds, progress=False)
        evaluation = evaluate(preds, refs, run_dir / "evaluation", labels=labels, progress=False)
        scores["all"] = [r for r in evaluation.rows if r["label"] == 1]
    return {
        **job,
        "iterations": result.iteration,
        "train_seconds": result.history[-1].get("train_s") if result.history else None,
        "train_wall_seconds": round(train_wall, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "scores": scores,
    }


def per_subject(results: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """``{"variant" or "variant [setting]": {case_id: (dice, hd95_mm)}}`` over every fold."""
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for r in results:
        for setting, rows in r["scores"].items():
            name = r["variant"] if setting == "all" else f"{r['variant']} [{setting}]"
            for row in rows:
                if "case_id" not in row:  # an older ablation summary row: no per-subject figures
                    continue
                table.setdefault(name, {})[row["case_id"]] = (float(row["dice"]), float(row["hd95_mm"]))
    return table


def _goal(label: str, value: float, target: float, paired: np.ndarray | None = None) -> str:
    verdict = "**met**" if value >= target else "**missed**"
    extra = ""
    if paired is not None and len(paired):
        extra = (f"; per subject the difference is {paired.mean():+.3f} ± {paired.std():.3f}, "
                 f"≥ 0 for {(paired >= 0).sum()} of {len(paired)}")
    return f"- {label}: {value:.3f} against {target:.3f} → {verdict}{extra}"


def goals(subjects: dict[str, dict[str, tuple[float, float]]], segfuse: str = "segfuse_conv") -> str:
    """The issue's three goals, on the mean whole-tumour Dice over all subjects."""

    def dice(name: str) -> dict[str, float]:
        return {case: d for case, (d, _) in subjects.get(name, {}).items()}

    def paired(a: str, b: str, shift: float = 0.0) -> np.ndarray:
        da, db = dice(a), dice(b)
        return np.array([da[c] - db[c] + shift for c in sorted(set(da) & set(db))])

    lines = [f"Goals (mean whole-tumour Dice over every evaluated subject; segfuse = `{segfuse}`, the "
             "default conv mapper with concat, chosen before the run):"]
    mean = {name: float(np.mean(list(dice(name).values()))) for name in subjects if dice(name)}
    if segfuse in mean and "early_lowres" in mean:
        lines.append(_goal("segfuse with the 2×2×4 mm FLAIR ≥ early fusion with the same FLAIR upsampled",
                           mean[segfuse], mean["early_lowres"], paired(segfuse, "early_lowres")))
    if segfuse in mean and "early_full" in mean:
        lines.append(_goal("segfuse ≥ 98 % of early fusion with the 1 mm FLAIR", mean[segfuse],
                           0.98 * mean["early_full"]))
    absent = "segfuse_conv_dropout [flair absent]"
    if absent in mean and "t1_only" in mean:
        lines.append(_goal("dropout model with FLAIR absent ≥ T1 only − 0.02", mean[absent], mean["t1_only"] - 0.02,
                           paired(absent, "t1_only", shift=0.02)))
    return "\n".join(lines)


def summarise(results: list[dict]) -> str:
    subjects = per_subject(results)
    rows = []
    for variant in VARIANTS:
        runs = [r for r in results if r["variant"] == variant]
        for name in sorted(n for n in subjects if n == variant or n.startswith(variant + " [")):
            dice = np.array([d for d, _ in subjects[name].values()])
            hd = np.array([h for _, h in subjects[name].values()])
            hd = hd[~np.isnan(hd)]
            rows.append(
                f"| {name} | {dice.mean():.3f} ± {dice.std():.3f} | {np.median(dice):.3f} | "
                f"{(f'{hd.mean():.1f}' if hd.size else 'n/a')} | {len(dice)} | "
                f"{np.mean([r['iterations'] for r in runs]):.0f} | "
                f"{np.mean([r['train_wall_seconds'] for r in runs]) / 60:.1f} | "
                f"{max(r['peak_rss_mib'] for r in runs):.0f} |"
            )
    head = ("Whole-tumour Dice over subjects (each subject predicted by the fold that held it out).\n\n"
            "| variant | Dice mean ± std | Dice median | HD95 mm (mean) | subjects | iterations (mean) | "
            "train min, wall (mean) | peak RSS MiB (max) |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|")
    return head + "\n" + "\n".join(rows) + "\n\n" + goals(subjects)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=2.0, help="optimisation time per run")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--quick", action="store_true", help="fold 0 only, t1_only and segfuse_conv, 1 min each")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_brats_fusion")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        Path(job["result"]).write_text(json.dumps(run_one(job), default=float))
        return 0
    if not MANIFEST.is_file() or not (REPO.parent / "shared" / "data" / "brats18_t1_flair").is_dir():
        print("benchmark needs ../shared/data/brats18_t1_flair", file=sys.stderr)
        return 2
    from segfuse.data.layouts import read_dataset

    case_ids = [c.case_id for c in read_dataset(MANIFEST).cases]
    folds = folds_of(case_ids, args.folds)
    variants, minutes, fold_ids = args.variants, args.minutes, range(args.folds)
    if args.quick:
        variants, minutes, fold_ids = ["t1_only", "segfuse_conv"], 1.0, [0]
    out = args.out / ("quick" if args.quick else f"k{args.folds}_{minutes:g}min")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for fold in fold_ids:
        for variant in variants:
            result_path = out / "results" / f"{variant}_fold{fold}.json"
            result_path.parent.mkdir(parents=True, exist_ok=True)
            if not result_path.is_file():
                job = {"variant": variant, "fold": fold, "val_cases": folds[fold], "minutes": minutes,
                       "out": str(out), "result": str(result_path)}
                print(f"[brats_fusion] {variant} fold {fold}: training {minutes:g} min on "
                      f"{len(case_ids) - len(folds[fold])} subjects, evaluating {folds[fold]}", flush=True)
                subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], check=True)
            results.append(json.loads(result_path.read_text()))
    table = summarise(results)
    header = (f"BraTS fusion value, {len(list(fold_ids))} fold(s) of {args.folds}, {minutes:g} min per run, "
              f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\nCommand: `{' '.join(sys.argv)}`")
    (out / "results.md").write_text(header + "\n\n" + table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print(header)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
