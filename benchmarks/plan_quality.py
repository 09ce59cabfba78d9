"""Benchmark: does the config `segfuse plan` makes on this CPU train as well as the best hand-made one? (issue 17)

For each dataset and each budget (default 15 and 30 minutes of optimisation time),
on fixed folds, it trains

- **plan**: the config :func:`segfuse.training.budget.plan_for_budget` makes *on this
  machine* (``--device cpu``, ``--minutes`` = the budget) from the fold's training
  cases only, in the same subprocess, just before training; and
- **every hand-made config** listed for the dataset (below), with the same budget,

then predicts the fold's held-out cases with the last checkpoint (no model selection
on them) and scores them with ``segfuse evaluate``. Each run is a fresh subprocess
(``--worker``); finished runs are kept (``<out>/results/*.json``) so an interrupted
benchmark resumes.

Datasets and folds (fixed, stated here so the benchmark can be rerun):

- ``hippocampus``: ``../shared/data/hippocampus``, one fold: the 40 cases of
  ``split_cases(cases, 40, seed=0)`` held out, 160 trained (the split of
  ``train_hippocampus.py`` and ``docs/benchmarks.md`` §1). Hand-made:
  ``configs/hippocampus_3d.yaml`` and ``configs/hippocampus_2d.yaml`` (2.5D).
  Score: mean Dice of anterior and posterior.
- ``brats_wt``: ``configs/brats18_manifest.yaml`` (10 subjects), T1 primary and the
  2 × 2 × 4 mm FLAIR (``flair_2x2x4mm``) as auxiliary, whole tumour; the subjects
  sorted by id and dealt ``i mod 3`` into 3 folds (``brats_fusion.py``'s folds).
  Hand-made: ``brats_2d`` (``configs/brats_t1_flair_lowres_2d.yaml`` as shipped:
  ``brats_fusion.py``'s chosen default, ``segfuse_pyramid_linear``: axial slices
  128 × 128 without neighbouring T1 slices (``context_slices: 0``; the plan's 2.5D adds one on
  each side), batch 8, smp ResNet18 depth 4, ``level_blocks: 1``, ``model.aux_slice: linear``, no
  dropout) and ``brats_3d``
  (``configs/brats_t1_flair_lowres.yaml`` as shipped, dropout set to 0 like the 2D one).
- ``brats_regions``: the 13 ``brats19_multimodal`` subjects as ``brats_fusion.py``'s
  task B prepares them (``runs/brats_lowres/task_b.yaml``: T1ce primary, FLAIR and T2
  simulated at 2 × 2 × 4 mm by ``segfuse.data.lowres``; made here when missing), the
  three BraTS regions; subjects sorted by id and dealt ``i mod 3``. Hand-made:
  ``brats_regions_3d`` (``configs/brats_t1ce_flair_t2_lowres.yaml``, dropout 0) and
  ``brats_regions_2d`` (the same with ``brats_2d``'s 2D settings). The plan knows
  nothing of regions (``segfuse plan`` writes per-label classes), so its config gets
  the base config's ``data.regions``, as a user following the README would add them.
  Score: mean Dice over the three regions.

Reported per dataset and budget: Dice (mean ± std over held-out cases), iterations,
the measured seconds per iteration (optimisation time / iterations) and, for the
plan, its printed estimate and the error of the estimate. Targets (issue 17): plan
within 0.02 Dice of the best hand-made config for the same budget; the estimate
within 30 % of the measured figure; BraTS whole tumour ≥ 0.80 at 30 minutes.
``--gpu`` (on a machine with CUDA) instead compares the plan for the GPU with
``configs/hippocampus_3d.yaml`` in samples per second, without training.

Usage:
    python benchmarks/plan_quality.py --quick        # hippocampus, 1 min, plan + hand 3D, 10 held-out cases
    python benchmarks/plan_quality.py                 # full: 3 datasets x 15 and 30 min (many hours on 2 cores)
    python benchmarks/plan_quality.py --datasets brats_wt --minutes 30 --folds 0 1 2
    python benchmarks/plan_quality.py --gpu           # the H200 plan against the hippocampus config
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from segfuse.machine import machine_info, machine_line

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
BRATS_MANIFEST = REPO / "configs" / "brats18_manifest.yaml"
BRATS_AUX = "flair_2x2x4mm"
REGIONS_MANIFEST = REPO / "runs" / "brats_lowres" / "task_b.yaml"  # brats_fusion.py --prepare-only makes it
REGIONS_AUX = ("flair_2x2x4mm", "t2_2x2x4mm")
ESTIMATE_TOLERANCE = 0.30
DICE_MARGIN = 0.02

#: dataset → {hand-made variant: (config file, overrides)}
HAND: dict[str, dict[str, tuple[Path, list[str]]]] = {
    "hippocampus": {
        "hippocampus_3d": (REPO / "configs" / "hippocampus_3d.yaml", []),
        "hippocampus_2d": (REPO / "configs" / "hippocampus_2d.yaml", []),
    },
    "brats_wt": {
        "brats_2d": (REPO / "configs" / "brats_t1_flair_lowres_2d.yaml", []),  # as shipped
        "brats_3d": (REPO / "configs" / "brats_t1_flair_lowres.yaml", [f"data.aux.{BRATS_AUX}.dropout=0.0"]),
    },
    "brats_regions": {
        "brats_regions_2d": (REPO / "configs" / "brats_t1ce_flair_t2_lowres.yaml",
                             ["model.mode=2d", "model.widen_factor=1.0", "model.norm=batch", "model.aux_slice=linear",
                              "model.deep_supervision=false", "training.patch_size=[128, 128]",
                              "training.batch_size=8", "inference.overlap=0.25", "inference.sw_batch_size=8",
                              *(f"data.aux.{a}.dropout=0.0" for a in REGIONS_AUX)]),
        "brats_regions_3d": (REPO / "configs" / "brats_t1ce_flair_t2_lowres.yaml",
                             [f"data.aux.{a}.dropout=0.0" for a in REGIONS_AUX]),
    },
}
DATASETS = tuple(HAND)


# ------------------------------------------------------------------ datasets and folds


def base_regions() -> dict[str, list[int]]:
    """The BraTS regions of the shipped multi-auxiliary config (what the plan variant is given)."""
    import yaml

    return yaml.safe_load(HAND["brats_regions"]["brats_regions_3d"][0].read_text())["data"]["regions"]


def ensure_regions_data() -> None:
    """(Re)write ``REGIONS_MANIFEST`` with all 13 subjects, making missing low-resolution copies (brats_fusion.py)."""
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "brats_fusion.py"), "--prepare-only",
                    "--tasks", "B"], check=True)


def dataset_source(name: str) -> tuple[Path, list[str] | None]:
    """``(dataset path, auxiliaries to use)`` of a benchmark dataset."""
    if name == "hippocampus":
        return DATA / "hippocampus", None
    if name == "brats_wt":
        return BRATS_MANIFEST, [BRATS_AUX]
    return REGIONS_MANIFEST, list(REGIONS_AUX)


def folds(name: str) -> list[list[str]]:
    """Held-out case ids per fold (fixed; see the module docstring)."""
    from segfuse.data.layouts import read_dataset, split_cases

    source, aux = dataset_source(name)
    cases = read_dataset(source, aux=aux).cases
    if name == "hippocampus":
        return [[c.case_id for c in split_cases(cases, 40, seed=0)[1]]]
    ordered = sorted(c.case_id for c in cases)
    return [ordered[i::3] for i in range(3)]


def training_manifest(name: str, held_out: list[str], out: Path) -> Path:
    """A YAML manifest of the dataset's cases minus ``held_out`` (what the plan may look at)."""
    import yaml

    from segfuse.data.layouts import read_dataset

    source, aux = dataset_source(name)
    dataset = read_dataset(source, aux=aux)
    cases = []
    for case in dataset.cases:
        if case.case_id in held_out:
            continue
        if case.primary.channel is not None or any(r.channel is not None for r in case.aux.values()):
            raise SystemExit(f"{name}: 4D multi-channel files are not supported by this benchmark's manifests")
        entry = {"case_id": case.case_id, "primary": str(case.primary.path), "label": str(case.label)}
        if case.aux:
            entry["aux"] = {k: str(r.path) for k, r in case.aux.items()}
        cases.append(entry)
    path = out / "manifest.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"name": name, "labels": dict(dataset.labels),
                                    "primary_name": dataset.primary_name, "cases": cases}, sort_keys=False))
    return path


