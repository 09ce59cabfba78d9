"""Batch prediction throughput: ``predict --dataset`` with and without the background pipeline (issue 11).

A benchmark, not a test. ``--cases`` synthetic BraTS-size cases are written once
to a temporary folder (a 240 × 240 × 155 int16 T1 with a head-shaped foreground,
its FLAIR at 2 × 2 × 4 mm, 120 × 120 × 39, listed in a CSV manifest with columns
``case_id,image,flair_2x2x4mm``), then :func:`segfuse.inference.predict.predict`
runs over all of them with each variant:

- ``sequential``: ``workers=0``, one case after the other (the path before issue 11);
- ``thread-N``: ``workers=N`` reader threads preparing cases ahead while the
  network runs, results written behind (:mod:`segfuse.inference.pipeline`);
- ``process-N``: the same with reader processes (spawned; their start-up is timed).

The network is the one ``configs/brats_t1_flair_lowres.yaml`` describes (``--config``),
saved untrained: weights do not change the time. Every variant writes the label maps
(plus probability maps with ``--probabilities``, QC pictures with ``--qc``) into its
own folder; the report checks that every variant wrote byte-identical label maps.
One warm-up case runs first (not timed). The table shows cases per second and the
ratio to the sequential path; the GIL probe shows how fast a pure-Python loop in the
main thread runs while ``prepare_case`` runs in a reader thread (100 %: reading
never holds the GIL), the measurement behind the default of threads.

``--quick`` (a few minutes on 2 CPU cores): 4 cases of 96 × 96 × 64, a tiny network
(depth 3, widen 0.25, window 48 × 48 × 32), variants sequential, thread-1, process-1.

Usage::

    nice -n 19 .venv/bin/python benchmarks/predict_pipeline.py --quick
    .venv/bin/python benchmarks/predict_pipeline.py --cases 20 --device cuda --json /tmp/pipeline.json

Prints a markdown table, the machine, the date and the exact command.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from segfuse.machine import machine_info, machine_line

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "brats_t1_flair_lowres.yaml"
AUX_NAME = "flair_2x2x4mm"
SCALE = (2, 2, 4)
FULL_SHAPE = (240, 240, 155)
QUICK_SHAPE = (96, 96, 64)
TINY_NETWORK = [
    "model.encoder_depth=3",
    "model.widen_factor=0.25",
    "model.decoder_channels=[32, 16, 8]",
    "training.patch_size=[48, 48, 32]",
    "inference.roi_size=[48, 48, 32]",
]


def log(msg: str) -> None:
    print(f"[predict_pipeline] {msg}", file=sys.stderr, flush=True)


def write_cases(folder: Path, n: int, shape: tuple[int, ...]) -> Path:
    """``n`` synthetic cases (int16 T1 with an ellipsoid head, 2 × 2 × 4 FLAIR) and their CSV manifest."""
    import nibabel as nib
    import numpy as np

    aux_shape = tuple(-(-s // k) for s, k in zip(shape, SCALE, strict=True))
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS, as BraTS
    aux_affine = affine @ np.diag([*SCALE, 1.0])
    aux_affine[:3, 3] = affine[:3, :3] @ (np.array(SCALE) - 1) / 2
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij"))
    rows = ["case_id,image," + AUX_NAME]
    for i in range(n):
        rng = np.random.default_rng(i)
        radii = np.array([0.8, 0.9, 0.85]) * rng.uniform(0.9, 1.0, 3)
        head = ((grid / radii[:, None, None, None].astype(np.float32)) ** 2).sum(0) < 1
        t1 = np.where(head, rng.normal(600, 80, shape), rng.normal(5, 2, shape)).clip(0).astype(np.int16)
        flair = t1[:: SCALE[0], :: SCALE[1], :: SCALE[2]][: aux_shape[0], : aux_shape[1], : aux_shape[2]]
        t1_path, flair_path = folder / f"case{i:03d}_t1.nii.gz", folder / f"case{i:03d}_flair.nii.gz"
        nib.save(nib.Nifti1Image(t1, affine), t1_path)
        nib.save(nib.Nifti1Image(flair.astype(np.float32), aux_affine), flair_path)
        rows.append(f"case{i:03d},{t1_path.name},{flair_path.name}")
    manifest = folder / "cases.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def save_model(config: Path, overrides: list[str], path: Path) -> tuple[Path, str]:
    import torch

    from segfuse.config import load_config
    from segfuse.factory import build_model
    from segfuse.io.checkpoint import save_checkpoint

    cfg = load_config(config, ["data.primary=t1", "data.labels={0: background, 1: whole_tumour}", *overrides])
    torch.manual_seed(0)
    net = build_model(cfg)
    save_checkpoint({"model": net.state_dict(), "config": cfg.to_dict(), "in_channels": 1}, path)
    return path, str(config.relative_to(REPO) if config.is_relative_to(REPO) else config) + (
        f" with {' '.join(overrides)}" if overrides else ""
    )


def gil_probe(manifest: Path, checkpoint: Path) -> dict[str, float]:
    """Main-thread pure-Python speed while one case is prepared in a thread, relative to alone."""
    from segfuse.data.prediction_inputs import read_for_prediction
    from segfuse.inference.model import load_model
    from segfuse.inference.pipeline import prepare_ahead

    model = load_model(checkpoint, device="cpu")
    case = read_for_prediction(manifest, primary="t1", aux=[AUX_NAME]).cases[0]
    start = time.perf_counter()
    prepare_ahead(case, model.preprocessing)
    alone = time.perf_counter() - start

    def rate(seconds: float) -> float:
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            n += 1
        return n / seconds

    solo = rate(1.0)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (prepare_ahead(case, model.preprocessing), done.set()))
    n, start = 0, time.perf_counter()
    thread.start()
    while not done.is_set():
        n += 1
    beside = time.perf_counter() - start
    thread.join()
    solo = (solo + rate(1.0)) / 2  # before and after: other jobs on the machine drift
    return {
        "prepare_alone_s": round(alone, 3),
        "prepare_beside_python_s": round(beside, 3),
        "python_speed_pct": round(100 * n / beside / solo, 1),
    }


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.nii.gz")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=20, help="cases to predict (default 20)")
    parser.add_argument("--shape", type=int, nargs=3, default=list(FULL_SHAPE), help="T1 shape (default 240 240 155)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="network config (saved untrained)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["sequential", "thread-1", "thread-2", "process-1"],
        help="sequential, thread-N, process-N",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat the variants in turn; the median is shown")
    parser.add_argument("--probabilities", action="store_true", help="also write probability maps")
    parser.add_argument("--qc", action="store_true", help="also write QC pictures")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--work", type=Path, default=None, help="folder for cases and outputs (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="4 small cases, a tiny network, 3 variants")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    overrides: list[str] = []
    if args.quick:
        args.cases, args.shape = min(args.cases, 4), list(QUICK_SHAPE)
        args.variants = ["sequential", "thread-1", "process-1"]
        overrides = list(TINY_NETWORK)

    import torch

    from segfuse.inference.predict import predict

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="segfuse-pipeline-") if args.work is None else None
    work = Path(tmp.name) if tmp is not None else args.work
    work.mkdir(parents=True, exist_ok=True)
    log(f"writing {args.cases} cases of {tuple(args.shape)} to {work}")
    (work / "cases").mkdir(exist_ok=True)
    manifest = write_cases(work / "cases", args.cases, tuple(args.shape))
    checkpoint, network = save_model(args.config, overrides, work / "model.pt")
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    options = dict(save_probabilities=args.probabilities, qc=args.qc, device=device, progress=False)

    log("warm-up (one case) and GIL probe")
    warmup = manifest.with_name("warmup.csv")  # beside the cases: its relative paths resolve
    warmup.write_text("\n".join(manifest.read_text().splitlines()[:2]) + "\n")
    predict(checkpoint, warmup, work / "warm", workers=0, **options)
    probe = gil_probe(manifest, checkpoint)

    times: dict[str, list[float]] = {v: [] for v in args.variants}
    failed: dict[str, int] = {}
    digests: dict[str, str] = {}
    for round_ in range(args.rounds):
        for variant in args.variants:  # in turn, so that a drifting machine load hits every variant alike
            kind, _, count = variant.partition("-")
            workers = 0 if kind == "sequential" else int(count or 1)
            out = work / f"out_{variant}_{round_}"
            log(f"round {round_ + 1}/{args.rounds}, {variant}: predicting {args.cases} cases")
            start = time.perf_counter()
            result = predict(
                checkpoint, manifest, out, workers=workers, worker_kind=kind if workers else "thread", **options
            )
            times[variant].append(time.perf_counter() - start)
            failed[variant] = failed.get(variant, 0) + len(result.failed)
            digests.setdefault(variant, digest(out))
    rows: list[dict[str, Any]] = []
    for variant in args.variants:
        seconds = statistics.median(times[variant])
        rows.append(
            {
                "variant": variant,
                "workers": 0 if variant == "sequential" else int(variant.partition("-")[2] or 1),
                "seconds": round(seconds, 2),
                "all_seconds": [round(t, 2) for t in times[variant]],
                "cases_per_s": round(args.cases / seconds, 3),
                "failed": failed[variant],
                "labels_sha256": digests[variant],
            }
        )
    base = next((r for r in rows if r["variant"] == "sequential"), rows[0])
    for r in rows:
        r["ratio"] = round(r["cases_per_s"] / base["cases_per_s"], 2)
        r["identical"] = r["labels_sha256"] == base["labels_sha256"]

    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": f"{machine_line()}; host {platform.node()}, device {device}",
        "machine_info": machine_info(),
        "cases": args.cases,
        "shape": list(args.shape),
        "network": network,
        "outputs": "labels" + (" + probabilities" if args.probabilities else "") + (" + QC" if args.qc else ""),
        "gil_probe": probe,
        "rows": rows,
    }
    print(f"\n{report['cases']} cases of {tuple(report['shape'])} + {AUX_NAME}; network: {network}; "
          f"outputs: {report['outputs']}\n")
    print("| variant | workers | seconds | cases/s | ratio to sequential | identical labels | failed |")
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in rows:
        print(f"| {r['variant']} | {r['workers']} | {r['seconds']} | {r['cases_per_s']} | {r['ratio']} | "
              f"{'yes' if r['identical'] else 'NO'} | {r['failed']} |")
    print(f"\nGIL probe: prepare_case alone {probe['prepare_alone_s']} s; beside a pure-Python loop "
          f"{probe['prepare_beside_python_s']} s, the loop kept {probe['python_speed_pct']} % of its speed.")
    print(f"\n{report['machine']}; {report['date']}\n`{report['command']}`")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0 if all(r["identical"] and not r["failed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
