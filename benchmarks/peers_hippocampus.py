"""Benchmark: plain-MONAI peers on MSD hippocampus at segfuse's budget and split (issue 5 §1).

Same protocol as ``benchmarks/train_hippocampus.py`` (segfuse's side):

- split: the 200 cases of ``../shared/data/hippocampus`` split 160/40 by
  ``segfuse.data.layouts.split_cases(cases, 40, seed=0)``; train on the 160;
- budget: optimisation time (batch loading + forward + backward + step, as
  segfuse counts it); validation is extra wall time and not counted;
- evaluation: the *last* weights (no model selection on the 40) predict the 40,
  the label maps are written on each input's grid (nibabel, the input's affine and
  header) and scored by ``segfuse.evaluation.evaluate.evaluate``, so Dice and HD95
  are defined exactly as for segfuse.

Peers, each a plain MONAI loop (dictionary transforms, ``CacheDataset``,
``DiceCELoss``, ``sliding_window_inference`` with roi = patch, overlap 0.5,
Gaussian blending, argmax):

- ``flexibleunet``: ``FlexibleUNet(in_channels=1, out_channels=3, backbone="resnet18",
  spatial_dims=3, pretrained=False)``, 64³ patches, batch 4, AdamW 1e-3;
- ``dynunet``: ``DynUNet`` as nnU-Net plans Task04 3d_fullres: patch 40×56×40,
  4 stages of 3×3×3 kernels, strides 1,2,2,2, filters 32-64-128-256, instance norm,
  deep supervision (2 extra heads, weights 1, 1/2, 1/4 normalised), batch 9,
  SGD 0.01 Nesterov momentum 0.99, poly decay (power 0.9) over the time budget.

Transforms: LoadImaged, EnsureChannelFirstd, Orientationd("RAS") (every case is
RAS already, asserted, so this is an identity and predictions need no inverse),
NormalizeIntensityd(nonzero, per case), SpatialPadd to the patch (training only),
RandCropByPosNegLabeld(pos=1, neg=1), RandFlipd on each axis (p=0.5).

Dice-vs-time curve: with ``--val-every-minutes M`` (default 5 in full mode, off
in ``--quick``), the 40 are predicted in memory every M minutes of optimisation
time and scored with MONAI's ``compute_dice`` (the curve only; the reported table
always comes from segfuse's evaluate on the written files at the end).

Usage:
    python benchmarks/peers_hippocampus.py --peer flexibleunet --minutes 30
    python benchmarks/peers_hippocampus.py --peer dynunet --minutes 30
    python benchmarks/peers_hippocampus.py --quick                # both peers, 2 minutes each

Writes ``<out>/<peer>/results.json``, ``<out>/<peer>/evaluation/``,
``<out>/<peer>/curve.png`` and ``<out>/results.md`` (a table of every peer found in ``<out>``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from segfuse.machine import machine_info

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hippocampus"
PEERS = ("flexibleunet", "dynunet")

# nnU-Net v2's plan for MSD Task04 3d_fullres, as the issue states it
DYNUNET = {
    "patch": (40, 56, 40),
    "kernel_size": [[3, 3, 3]] * 4,
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
    "filters": [32, 64, 128, 256],
    "batch": 9,
}
FLEXIBLEUNET = {"patch": (64, 64, 64), "batch": 4}
# DynUNet's deep-supervision heads (full, 1/2, 1/4 resolution), weights 1, 1/2, 1/4 normalised as nnU-Net does
DEEP_SUPERVISION_WEIGHTS = tuple(w / 1.75 for w in (1.0, 0.5, 0.25))


def build_peer(
    peer: str, batch: int | None, in_channels: int = 1
) -> tuple[Any, Any, tuple[int, int, int], int, str]:
    """Return ``(model, optimizer, patch, batch, description)`` for one peer (``in_channels`` 2: early fusion)."""
    import torch
    from monai.networks.nets import DynUNet, FlexibleUNet

    if peer == "flexibleunet":
        model = FlexibleUNet(in_channels=in_channels, out_channels=3, backbone="resnet18", spatial_dims=3,
                             pretrained=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        patch, default_batch = FLEXIBLEUNET["patch"], FLEXIBLEUNET["batch"]
        text = "FlexibleUNet resnet18, 64³, AdamW 1e-3"
    elif peer == "dynunet":
        model = DynUNet(
            spatial_dims=3, in_channels=in_channels, out_channels=3,
            kernel_size=DYNUNET["kernel_size"], strides=DYNUNET["strides"],
            upsample_kernel_size=DYNUNET["strides"][1:], filters=DYNUNET["filters"],
            norm_name=("INSTANCE", {"affine": True}), act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
            deep_supervision=True, deep_supr_num=2, res_block=False,
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
        patch, default_batch = DYNUNET["patch"], DYNUNET["batch"]
        text = "DynUNet (nnU-Net 3d_fullres plan), 40×56×40, SGD 0.01 Nesterov 0.99, poly"
    else:
        raise ValueError(f"peer must be one of {PEERS}, got {peer!r}")
    return model, optimizer, patch, batch or default_batch, text


def check_ras(cases: list[Any]) -> None:
    """Every case must be RAS, so that Orientationd('RAS') is an identity."""
    import nibabel as nib

    for case in cases:
        for path in (case.primary.path, case.label):
            codes = nib.aff2axcodes(nib.load(str(path)).affine)
            if codes != ("R", "A", "S"):
                raise SystemExit(f"{path}: orientation {codes}, expected RAS; this benchmark relies on it")


def transforms(patch: tuple[int, int, int], train: bool) -> Any:
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        RandCropByPosNegLabeld,
        RandFlipd,
        SpatialPadd,
    )

    keys = ["image", "label"]
    common = [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        Orientationd(keys=keys, axcodes="RAS"),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
    ]
    if not train:
        return Compose(common)
    return Compose([
        *common,
        SpatialPadd(keys=keys, spatial_size=patch),
        RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=patch, pos=1, neg=1, num_samples=1),
        *[RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(3)],
    ])


def predict_volume(model: Any, image: Any, patch: tuple[int, int, int]) -> Any:
    """Argmax label map ``(X, Y, Z)`` of one normalised image ``(1, X, Y, Z)``."""
    import torch
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        logits = sliding_window_inference(image[None].float(), roi_size=patch, sw_batch_size=4, predictor=model,
                                          overlap=0.5, mode="gaussian")
    return logits.argmax(1)[0]


def validate(model: Any, eval_data: list[dict[str, Any]], patch: tuple[int, int, int]) -> dict[str, float]:
    """Per-class Dice of the in-memory predictions (the curve only)."""
    import torch
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    model.eval()
    scores = []
    for item in eval_data:
        pred = predict_volume(model, item["image"], patch)
        dice = compute_dice(one_hot(pred[None, None], 3), one_hot(item["label"][None].long(), 3),
                            include_background=False, ignore_empty=False)
        scores.append(dice[0])
    model.train()
    mean = torch.stack(scores).nanmean(0)
    return {"val_dice_anterior": float(mean[0]), "val_dice_posterior": float(mean[1]),
            "val_mean_dice": float(mean.mean())}


def run_peer(peer: str, args: argparse.Namespace, minutes: float, out: Path) -> dict[str, Any]:
    """Train one peer for the budget, predict and evaluate the 40; return the results dict."""
    import nibabel as nib
    import numpy as np
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.losses import DiceCELoss
    from monai.utils import set_determinism

    from segfuse.data.layouts import read_dataset, split_cases
    from segfuse.evaluation.evaluate import evaluate

    torch.set_num_threads(args.threads)
    set_determinism(seed=0)
    dataset = read_dataset(args.data)
    train_cases, eval_cases = split_cases(dataset.cases, 40, seed=0)
    check_ras(dataset.cases)
    model, optimizer, patch, batch, text = build_peer(peer, args.batch)
    run = out / peer
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)

    def items(cases: list[Any]) -> list[dict[str, str]]:
        return [{"image": str(c.primary.path), "label": str(c.label), "case_id": c.case_id} for c in cases]

    t0 = time.monotonic()
    train_ds = CacheDataset(items(train_cases), transforms(patch, train=True), cache_rate=1.0, num_workers=0,
                            progress=False)
    loader = DataLoader(train_ds, batch_size=batch, shuffle=True, num_workers=0, drop_last=True)
    eval_data = [transforms(patch, train=False)(item) for item in items(eval_cases)]
    cache_s = time.monotonic() - t0

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    budget = minutes * 60
    val_every = (args.val_every_minutes or 0) * 60
    next_val = val_every if val_every > 0 else math.inf
    curve: list[dict[str, float]] = []
    iteration, train_s, running = 0, 0.0, 0.0
    wall0 = time.monotonic()
    model.train()
    print(f"[{peer}] {text}; batch {batch}; {len(train_cases)} train / {len(eval_cases)} eval; "
          f"budget {minutes:g} min; cache {cache_s:.1f} s", flush=True)
    batches = iter(loader)
    while train_s < budget:
        step0 = time.monotonic()  # the step's time includes producing its batch, as segfuse counts it
        try:
            data = next(batches)
        except StopIteration:
            batches = iter(loader)
            data = next(batches)
        if peer == "dynunet":  # nnU-Net's poly schedule, over the time budget since the count is unknown
            for group in optimizer.param_groups:
                group["lr"] = 0.01 * max(0.0, 1.0 - train_s / budget) ** 0.9
        x, y = data["image"], data["label"]
        out_t = model(x)
        if out_t.dim() == 6:  # DynUNet deep supervision: (B, heads, C, *spatial), heads upsampled
            loss = sum(w * loss_fn(out_t[:, i], y) for i, w in enumerate(DEEP_SUPERVISION_WEIGHTS))
        else:
            loss = loss_fn(out_t, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if peer == "dynunet":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)  # as nnU-Net does
        optimizer.step()
        iteration += 1
        train_s += time.monotonic() - step0
        loss_value = float(loss.detach())
        running = 0.9 * running + 0.1 * loss_value if iteration > 1 else loss_value
        if iteration % 5 == 0 or iteration == 1:
            print(f"[{peer}] it {iteration}  train {train_s:7.1f}/{budget:.0f} s  "
                  f"{train_s / iteration:.2f} s/it  loss {running:.3f}", flush=True)
        if train_s >= next_val and train_s < budget:
            point = {"iteration": iteration, "train_s": round(train_s, 1), **validate(model, eval_data, patch)}
            curve.append(point)
            print(f"[{peer}] validation {point}", flush=True)
            next_val += val_every
    train_wall = time.monotonic() - wall0

    pred_dir, refs = run / "predictions", run / "references"
    pred_dir.mkdir()
    refs.mkdir()
    model.eval()
    t0 = time.monotonic()
    for case, item in zip(eval_cases, eval_data, strict=True):
        pred = predict_volume(model, item["image"], patch).numpy().astype(np.uint8)
        src = nib.load(str(case.primary.path))
        if pred.shape != src.shape[:3]:
            raise RuntimeError(f"{case.case_id}: prediction {pred.shape} is not on the input grid {src.shape}")
        header = src.header.copy()
        header.set_data_dtype(np.uint8)
        header.set_slope_inter(1, 0)
        nib.save(nib.Nifti1Image(pred, src.affine, header), str(pred_dir / f"{case.case_id}.nii.gz"))
        shutil.copyfile(case.label, refs / f"{case.case_id}.nii.gz")
    infer_s = (time.monotonic() - t0) / len(eval_cases)
    final = {"iteration": iteration, "train_s": round(train_s, 1)}
    labels = {k: v for k, v in dataset.labels.items() if k}
    evaluation = evaluate(pred_dir, refs, run / "evaluation", labels=labels, progress=False)
    print(evaluation.table(), flush=True)
    classes = {name: {m: entry["metrics"][m]["mean"] for m in ("dice", "hd95_mm", "nsd")}
               for name, entry in evaluation.summary["classes"].items()}
    final.update({f"val_dice_{name.lower()}": v["dice"] for name, v in classes.items()})
    final["val_mean_dice"] = evaluation.summary["mean_dice"]
    curve.append(final)
    results = {
        "benchmark": "peers_hippocampus",
        "peer": peer,
        "description": text,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": machine_info(),
        "split": {"train": len(train_cases), "eval": len(eval_cases), "seed": 0,
                  "how": "segfuse.data.layouts.split_cases(cases, 40, seed=0)"},
        "patch": list(patch),
        "batch": batch,
        "budget_minutes": minutes,
        "iterations": iteration,
        "train_seconds": round(train_s, 1),
        "seconds_per_iteration": round(train_s / max(1, iteration), 3),
        "wall_seconds_training_incl_validation": round(train_wall, 1),
        "cache_seconds": round(cache_s, 1),
        "inference_seconds_per_case": round(infer_s, 3),
        "mean_dice": evaluation.summary["mean_dice"],
        "classes": classes,
        "curve": curve,
        "curve_note": "points before the last: MONAI compute_dice in memory; last point: segfuse evaluate",
    }
    (run / "results.json").write_text(json.dumps(results, indent=2))
    plot_curve(curve, run / "curve.png", f"{peer}, hippocampus 160/40, {minutes:g} min CPU budget")
    return results


def plot_curve(curve: list[dict[str, float]], out_png: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    minutes = [p["train_s"] / 60 for p in curve]
    for key in ("val_dice_anterior", "val_dice_posterior", "val_mean_dice"):
        ax.plot(minutes, [p.get(key, float("nan")) for p in curve], "k--" if key == "val_mean_dice" else "-",
                marker="o", label=key.removeprefix("val_dice_").removeprefix("val_"))
    ax.set_xlabel("training time (min, validation excluded)")
    ax.set_ylabel("Dice on the 40 held-out cases")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)


def fmt(value: float | None, digits: int) -> str:
    """A number for the table; ``n/a`` where the metric is undefined (e.g. HD95 with an empty prediction)."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(out: Path) -> str:
    """A table of every peer's results.json found under ``out``."""
    lines = [
        "| peer | budget (min) | iterations | s/iteration | Dice anterior | Dice posterior | mean Dice "
        "| HD95 anterior (mm) | HD95 posterior (mm) | inference s/case |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(out.glob("*/results.json")):
        r = json.loads(path.read_text())
        ant, post = r["classes"].get("Anterior", {}), r["classes"].get("Posterior", {})
        lines.append(
            f"| {r['peer']} | {r['budget_minutes']:g} | {r['iterations']} | {fmt(r['seconds_per_iteration'], 2)} "
            f"| {fmt(ant.get('dice'), 3)} | {fmt(post.get('dice'), 3)} | {fmt(r['mean_dice'], 3)} "
            f"| {fmt(ant.get('hd95_mm'), 2)} | {fmt(post.get('hd95_mm'), 2)} "
            f"| {fmt(r['inference_seconds_per_case'], 2)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", choices=[*PEERS, "all"], default="all", help="which peer (default: both, in turn)")
    parser.add_argument("--minutes", type=float, default=30.0, help="optimisation-time budget per peer")
    parser.add_argument("--quick", action="store_true", help="2-minute smoke run, validation only at the end")
    parser.add_argument("--batch", type=int, default=None, help="override the peer's batch size (4 / 9)")
    parser.add_argument("--val-every-minutes", type=float, default=None,
                        help="validate on the 40 every M minutes of training (default 5; 0 = only at the end)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--table-only", action="store_true", help="only rebuild <out>/results.md from results.json")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"benchmark needs the hippocampus data at {args.data}", file=sys.stderr)
        return 2
    if args.batch is not None and args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    minutes = 2.0 if args.quick else args.minutes
    if args.val_every_minutes is None:
        args.val_every_minutes = 0.0 if args.quick else 5.0
    out = args.out or REPO / "runs" / f"bench_peers_hippocampus{'_quick' if args.quick else ''}"
    out.mkdir(parents=True, exist_ok=True)
    for peer in () if args.table_only else PEERS if args.peer == "all" else (args.peer,):
        results = run_peer(peer, args, minutes, out)
        print(json.dumps({k: results[k] for k in ("peer", "iterations", "seconds_per_iteration", "mean_dice",
                                                    "classes", "inference_seconds_per_case")}, indent=2), flush=True)
    table = markdown(out)
    (out / "results.md").write_text(table)
    print(table)
    print(f"results: {out}/<peer>/results.json, {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