# ---------------------------------------------------------------------------- one run


def run_one(job: dict) -> dict:
    """Plan (for the ``plan`` variant), train, predict the held-out cases, evaluate (in this process)."""
    from segfuse.config import load_config
    from segfuse.data.layouts import read_dataset
    from segfuse.evaluation.evaluate import evaluate, reference_folder
    from segfuse.inference.predict import predict
    from segfuse.training.loop import train

    out = Path(job["out"])
    name, variant, minutes = job["dataset"], job["variant"], float(job["minutes"])
    run_dir = run_folder(out, name, variant, minutes, job["fold"])
    source, aux = dataset_source(name)
    common = [f"training.max_minutes={minutes}", "training.schedule=time", "training.iterations=1000000",
              "training.iterations_per_epoch=1000000", "training.val_every=0", "training.device=cpu",
              f"experiment.output_dir={run_dir.parent}", f"experiment.name={run_dir.name}"]
    plan_info: dict = {}
    if variant == "plan":
        from segfuse.training.budget import plan_for_budget

        manifest = training_manifest(name, job["held_out"], run_dir.parent / f"{run_dir.name}_plan")
        started = time.perf_counter()
        _, _, budget = plan_for_budget(manifest, aux=aux, device="cpu", minutes=minutes,
                                              out=run_dir.parent / f"{run_dir.name}_plan" / "plan.yaml",
                                              progress=False)
        c = budget.chosen
        plan_info = {"plan_seconds": round(time.perf_counter() - started, 1), "reason": budget.reason,
                     "estimate_s_per_it": c.seconds_per_iteration, "estimate_iterations": c.iterations,
                     "chosen": c.candidate.describe(), "measured": [m.describe() for m in budget.measured]}
        regions = [f"data.regions={json.dumps(base_regions())}"] if name == "brats_regions" else []
        cfg = load_config(run_dir.parent / f"{run_dir.name}_plan" / "plan.yaml",
                          [f"data.dataset={source}", *regions, *common])
    else:
        config, overrides = HAND[name][variant]
        cfg = load_config(config, [f"data.dataset={source}", *overrides, *common])
    cfg.data.val_cases = list(job["held_out"])
    started = time.monotonic()
    result = train(cfg, run_dir=run_dir, progress=False)
    train_wall = time.monotonic() - started
    dataset = read_dataset(source, aux=list(cfg.data.aux))
    evaluated = [c for c in dataset.cases if c.case_id in set(job["held_out"][: job.get("max_eval") or None])]
    refs = reference_folder(evaluated, out / "references" / f"{name}_fold{job['fold']}")
    preds = run_dir / "predictions"
    predict(run_dir / "checkpoint_last.pt", evaluated, preds, device="cpu", progress=False)
    labels = None if cfg.data.regions else {k: v for k, v in dataset.labels.items() if k}
    evaluation = evaluate(preds, refs, run_dir / "evaluation", labels=labels, regions=cfg.data.regions,
                          progress=False)
    per_case: dict[str, list[float]] = {}
    per_region: dict[str, dict[str, float]] = {}
    for row in evaluation.rows:
        per_case.setdefault(row["case_id"], []).append(float(row["dice"]))
        per_region.setdefault(row["name"], {})[row["case_id"]] = float(row["dice"])
    train_s = (result.history[-1].get("train_s") if result.history else None) or 0.0
    m = cfg.model
    return {
        **job,
        **plan_info,
        "config": (f"{m.mode} {'x'.join(map(str, cfg.training.patch_size))} b{cfg.training.batch_size} "
                   f"w{m.widen_factor:g} d{m.encoder_depth}" + (f" ctx{m.context_slices}" if m.context_slices else "")),
        "iterations": result.iteration,
        "train_seconds": train_s,
        "measured_s_per_it": train_s / max(1, result.iteration),
        "train_wall_seconds": round(train_wall, 1),
        "mean_dice": evaluation.summary["mean_dice"],
        "machine": machine_info(),  # results accumulate across sessions, and the host has changed between them
        "case_dice": {case: float(np.nanmean(v)) for case, v in per_case.items()},
        "region_case_dice": per_region,  # label or region name -> case -> Dice
    }


