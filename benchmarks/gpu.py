"""One-shot GPU benchmark (issue 5, section 4): training speed and inference speed with AMP.

Prepared to run ONCE on a lent GPU machine (an H100 of this workplace) inside a
few minutes of device time; every phase is guarded by ``--budget-s`` and the
JSON is rewritten after every phase, so a run cut short still leaves figures.

Phases, in order:

1. **environment**: GPU name, memory, SM count, driver (nvidia-smi), torch / CUDA /
   cuDNN / MONAI / nibabel / numpy versions.
2. **training**: ``configs/hippocampus_3d.yaml`` on the 24 hippocampus cases
   bundled in ``segfuse/sample/hippocampus`` (18 train, the 6 last case ids held
   back for validation, as ``segfuse demo`` does), ``training.amp=true``, for a
   fixed number of iterations through :func:`segfuse.training.loop.train`
   (batch 2, then a larger batch for fewer iterations), each once with
   ``training.num_workers=0`` (batches built in the training thread) and once
   with each further count in ``--workers`` (``auto``: what segfuse picks beside
   a GPU, up to 8 threads). ``iterations_per_epoch`` is set to the iteration
   count, so validation runs once, at the end, and the history row's
   ``elapsed_s`` is pure training time (data preparation excluded). The
   per-iteration clock comes from wrapping ``BatchPrefetcher.next`` (called once
   per iteration in the training thread; the loop synchronises the GPU every
   iteration): steady-state iterations/s skip the first iterations, and the
   share of time the training thread spends waiting for its batch (with 0
   workers: building it, sampling + augmentation) is reported. Peak GPU memory is ``torch.cuda.max_memory_allocated``
   over the run (validation included). ``training.max_minutes`` carries the
   budget guard into the loop, which then stops, validates and returns.
3. **inference** on one BraTS-size volume, random data (timing only): primary
   1×240×240×155, auxiliary 1×120×120×39 (FLAIR at 2×2×4 mm), window
   128×128×128, overlap 0.5, gaussian blending, the same ``sw_batch_size`` for
   both, AMP (autocast) on CUDA, inputs and stitching on the GPU, softmax
   probabilities out:

   - ``segfuse``: FusionUNet at its defaults (ResNet18 depth 5, width 1.0,
     7³ stem, batch norm; FLAIR via a ``conv`` mapper and ``concat`` fusion at
     native resolution) through
     :func:`segfuse.inference.windows.sliding_window_multires`;
   - ``segfuse_output_cpu``: the same, stitched on the CPU as
     :func:`segfuse.inference.engine.predict_prepared` does;
   - ``monai_flexibleunet``: MONAI ``FlexibleUNet(in_channels=2, out_channels=2,
     backbone="resnet18", spatial_dims=3, pretrained=False)`` through
     ``monai.inferers.sliding_window_inference``, FLAIR upsampled (trilinear)
     to the T1 grid and concatenated (early fusion; the upsampling is timed).

   One warm-up pass, then the median (and all) of ``--repeats`` timed passes,
   ``torch.cuda.synchronize()`` around each; peak GPU memory per method.

4. **training speed** at the same patch and batch (64³, batch 2, AMP, one fixed
   random batch): every method of ``benchmarks/train_speed.py`` (segfuse's
   hippocampus and default networks, with and without a FLAIR auxiliary, against
   MONAI FlexibleUNet-resnet18 with and without early fusion and DynUNet on
   nnU-Net's plan), median of 20 steps after 3 warm-ups, peak GPU memory.

SimpleITK is 264 MB as a wheel, too large to carry to the device machine, and
``segfuse.io.image`` imports it at module level (every ``segfuse.io`` import goes
through it). Nothing here reads NRRD, MetaImage or DICOM (the sample is NIfTI,
read with nibabel), so when ``import SimpleITK`` fails, this script, and only
this script, puts an empty stand-in module named ``SimpleITK`` in
``sys.modules`` before importing segfuse, and records that in the JSON.

Usage::

    # on the GPU machine (see benchmarks/gpu_run.sh for the exact device command)
    python3 benchmarks/gpu.py --device cuda --out $OUT/gpu_results.json --budget-s 330
    # CPU smoke run here: tiny iterations and a small volume, end to end
    .venv/bin/python benchmarks/gpu.py --smoke --out /tmp/gpu_smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path
from typing import Any

T0 = time.monotonic()
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SITK_STUBBED = False
try:
    import SimpleITK  # noqa: F401
except ImportError:
    # Only for this script on the device machine: see the module docstring.
    SITK_STUBBED = True
    _stub = types.ModuleType("SimpleITK")
    _stub.__doc__ = "empty stand-in inserted by benchmarks/gpu.py (SimpleITK is not installed)"
    sys.modules["SimpleITK"] = _stub

import numpy as np  # noqa: E402
import torch  # noqa: E402

from segfuse.machine import cpu_model  # noqa: E402


def _elapsed() -> float:
    return time.monotonic() - T0


class Budget:
    """Wall-clock guard from process start: phases ask how much is left before they start."""

    def __init__(self, seconds: float) -> None:
        self.total = seconds

    def left(self) -> float:
        return self.total - _elapsed()


def log(msg: str) -> None:
    print(f"[gpu.py {_elapsed():7.1f}s] {msg}", flush=True)


def _failure(label: str, exc: BaseException, device: torch.device, **fields: Any) -> dict[str, Any]:
    """A failed step's record (``fields`` + error + traceback), logged; frees cached GPU memory."""
    log(f"{label}: FAILED {exc!r}")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {**fields, "error": repr(exc), "traceback": traceback.format_exc()}