# ----------------------------------------------------------------------------- report


def summarise(results: list[dict]) -> str:
    lines = []
    for name in DATASETS:
        for minutes in sorted({r["minutes"] for r in results if r["dataset"] == name}):
            runs = [r for r in results if r["dataset"] == name and r["minutes"] == minutes]
            by_variant: dict[str, list[dict]] = {}
            for r in runs:
                by_variant.setdefault(r["variant"], []).append(r)
            lines += [f"### {name}, {minutes:g} min", "",
                      "| variant | config | Dice mean ± std | cases | iterations (mean) | measured s/it | "
                      "plan's estimate s/it | estimate error |", "|---|---|---:|---:|---:|---:|---:|---:|"]
            dice_of: dict[str, float] = {}
            for variant, rs in by_variant.items():
                dice = np.array([d for r in rs for d in r["case_dice"].values()])
                dice_of[variant] = float(np.nanmean(dice))
                measured = float(np.mean([r["measured_s_per_it"] for r in rs]))
                if variant == "plan":
                    errors = [r["estimate_s_per_it"] / r["measured_s_per_it"] - 1 for r in rs]
                    est = f"{np.mean([r['estimate_s_per_it'] for r in rs]):.3f}"
                    err = ", ".join(f"{e:+.0%}" for e in errors)
                else:
                    est = err = "—"
                configs = sorted({r["config"] for r in rs})
                lines.append(f"| {variant} | {'; '.join(configs)} | {dice_of[variant]:.3f} ± {np.nanstd(dice):.3f} | "
                             f"{len(dice)} | {np.mean([r['iterations'] for r in rs]):.0f} | {measured:.3f} | {est} | "
                             f"{err} |")
            hand = {v: d for v, d in dice_of.items() if v != "plan"}
            if "plan" in dice_of and hand:
                best = max(hand, key=hand.get)
                gap = dice_of["plan"] - hand[best]
                verdict = "met" if gap >= -DICE_MARGIN else "missed"
                lines += ["", f"- plan vs best hand-made (`{best}`): {dice_of['plan']:.3f} vs {hand[best]:.3f} "
                              f"({gap:+.3f}; target ≥ −{DICE_MARGIN}) → **{verdict}**"]
                lines += paired_lines(by_variant["plan"], by_variant[best], best)
            if "plan" in by_variant:
                errors = [abs(r["estimate_s_per_it"] / r["measured_s_per_it"] - 1) for r in by_variant["plan"]]
                verdict = "met" if max(errors) <= ESTIMATE_TOLERANCE else "missed"
                lines.append(f"- plan's s/it estimate within {ESTIMATE_TOLERANCE:.0%} of the measured: worst "
                             f"{max(errors):.0%} → **{verdict}**")
                lines += [f"- plan chose: {r['chosen']} (fold {r['fold']}: {r['reason']})" for r in by_variant["plan"]]
            lines += region_lines(by_variant)
            if name == "brats_wt" and minutes == 30 and "plan" in dice_of:
                verdict = "met" if dice_of["plan"] >= 0.80 else "missed"
                lines.append(f"- BraTS whole tumour ≥ 0.80 at 30 min (plan): {dice_of['plan']:.3f} → **{verdict}**")
            lines.append("")
    return "\n".join(lines)


def run_folder(out: Path, dataset: str, variant: str, minutes: float, fold: int) -> Path:
    """The training run folder of one (dataset, variant, budget, fold) job under ``out``."""
    return out / "runs" / f"{dataset}_{variant}_{minutes:g}min_fold{fold}"


def region_case_dice(result: dict) -> dict[str, dict[str, float]]:
    """``name → case → Dice`` of one run; runs recorded before the field existed are read from their per_case.csv."""
    if "region_case_dice" in result:
        return result["region_case_dice"]
    import csv

    table = run_folder(Path(result["out"]), result["dataset"], result["variant"], result["minutes"],
                       result["fold"]) / "evaluation" / "per_case.csv"
    out: dict[str, dict[str, float]] = {}
    if table.is_file():
        with table.open(newline="") as handle:
            for row in csv.DictReader(handle):
                out.setdefault(row["name"], {})[row["case_id"]] = float(row["dice"])
    return out


def region_lines(by_variant: dict[str, list[dict]]) -> list[str]:
    """Mean Dice of each region (or label) per variant, over every held-out case of every fold."""
    lines = []
    for variant, rs in by_variant.items():
        merged: dict[str, list[float]] = {}
        for r in rs:
            for region, cases in region_case_dice(r).items():
                merged.setdefault(region, []).extend(cases.values())
        if len(merged) > 1:
            lines.append(f"- per region, `{variant}`: " + "; ".join(
                f"{region} {np.nanmean(d):.3f}" for region, d in merged.items()))
    return lines


def paired_lines(plan: list[dict], hand: list[dict], hand_name: str) -> list[str]:
    """Per-fold means and the per-case paired difference plan − ``hand_name`` over the cases both scored."""
    from segfuse.evaluation.crossval import bootstrap_ci

    lines = []
    folds = sorted({r["fold"] for r in plan} & {r["fold"] for r in hand})
    if len(folds) > 1:
        per_fold = []
        for fold in folds:
            p = np.nanmean([d for r in plan if r["fold"] == fold for d in r["case_dice"].values()])
            h = np.nanmean([d for r in hand if r["fold"] == fold for d in r["case_dice"].values()])
            per_fold.append(f"fold {fold} {p:.3f} vs {h:.3f}")
        lines.append("- per fold (plan vs " + f"`{hand_name}`): " + "; ".join(per_fold))
    plan_cases = {c: d for r in plan for c, d in r["case_dice"].items()}
    hand_cases = {c: d for r in hand for c, d in r["case_dice"].items()}
    diff = np.array([plan_cases[c] - hand_cases[c] for c in sorted(plan_cases.keys() & hand_cases.keys())])
    if len(diff) > 1:
        low, high = bootstrap_ci(diff)
        lines.append(f"- paired per case (plan − `{hand_name}`, {len(diff)} cases): mean {diff.mean():+.3f}, "
                     f"95 % bootstrap CI [{low:+.3f}, {high:+.3f}], {int((diff > 0).sum())} wins / "
                     f"{int((diff < 0).sum())} losses")
    return lines