def _write(results: dict[str, Any], out: Path) -> None:
    results["wall_s_so_far"] = round(_elapsed(), 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    os.replace(tmp, out)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def _peak_reserved_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_reserved(device) / 2**20, 1)


def _rss_peak_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# -- 1. environment ---------------------------------------------------------------------


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "numpy": np.__version__,
        "simpleitk_stubbed": SITK_STUBBED,
        "torch_threads": torch.get_num_threads(),
    }
    for name in ("monai", "nibabel"):
        try:
            env[name] = __import__(name).__version__
        except Exception as exc:  # reported, not fatal here
            env[name] = f"unavailable: {exc!r}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu_name=torch.cuda.get_device_name(device),
            gpu_total_mib=round(props.total_memory / 2**20),
            gpu_sm_count=props.multi_processor_count,
            gpu_capability=f"{props.major}.{props.minor}",
        )
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=15,
            )
            env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except Exception as exc:
            env["nvidia_smi"] = f"unavailable: {exc!r}"
    else:
        env["gpu_name"] = None
        env["cpu_model"] = cpu_model()
    return env


# -- 2. training ------------------------------------------------------------------------


def train_run(
    device: torch.device, batch_size: int, iterations: int, max_seconds: float, smoke: bool, workers: str
) -> dict[str, Any]:
    """Train hippocampus_3d on the bundled sample; returns speed, memory and Dice."""
    import segfuse.training.loop as loop
    from segfuse.config import load_config
    from segfuse.data.layouts import read_dataset
    from segfuse.sample import sample_data_path
    from segfuse.training.prefetch import BatchPrefetcher, resolve_workers

    data = sample_data_path()
    run_root = Path(tempfile.mkdtemp(prefix=f"segfuse_gpu_b{batch_size}_"))
    overrides = [
        f"data.dataset={data}",
        f"experiment.output_dir={run_root}",
        f"training.device={device.type}",
        "training.amp=true",
        f"training.batch_size={batch_size}",
        f"training.iterations={iterations}",
        f"training.iterations_per_epoch={iterations}",
        f"training.max_minutes={max(max_seconds, 1.0) / 60:.4f}",
        f"training.num_workers={'null' if workers == 'auto' else workers}",
    ]
    if smoke:
        overrides.append("training.warmup_iterations=0")
    cfg = load_config(ROOT / "configs" / "hippocampus_3d.yaml", overrides)
    ids = sorted(c.case_id for c in read_dataset(data).cases)
    cfg.data.val_cases = ids[-6:]  # as segfuse demo: the 6 last ids held back

    starts: list[float] = []
    batch_time = [0.0]
    original = BatchPrefetcher.next

    def timed_next(self):
        t = time.perf_counter()
        starts.append(t)
        result = original(self)
        batch_time[0] += time.perf_counter() - t
        return result

    _reset_peak(device)
    BatchPrefetcher.next = timed_next
    t_call = time.perf_counter()
    try:
        result = loop.train(cfg, run_dir=run_root / "run", progress=False)
    finally:
        BatchPrefetcher.next = original
    t_end = time.perf_counter()
    last = result.history[-1] if result.history else {}
    elapsed = float(last.get("elapsed_s", float("nan")))
    n = result.iteration
    intervals = np.diff(np.asarray(starts)) if len(starts) > 1 else np.asarray([])
    skip = min(20, len(intervals) // 5)
    steady = intervals[skip:]
    loop_time = (starts[-1] - starts[0]) if len(starts) > 1 else float("nan")
    row: dict[str, Any] = {
        "config": "configs/hippocampus_3d.yaml",
        "data": "segfuse/sample/hippocampus (18 train / 6 val)",
        "val_cases": cfg.data.val_cases,
        "patch_size": cfg.training.patch_size,
        "batch_size": batch_size,
        "num_workers": workers,
        "num_workers_resolved": resolve_workers(cfg.training.num_workers, device.type),
        "amp": bool(cfg.training.amp and device.type == "cuda"),
        "iterations_asked": iterations,
        "iterations_done": n,
        "stopped_by_budget": bool(result.interrupted),
        "max_seconds_given": round(max_seconds, 1),
        "train_elapsed_s": elapsed,
        "its_per_s": round(n / elapsed, 3) if elapsed and elapsed == elapsed else None,
        "samples_per_s": round(n * batch_size / elapsed, 3) if elapsed and elapsed == elapsed else None,
        "steady_its_per_s": round(1.0 / float(np.mean(steady)), 3) if len(steady) else None,
        "steady_skip_first": skip,
        "median_iteration_ms": round(float(np.median(steady)) * 1000, 2) if len(steady) else None,
        "batch_wait_share": round(batch_time[0] / loop_time, 3) if loop_time == loop_time and loop_time else None,
        "data_prep_and_overhead_s": round(t_end - t_call - (elapsed if elapsed == elapsed else 0.0), 2),
        "peak_gpu_mib": _peak_mib(device),
        "peak_gpu_reserved_mib": _peak_reserved_mib(device),
        "val_mean_dice": last.get("val_mean_dice"),
        "val_dice": {k: v for k, v in last.items() if k.startswith("val_dice_")},
        "final_train_loss": last.get("train_loss"),
        "history": result.history,
    }
    return row


# -- 3. inference -----------------------------------------------------------------------


def _time_runs(fn, device: torch.device, repeats: int, budget: Budget, reserve: float) -> dict[str, Any]:
    """One warm-up, then up to ``repeats`` timed calls while the budget lasts."""
    _reset_peak(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    warm = time.perf_counter() - t
    times: list[float] = []
    for _ in range(repeats):
        if times and budget.left() < reserve + 1.5 * max(times):
            break
        if not times and budget.left() < reserve + 1.5 * warm:
            break
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return {
        "warmup_s": round(warm, 4),
        "times_s": [round(v, 4) for v in times],
        "median_s": round(statistics.median(times), 4) if times else None,
        "repeats_done": len(times),
        "peak_gpu_mib": _peak_mib(device),
        "peak_gpu_reserved_mib": _peak_reserved_mib(device),
    }


def inference(device: torch.device, args: argparse.Namespace, budget: Budget, results: dict, out: Path) -> None:
    import torch.nn.functional as F
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import FlexibleUNet

    from segfuse import AuxInput, FusionUNet
    from segfuse.inference.engine import window_predictor
    from segfuse.inference.windows import sliding_window_multires, window_starts

    amp = device.type == "cuda"
    shape = tuple(args.volume)
    scale = (2, 2, 4)
    aux_shape = tuple(-(-n // s) for n, s in zip(shape, scale, strict=True))
    roi = tuple(args.roi)
    gen = torch.Generator(device="cpu").manual_seed(0)
    t1 = torch.randn((1, 1, *shape), generator=gen).to(device)
    flair = torch.randn((1, 1, *aux_shape), generator=gen).to(device)
    sec = results["inference"] = {
        "primary_shape": list(shape),
        "aux_shape": list(aux_shape),
        "aux_scale": list(scale),
        "roi_size": list(roi),
        "overlap": args.overlap,
        "sw_batch_size": args.sw_batch_size,
        "blend": "gaussian",
        "amp": amp,
        "repeats": args.repeats,
        "data": "random normal (timing only)",
        "segfuse_windows": len(window_starts(shape, roi, args.overlap, (2, 2, 4))),
        "methods": {},
    }

    torch.manual_seed(0)
    segnet = (
        FusionUNet(
            spatial_dims=3,
            in_channels=1,
            num_classes=2,
            aux=[AuxInput("flair", channels=1, scale=scale, mapper="conv", fusion="concat")],
        )
        .to(device)
        .eval()
    )
    seg_predict = window_predictor(segnet, amp=True)  # autocast on CUDA only, softmax in float32

    def run_segfuse(output_device):
        def fn():
            return sliding_window_multires(
                t1,
                {"flair": flair},
                {"flair": scale},
                seg_predict,
                roi,
                overlap=args.overlap,
                sw_batch_size=args.sw_batch_size,
                blend="gaussian",
                device=device,
                output_device=output_device,
            )

        return fn

    monai_net = (
        FlexibleUNet(in_channels=2, out_channels=2, backbone="resnet18", spatial_dims=3, pretrained=False)
        .to(device)
        .eval()
    )

    def monai_predict(x):
        return torch.softmax(monai_net(x).float(), dim=1)

    def run_monai():
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=amp):
            up = F.interpolate(flair, size=shape, mode="trilinear", align_corners=False)
            x = torch.cat([t1, up.to(t1.dtype)], dim=1)
            return sliding_window_inference(
                x,
                roi,
                args.sw_batch_size,
                monai_predict,
                overlap=args.overlap,
                mode="gaussian",
                sigma_scale=0.125,
                padding_mode="constant",
                cval=0.0,
            )

    methods = [
        ("segfuse", run_segfuse(device), sum(p.numel() for p in segnet.parameters())),
        ("monai_flexibleunet", run_monai, sum(p.numel() for p in monai_net.parameters())),
        ("segfuse_output_cpu", run_segfuse(torch.device("cpu")), sum(p.numel() for p in segnet.parameters())),
    ]
    for name, fn, params in methods:
        if budget.left() < args.min_phase_s:
            sec["methods"][name] = {"skipped": f"budget: {budget.left():.0f} s left"}
            log(f"inference {name}: skipped, budget")
            continue
        log(f"inference {name}: warm-up + up to {args.repeats} timed passes")
        try:
            row = _time_runs(fn, device, args.repeats, budget, reserve=5.0)
            row["parameters"] = params
            sec["methods"][name] = row
            log(
                f"inference {name}: median {row['median_s']} s over {row['repeats_done']}, "
                f"warm-up {row['warmup_s']} s, peak {row['peak_gpu_mib']} MiB"
            )
        except Exception as exc:
            sec["methods"][name] = _failure(f"inference {name}", exc, device)
        _write(results, out)
    # one correctness check on the outputs' shapes (outside the timings)
    if budget.left() > args.min_phase_s:
        try:
            a = run_segfuse(device)()
            b = run_monai()
            sec["output_shapes"] = {"segfuse": list(a.shape), "monai_flexibleunet": list(b.shape)}
            sec["outputs_finite"] = bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())
            del a, b
        except Exception as exc:
            sec["output_check_error"] = repr(exc)
    s, m = sec["methods"].get("segfuse", {}), sec["methods"].get("monai_flexibleunet", {})
    if s.get("median_s") and m.get("median_s"):
        sec["segfuse_over_monai_time"] = round(s["median_s"] / m["median_s"], 3)
    if budget.left() > args.min_phase_s:
        sec["profile"] = {}
        for name, fn in (("segfuse", run_segfuse(device)), ("monai_flexibleunet", run_monai)):
            try:
                sec["profile"][name] = _profile(fn, device)
                log(f"profile {name}: " + ", ".join(f"{r['name']} {r['device_ms']} ms"
                                                    for r in sec["profile"][name]["top"][:6]))
            except Exception as exc:
                sec["profile"][name] = {"error": repr(exc)}
        _write(results, out)


def _profile(fn, device: torch.device, top: int = 15) -> dict[str, Any]:
    """One pass under torch.profiler: the operators that take the most device (or CPU) time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=activities) as prof:
        fn()
        _sync(device)
    events = prof.key_averages()

    def device_us(e) -> float:
        return float(getattr(e, "self_device_time_total", 0.0) or getattr(e, "self_cuda_time_total", 0.0) or 0.0)

    key = device_us if device.type == "cuda" else (lambda e: float(e.self_cpu_time_total))
    rows = sorted(events, key=key, reverse=True)[:top]
    return {
        "device_total_ms": round(sum(device_us(e) for e in events) / 1000, 2),
        "cpu_total_ms": round(sum(float(e.self_cpu_time_total) for e in events) / 1000, 2),
        "top": [
            {"name": e.key, "calls": e.count, "device_ms": round(device_us(e) / 1000, 2),
             "cpu_ms": round(float(e.self_cpu_time_total) / 1000, 2)}
            for e in rows
        ],
    }


# -- 4. training speed at the same patch and batch ----------------------------------------


def training_speed(device: torch.device, args: argparse.Namespace, budget: Budget, results: dict, out: Path) -> None:
    """segfuse's networks against MONAI's, one training step each as ``benchmarks/train_speed.py`` defines it."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_speed

    patch = (32, 32, 32) if args.smoke else (64, 64, 64)
    warmup, steps = (1, 2) if args.smoke else (3, 20)
    sec = results["training_speed"] = {"batch": 2, "patch": list(patch), "amp": device.type == "cuda",
                                       "warmup_steps": warmup, "steps": steps, "data": "one fixed random batch",
                                       "methods": {}}
    for method in train_speed.METHODS:
        if budget.left() < args.min_phase_s:
            sec["methods"][method] = {"skipped": f"budget: {budget.left():.0f} s left"}
            continue
        try:
            torch.manual_seed(0)
            model, step_loss, optimizer, params = train_speed.build(method, 2, patch, device=str(device))
            _reset_peak(device)
            times = train_speed.time_steps(model, step_loss, optimizer, warmup, steps, amp=device.type == "cuda")
            median = statistics.median(times)
            sec["methods"][method] = {"parameters": params, "median_s_per_it": round(median, 4),
                                      "its_per_s": round(1 / median, 2), "peak_gpu_mib": _peak_mib(device)}
            log(f"training speed {method}: {1 / median:.2f} it/s, peak {_peak_mib(device)} MiB")
            del model, step_loss, optimizer
        except Exception as exc:
            sec["methods"][method] = _failure(f"training speed {method}", exc, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        _write(results, out)


# -- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda (default) or cpu (default with --smoke)")
    p.add_argument("--out", default="gpu_results.json", help="JSON written after every phase")
    p.add_argument(
        "--budget-s",
        type=float,
        default=330.0,
        help="wall-clock budget from process start; phases stop early to stay inside it",
    )
    p.add_argument("--smoke", action="store_true", help="tiny CPU run: few iterations, small volume")
    p.add_argument("--train-iters", type=int, default=300, help="iterations at --batch-size")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--large-batch", type=int, default=8, help="second training run's batch (0: skip)")
    p.add_argument("--large-iters", type=int, default=60)
    p.add_argument("--volume", type=int, nargs=3, default=[240, 240, 155])
    p.add_argument("--roi", type=int, nargs=3, default=[128, 128, 128])
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--sw-batch-size", type=int, default=2, help="windows per forward, both methods")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument(
        "--workers",
        default="0,auto",
        help="comma-separated training.num_workers values; each training run is repeated with each",
    )
    p.add_argument("--min-phase-s", type=float, default=15.0, help="a phase with less left than this is skipped")
    args = p.parse_args(argv)
    if args.device is None:
        args.device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        args.train_iters, args.batch_size = 4, 1
        args.large_batch, args.large_iters = 2, 2
        args.volume, args.roi, args.repeats = [64, 64, 40], [32, 32, 32], 1
        args.workers = "0,2"
        args.min_phase_s = 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    out = Path(args.out)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu.py: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    run_sh = ROOT / "benchmarks" / "gpu_run.sh"
    results: dict[str, Any] = {
        "benchmark": "segfuse benchmarks/gpu.py (issue 5, section 4)",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": shlex.join([sys.executable, *sys.argv]),
        "device_command_file": "benchmarks/gpu_run.sh",
        "device_command": run_sh.read_text() if run_sh.is_file() else None,
        "args": vars(args),
        "git_commit": _git_commit(),
    }
    log(f"device {device}, budget {args.budget_s:.0f} s")
    results["environment"] = env = environment(device)
    log(
        f"GPU: {env.get('gpu_name')} | torch {env['torch']} CUDA {env['torch_cuda']} cuDNN {env['cudnn']} "
        f"| MONAI {env.get('monai')} | SimpleITK stubbed: {SITK_STUBBED}"
    )
    _write(results, out)

    # Budget shares: the batch-2 runs get up to 40 % of the budget together, the large-batch runs
    # up to 15 %, inference the rest (it needs ~35 %: model builds, warm-ups, timed passes).
    results["training"] = []
    worker_counts = [w.strip() for w in args.workers.split(",") if w.strip()]
    plan = [(args.batch_size, args.train_iters, 0.40 / len(worker_counts), w) for w in worker_counts]
    if args.large_batch:
        plan += [(args.large_batch, args.large_iters, 0.15 / len(worker_counts), w) for w in worker_counts]
    for batch, iters, share, workers in plan:
        left = budget.left()
        name = f"training batch {batch}, workers {workers}"
        if left < args.min_phase_s + 0.35 * args.budget_s:
            results["training"].append(
                {"batch_size": batch, "num_workers": workers, "skipped": f"budget: {left:.0f} s left"}
            )
            log(f"{name}: skipped, {left:.0f} s left")
            continue
        # the loop checks max_minutes after each iteration, then validates (~a few s) and saves
        max_s = min(share * args.budget_s, left - 0.35 * args.budget_s)
        log(f"{name}: {iters} iterations, at most {max_s:.0f} s of training")
        try:
            row = train_run(device, batch, iters, max_s, args.smoke, workers)
            log(
                f"{name} ({row['num_workers_resolved']} threads): {row['iterations_done']} it in "
                f"{row['train_elapsed_s']} s = {row['its_per_s']} it/s (steady {row['steady_its_per_s']}), "
                f"batch wait share {row['batch_wait_share']}, peak {row['peak_gpu_mib']} MiB, "
                f"val Dice {row['val_mean_dice']}"
            )
        except Exception as exc:
            row = _failure(name, exc, device, batch_size=batch, num_workers=workers)
        results["training"].append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        _write(results, out)

    try:
        inference(device, args, budget, results, out)
    except Exception as exc:
        results.setdefault("inference", {}).update(_failure("inference", exc, device))
    try:
        training_speed(device, args, budget, results, out)
    except Exception as exc:
        results["training_speed"] = _failure("training speed", exc, device)
    results["peak_rss_mib"] = _rss_peak_mib()
    results["total_wall_s"] = round(_elapsed(), 2)
    _write(results, out)
    _summary(results)
    return 0


def _git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None
    except Exception:
        return None


def _summary(results: dict[str, Any]) -> None:
    env = results["environment"]
    print(
        "\n## segfuse GPU benchmark:",
        env.get("gpu_name") or env.get("cpu_model") or "CPU",
        f"| torch {env['torch']} CUDA {env['torch_cuda']} | {results['date_utc']}",
    )
    print(
        "\n| training (hippocampus_3d, AMP) | batch | workers | iterations | it/s | steady it/s | samples/s "
        "| batch-wait share | peak GPU MiB | val mean Dice |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results.get("training", []):
        if "its_per_s" in r:
            print(
                f"| segfuse 3D | {r['batch_size']} | {r['num_workers']} ({r['num_workers_resolved']}) | "
                f"{r['iterations_done']}/{r['iterations_asked']} | "
                f"{r['its_per_s']} | {r['steady_its_per_s']} | {r['samples_per_s']} | {r['batch_wait_share']} | "
                f"{r['peak_gpu_mib']} | {r['val_mean_dice']} |"
            )
        else:
            why = r.get("skipped") or r.get("error")
            print(f"| segfuse 3D | {r.get('batch_size')} | {r.get('num_workers')} | {why} | | | | | | |")
    inf = results.get("inference", {})
    print(
        f"\n| inference {inf.get('primary_shape')} + aux {inf.get('aux_shape')}, roi {inf.get('roi_size')}, "
        f"overlap {inf.get('overlap')} | median s | timed passes | warm-up s | peak GPU MiB |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name, r in inf.get("methods", {}).items():
        if "median_s" in r:
            print(f"| {name} | {r['median_s']} | {r['repeats_done']} | {r['warmup_s']} | {r['peak_gpu_mib']} |")
        else:
            print(f"| {name} | {r.get('skipped') or r.get('error')} | | | |")
    if inf.get("error"):
        print("inference error:", inf["error"])
    speed = results.get("training_speed", {})
    print(f"\n| training step, batch 2, patch {speed.get('patch')}, AMP {speed.get('amp')} | parameters | it/s "
          "| peak GPU MiB |")
    print("| --- | --- | --- | --- |")
    for name, r in speed.get("methods", {}).items():
        if "its_per_s" in r:
            print(f"| {name} | {r['parameters']} | {r['its_per_s']} | {r['peak_gpu_mib']} |")
        else:
            print(f"| {name} | {r.get('skipped') or r.get('error')} | | |")
    print(f"\ntotal wall {results['total_wall_s']} s; JSON: {results['args']['out']}")


if __name__ == "__main__":
    sys.exit(main())