def gpu_compare() -> str:
    """The plan for this GPU against configs/hippocampus_3d.yaml, in samples per second (no training)."""
    import torch

    from segfuse.config import load_config
    from segfuse.training.budget import plan_for_budget
    from segfuse.training.step_timing import time_iteration

    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device")
    source = DATA / "hippocampus"
    cfg, report, budget = plan_for_budget(source, device="cuda", minutes=30, progress=False)
    hand = load_config(REPO / "configs" / "hippocampus_3d.yaml", [f"data.dataset={source}", "training.device=cuda"])
    hand.data.labels = cfg.data.labels
    t = time_iteration(hand, device="cuda", max_seconds=5.0, max_steps=20, case_shape=report.median_shape,
                       object_extent=report.object_extent)
    chosen = budget.chosen
    rows = [f"GPU: {budget.device_name}", *(f"  {k}: {v}" for k, v in budget.lines()),
            f"plan: {chosen.candidate.describe()}: {chosen.samples_per_second:.1f} samples/s, "
            f"{chosen.timing.memory_bytes / 2**30:.2f} GiB",
            f"configs/hippocampus_3d.yaml: batch {hand.training.batch_size}: "
            f"{hand.training.batch_size / t.seconds_per_iteration:.1f} samples/s, {t.memory_bytes / 2**30:.2f} GiB"]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--minutes", nargs="*", type=float, default=[15.0, 30.0], help="budgets (optimisation time)")
    parser.add_argument("--folds", nargs="*", type=int, default=None, help="fold indices (default: all)")
    parser.add_argument("--variants", nargs="*", default=None, help="plan and/or hand-made names (default: all)")
    parser.add_argument("--max-eval", type=int, default=None, help="evaluate only the first N held-out cases")
    parser.add_argument("--quick", action="store_true",
                        help="hippocampus, 1 minute, plan + hippocampus_3d, 10 held-out cases (a smoke run)")
    parser.add_argument("--gpu", action="store_true", help="plan for the GPU vs the hippocampus config (no training)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_plan_quality")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        Path(job["result"]).write_text(json.dumps(run_one(job), default=float))
        return 0
    if args.gpu:
        print(gpu_compare())
        return 0
    if not DATA.is_dir():
        print(f"benchmark needs the shared data at {DATA}", file=sys.stderr)
        return 2
    datasets, budgets, variants, max_eval = args.datasets, args.minutes, args.variants, args.max_eval
    if args.quick:
        datasets, budgets, variants, max_eval = ["hippocampus"], [1.0], ["plan", "hippocampus_3d"], 10
    out = args.out / ("quick" if args.quick else "full")
    results = []
    for name in datasets:
        if name == "brats_regions":
            ensure_regions_data()
        for fold, held_out in enumerate(folds(name)):
            if args.folds is not None and fold not in args.folds:
                continue
            for minutes in budgets:
                for variant in ["plan", *HAND[name]]:
                    if variants is not None and variant not in variants:
                        continue
                    result_path = out / "results" / f"{name}_{variant}_{minutes:g}min_fold{fold}.json"
                    result_path.parent.mkdir(parents=True, exist_ok=True)
                    if not result_path.is_file():
                        job = {"dataset": name, "variant": variant, "fold": fold, "minutes": minutes,
                               "held_out": held_out, "max_eval": max_eval, "out": str(out),
                               "result": str(result_path)}
                        print(f"[plan_quality] {name} {variant} fold {fold}: {minutes:g} min, "
                              f"{len(held_out)} held out", flush=True)
                        subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], check=True)
                    results.append(json.loads(result_path.read_text()))
    header = (f"plan quality, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {machine_line()}\n"
              f"Command: `{' '.join(sys.argv)}`\n")
    table = summarise(results)
    (out / "results.md").write_text(header + "\n" + table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print(header)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
