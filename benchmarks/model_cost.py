"""Model cost of FusionUNet on CPU: parameters, forward+backward time, peak memory.

A benchmark, not a test (issue 2). For a 3D primary of ``size³`` voxels (batch 1,
1 channel, 3 classes) it compares

- ``primary-only``: FusionUNet without auxiliaries;
- ``early fusion``: the auxiliary upsampled (trilinear, ``align_corners=False``)
  to the primary grid and concatenated as a second input channel
  (FusionUNet with ``in_channels=2``); the upsampling is inside the timing;
- ``segfuse``: FusionUNet with one auxiliary (``mapper`` linear, mlp or conv,
  ``fusion="concat"``, other AuxInput fields at their defaults) at scales 2×2×2
  and 2×2×4, fed at its native resolution ``ceil(size / scale)``.

Method
------
Every variant runs in fresh Python subprocesses, so allocator state and peak
memory of one variant never leak into another. In a subprocess the model is
built in training mode (BatchNorm in training mode, as during training) and the
inputs are created. One step is ``zero_grad(set_to_none=True)``, forward,
cross-entropy against a fixed random label map, backward (no optimiser step).

- Memory (one subprocess per variant): the resident set size (``VmRSS``) is read
  after building model and inputs; one step runs; peak memory is ``ru_maxrss``
  (peak RSS) minus that: what forward+backward adds on top of weights and inputs
  (activations, gradients, workspace). The subprocess runs with
  ``MALLOC_MMAP_THRESHOLD_=1 MiB`` so that glibc maps every tensor of 1 MiB or
  more on its own and unmaps it on free; RSS then follows live tensor memory and
  the peak repeats to the MiB (with glibc's adaptive threshold, heap
  fragmentation made the peak of identical runs differ by up to 35 %). The same
  subprocess counts FLOPs of one step with ``torch.utils.flop_counter``: a
  noise-free cost measure next to the noisy clock.
- Time (``--rounds`` subprocesses per variant, default allocator): ``--warmup``
  steps are discarded, then ``--repeats`` steps are timed with
  ``time.perf_counter``. The variants are cycled round by round, so slow phases
  of a shared machine spread over all of them; the reported time is the median
  (and min, max) of all timed steps of all rounds.

Usage::

    .venv/bin/python benchmarks/model_cost.py                       # default FusionUNet
    .venv/bin/python benchmarks/model_cost.py --widen-factor 0.5 --stem-kernel 3 \\
        --decoder-channels 128 64 32 16 16                          # lean 3D setting
    .venv/bin/python benchmarks/model_cost.py --quick               # smoke run, < 2 min

Prints a markdown table plus machine, date and the exact command; ``--json OUT``
also writes every number, ``--plot PNG`` a bar chart of the overheads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import statistics
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

TARGET_OVERHEAD_PCT = 15.0
SCALES = ((2, 2, 2), (2, 2, 4))
MAPPERS = ("linear", "mlp", "conv")
NUM_CLASSES = 3
MEMORY_METHOD = (
    "peak RSS (ru_maxrss) of one step minus RSS after building model and inputs, "
    "fresh subprocess per variant, MALLOC_MMAP_THRESHOLD_=1 MiB"
)


# -- variants -----------------------------------------------------------------------


def variants() -> list[dict[str, Any]]:
    """The variants compared, in table order."""
    out: list[dict[str, Any]] = [{"name": "primary-only", "kind": "primary", "scale": None, "mapper": None}]
    for scale in SCALES:
        out.append({"name": f"early fusion {_fmt_scale(scale)}", "kind": "early", "scale": scale, "mapper": None})
    for scale in SCALES:
        for mapper in MAPPERS:
            out.append(
                {"name": f"segfuse {mapper} {_fmt_scale(scale)}", "kind": "segfuse", "scale": scale, "mapper": mapper}
            )
    return out


def _fmt_scale(scale: tuple[int, ...] | list[int]) -> str:
    return "×".join(str(s) for s in scale)


# -- worker (runs in a fresh subprocess) ----------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("VmRSS not found in /proc/self/status")


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Build one variant, time ``repeats`` forward+backward steps, measure peak RSS."""
    import gc

    import torch
    import torch.nn.functional as F

    from segfuse import AuxInput, FusionUNet

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    size = spec["size"]
    net_kwargs = {
        "spatial_dims": 3,
        "num_classes": NUM_CLASSES,
        "encoder_depth": spec["encoder_depth"],
        "widen_factor": spec["widen_factor"],
        "stem_kernel": spec["stem_kernel"],
        "decoder_channels": spec["decoder_channels"],
        "norm": spec.get("norm", "batch"),
    }
    kind, scale = spec["kind"], spec["scale"]
    shape = (size, size, size)
    x = torch.randn(1, 1, *shape)
    target = torch.randint(0, NUM_CLASSES, (1, *shape))
    aux_t = None
    if scale is not None:
        aux_t = torch.randn(1, 1, *[math.ceil(n / s) for n, s in zip(shape, scale, strict=True)])
    if kind == "segfuse":
        aux = [AuxInput("aux", channels=1, scale=tuple(scale), mapper=spec["mapper"], fusion="concat")]
        net = FusionUNet(in_channels=1, aux=aux, **net_kwargs)
    else:
        net = FusionUNet(in_channels=2 if kind == "early" else 1, **net_kwargs)
    net.train()

    def step() -> None:
        net.zero_grad(set_to_none=True)
        if kind == "primary":
            logits = net(x)
        elif kind == "early":
            up = F.interpolate(aux_t, size=shape, mode="trilinear", align_corners=False)
            logits = net(torch.cat([x, up], dim=1))
        else:
            logits = net(x, aux={"aux": aux_t})
        F.cross_entropy(logits, target).backward()

    params = sum(p.numel() for p in net.parameters())
    if spec["mode"] == "memory":
        from torch.utils.flop_counter import FlopCounterMode

        gc.collect()
        rss_base = _rss_kib()
        t0, c0 = time.perf_counter(), time.process_time()
        with FlopCounterMode(display=False) as counter:  # counts shapes only, keeps no tensors
            step()
        cold = (time.perf_counter() - t0, time.process_time() - c0)
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        times, cpu_times = [], []
        for _ in range(spec.get("timed_steps", 0)):  # --quick: time here, no separate timing pass
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        return {
            "params": params,
            "cold_s": cold[0],
            "cold_cpu_s": cold[1],
            "times_s": times,
            "cpu_times_s": cpu_times,
            "threads": torch.get_num_threads(),
            "peak_mib": (maxrss - rss_base) / 1024,
            "rss_base_mib": rss_base / 1024,
            "flops": counter.get_total_flops(),
            "config": net.config,
        }
    for _ in range(spec["warmup"]):
        step()
    times, cpu_times = [], []
    for _ in range(spec["repeats"]):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return {"params": params, "times_s": times, "cpu_times_s": cpu_times, "threads": torch.get_num_threads()}


def analytic(spec: dict[str, Any]) -> dict[str, Any]:
    """Noise-free cost on the ``meta`` device (no data, no compute): parameters, FLOPs of
    forward+backward, and the bytes of the tensors autograd saves for backward (the bulk
    of the activation memory; the measured RSS peak adds gradients and workspace)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from segfuse import AuxInput, FusionUNet

    kind, scale, shape = spec["kind"], spec["scale"], (spec["size"],) * 3
    net_kwargs = {k: spec[k] for k in ("encoder_depth", "widen_factor", "stem_kernel", "decoder_channels")}
    with torch.device("meta"):
        if kind == "segfuse":
            aux = [AuxInput("aux", channels=1, scale=tuple(scale), mapper=spec["mapper"], fusion="concat")]
            net = FusionUNet(
                spatial_dims=3, in_channels=1, num_classes=NUM_CLASSES, aux=aux, norm=spec["norm"], **net_kwargs
            )
        else:
            in_ch = 2 if kind == "early" else 1
            net = FusionUNet(
                spatial_dims=3, in_channels=in_ch, num_classes=NUM_CLASSES, norm=spec["norm"], **net_kwargs
            )
        x = torch.empty(1, 1, *shape)
        target = torch.zeros(1, *shape, dtype=torch.long)
        aux_t = None
        if scale is not None:
            aux_t = torch.empty(1, 1, *[math.ceil(n / s) for n, s in zip(shape, scale, strict=True)])
    net.train()
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        saved[storage._cdata] = storage.nbytes()
        return t

    with FlopCounterMode(display=False) as counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if kind == "primary":
                logits = net(x)
            elif kind == "early":
                up = F.interpolate(aux_t, size=shape, mode="trilinear", align_corners=False)
                logits = net(torch.cat([x, up], dim=1))
            else:
                logits = net(x, aux={"aux": aux_t})
            loss = F.cross_entropy(logits, target)
        loss.backward()
    return {
        "name": spec["name"],
        "kind": kind,
        "params": sum(p.numel() for p in net.parameters()),
        "gflop": counter.get_total_flops() / 1e9,
        "saved_mib": sum(saved.values()) / 2**20,
    }


def analytic_table(rows: list[dict[str, Any]]) -> str:
    base = rows[0]
    lines = [
        "| variant | params | Δ params | GFLOP fwd+bwd | Δ FLOP | saved for backward MiB | Δ saved |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r is base:
            deltas = ("—", "—", "—")
        else:
            deltas = tuple(
                f"{100 * (r[k] / base[k] - 1):+.2f} %" if k == "params" else f"{100 * (r[k] / base[k] - 1):+.1f} %"
                for k in ("params", "gflop", "saved_mib")
            )
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.3f} M | {deltas[0]} | {r['gflop']:.1f} | {deltas[1]} | "
            f"{r['saved_mib']:.0f} | {deltas[2]} |"
        )
    return "\n".join(lines)


# -- driver -------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    from segfuse.machine import machine_info as segfuse_machine_info

    info = segfuse_machine_info()
    return {**info, "load_average_start": info["load_average"]}  # "threads": set from the timed workers


def run_variant(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one variant in a fresh interpreter and return its result."""
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH", "")]))
    if spec["mode"] == "memory":
        # A fixed mmap threshold stops glibc from moving it up as blocks are freed, so
        # every tensor of 1 MiB or more is its own mapping, returned on free: RSS then
        # follows live tensor memory instead of heap fragmentation (without it the
        # same run's peak varied by up to 35 %).
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"variant {spec['name']!r} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(
    memory: dict[str, dict[str, Any]], timing: dict[str, list[dict[str, Any]]], order: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    rows = []
    for v in order:
        mem = memory[v["name"]]
        times = [t for r in timing[v["name"]] for t in r["times_s"]]
        cpu_times = [t for r in timing[v["name"]] for t in r["cpu_times_s"]]
        rows.append(
            {
                "name": v["name"],
                "kind": v["kind"],
                "scale": v["scale"],
                "mapper": v["mapper"],
                "params": mem["params"],
                "gflop": mem["flops"] / 1e9,
                "time_median_s": statistics.median(times),
                "time_min_s": min(times),
                "time_max_s": max(times),
                "times_s": times,
                "cpu_median_s": statistics.median(cpu_times),
                "cpu_times_s": cpu_times,
                "peak_mib": mem["peak_mib"],
                "rss_base_mib": mem["rss_base_mib"],
                "threads": timing[v["name"]][0]["threads"],
            }
        )
    base = rows[0]
    for row in rows:
        row["params_overhead_pct"] = 100 * (row["params"] / base["params"] - 1)
        row["flop_overhead_pct"] = 100 * (row["gflop"] / base["gflop"] - 1)
        row["time_overhead_pct"] = 100 * (row["time_median_s"] / base["time_median_s"] - 1)
        row["time_min_overhead_pct"] = 100 * (row["time_min_s"] / base["time_min_s"] - 1)
        row["cpu_overhead_pct"] = 100 * (row["cpu_median_s"] / base["cpu_median_s"] - 1)
        row["mem_overhead_pct"] = 100 * (row["peak_mib"] / base["peak_mib"] - 1)
        if row["kind"] == "segfuse":
            row["time_met"] = row["time_overhead_pct"] <= TARGET_OVERHEAD_PCT
            row["mem_met"] = row["mem_overhead_pct"] <= TARGET_OVERHEAD_PCT
            row["target_met"] = row["time_met"] and row["mem_met"]
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | params | GFLOP fwd+bwd | Δ FLOP | fwd+bwd s, median [min–max] | Δ time median (min) "
        "| CPU s median | Δ CPU | peak MiB | Δ memory | ≤ 15 % target (time, memory) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r["kind"] == "primary":
            delta_f = delta_t = delta_c = delta_m = "—"
            mark = "baseline"
        else:
            delta_f = f"{r['flop_overhead_pct']:+.1f} %"
            delta_t = f"{r['time_overhead_pct']:+.1f} % ({r['time_min_overhead_pct']:+.1f} %)"
            delta_m = f"{r['mem_overhead_pct']:+.1f} %"
            delta_c = f"{r['cpu_overhead_pct']:+.1f} %"
            if r["kind"] == "early":
                mark = "reference (no target)"
            elif r["target_met"]:
                mark = "met"
            else:
                missed = [n for n, ok in (("time", r["time_met"]), ("memory", r["mem_met"])) if not ok]
                mark = "**missed** (" + ", ".join(missed) + ")"
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.3f} M | {r['gflop']:.1f} | {delta_f} | "
            f"{r['time_median_s']:.2f} [{r['time_min_s']:.2f}–{r['time_max_s']:.2f}] | {delta_t} | "
            f"{r['cpu_median_s']:.2f} | {delta_c} | "
            f"{r['peak_mib']:.0f} | {delta_m} | {mark} |"
        )
    return "\n".join(lines)


def plot(reports: list[dict[str, Any]], path: Path) -> None:
    """Bar chart of time and memory overheads vs primary-only, one panel per report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows = max(len(r["rows"]) - 1 for r in reports)
    fig, axes = plt.subplots(1, len(reports), figsize=(7 * len(reports), 0.45 * n_rows + 1.8), squeeze=False)
    for ax, report in zip(axes[0], reports, strict=True):
        rows = [r for r in report["rows"] if r["kind"] != "primary"]
        ys = range(len(rows))
        ax.barh([y - 0.27 for y in ys], [r["time_overhead_pct"] for r in rows], height=0.27, label="time (median)")
        ax.barh([y for y in ys], [r["flop_overhead_pct"] for r in rows], height=0.27, label="FLOPs")
        ax.barh([y + 0.27 for y in ys], [r["mem_overhead_pct"] for r in rows], height=0.27, label="peak memory")
        ax.axvline(TARGET_OVERHEAD_PCT, color="k", linestyle="--", linewidth=1, label="15 % target")
        ax.axvline(0, color="grey", linewidth=0.5)
        ax.set_yticks(list(ys), [r["name"] for r in rows])
        ax.invert_yaxis()
        ax.set_xlabel("overhead vs primary-only (%)")
        ax.set_title(textwrap.fill(report["title"], 70), fontsize=8)
        ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=128, help="primary edge length in voxels (default 128)")
    p.add_argument("--repeats", type=int, default=5, help="timed forward+backward steps per round (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before timing (default 1)")
    p.add_argument("--rounds", type=int, default=1, help="fresh subprocesses per variant, cycled (default 1)")
    p.add_argument("--widen-factor", type=float, default=1.0)
    p.add_argument("--encoder-depth", type=int, default=5)
    p.add_argument("--stem-kernel", type=int, default=7)
    p.add_argument("--decoder-channels", type=int, nargs="+", default=None, help="deepest first (default: net's)")
    p.add_argument("--norm", choices=("batch", "instance"), default="batch", help="encoder/decoder norm")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's default)")
    p.add_argument("--only", nargs="+", default=None, help="variant names to run (primary-only is always run)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: size 2·2^depth (64), 1 timed step inside the memory subprocess (no separate timing pass)",
    )
    p.add_argument(
        "--memory-only",
        action="store_true",
        help="no timing pass: time is the single cold step of the memory subprocess (for an overloaded machine)",
    )
    p.add_argument(
        "--analytic",
        action="store_true",
        help="no measurement: parameters, FLOPs and saved-for-backward bytes on the meta device (seconds)",
    )
    p.add_argument("--json", type=Path, default=None, help="write all numbers to this JSON file")
    p.add_argument("--plot", type=Path, default=None, help="write a bar chart of the overheads (PNG)")
    p.add_argument(
        "--plot-from", type=Path, nargs="+", default=None, help="only plot these --json reports to --plot, no run"
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds per variant subprocess")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        # Smallest size whose bottleneck has 2 voxels per axis: BatchNorm in training
        # mode needs more than one value per channel at batch 1.
        args.size, args.repeats, args.rounds = 2 * 2**args.encoder_depth, 1, 1
    if args.repeats < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("--repeats and --rounds must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    if args.plot_from:
        if not args.plot:
            raise SystemExit("--plot-from needs --plot PNG")
        plot([json.loads(p.read_text()) for p in args.plot_from], args.plot)
        return 0

    command = shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(argv)
    order = variants()
    if args.only:
        order = [v for v in order if v["kind"] == "primary" or v["name"] in args.only]
    base_spec = {
        "size": args.size,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "threads": args.threads,
        "encoder_depth": args.encoder_depth,
        "widen_factor": args.widen_factor,
        "stem_kernel": args.stem_kernel,
        "decoder_channels": args.decoder_channels,
        "norm": args.norm,
    }
    if args.analytic:
        rows = [analytic({**base_spec, **v}) for v in order]
        print(f"## FusionUNet 3D {args.size}³, analytic (meta device), {shlex.join(sys.argv[1:])}\n")
        print(analytic_table(rows))
        print(f"\nCommand: `{command}`")
        if args.json:
            args.json.write_text(json.dumps({"command": command, "rows": rows}, indent=2))
        return 0
    info = machine_info()
    started = datetime.now(timezone.utc)
    memory: dict[str, dict[str, Any]] = {}
    timing: dict[str, list[dict[str, Any]]] = {v["name"]: [] for v in order}
    for v in order:
        t0 = time.perf_counter()
        spec = {**base_spec, **v, "mode": "memory", "timed_steps": args.repeats if args.quick else 0}
        memory[v["name"]] = res = run_variant(spec, args.timeout)
        if args.quick:
            timing[v["name"]].append(res)
        elif args.memory_only:  # the single (cold) memory step is the only timing
            timing[v["name"]].append({**res, "times_s": [res["cold_s"]], "cpu_times_s": [res["cold_cpu_s"]]})
        print(
            f"[memory] {v['name']}: peak +{res['peak_mib']:.0f} MiB, {res['flops'] / 1e9:.1f} GFLOP, "
            f"cold step {res['cold_s']:.1f} s wall / {res['cold_cpu_s']:.1f} s CPU "
            f"({time.perf_counter() - t0:.0f} s wall)",
            file=sys.stderr,
            flush=True,
        )
    for rnd in range(0 if args.quick or args.memory_only else args.rounds):
        for v in order:
            t0 = time.perf_counter()
            res = run_variant({**base_spec, **v, "mode": "time"}, args.timeout)
            timing[v["name"]].append(res)
            print(
                f"[round {rnd + 1}/{args.rounds}] {v['name']}: {' '.join(f'{t:.2f}' for t in res['times_s'])} s "
                f"({time.perf_counter() - t0:.0f} s wall)",
                file=sys.stderr,
                flush=True,
            )
    info["load_average_end"] = os.getloadavg()
    rows = summarise(memory, timing, order)
    info["threads"] = rows[0]["threads"]
    net_desc = (
        f"encoder_depth={args.encoder_depth}, widen_factor={args.widen_factor}, stem_kernel={args.stem_kernel}, "
        f"decoder_channels={tuple(memory['primary-only']['config']['decoder_channels'])}, norm={args.norm}"
    )
    report = {
        "title": f"FusionUNet 3D {args.size}³, {net_desc}",
        "command": command,
        "date_utc": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": info,
        "settings": {**base_spec, "rounds": args.rounds},
        "memory_method": MEMORY_METHOD,
        "rows": rows,
        "configs": {name: m["config"] for name, m in memory.items()},
    }
    print(f"## {report['title']}\n")
    print(markdown_table(rows))
    print(
        f"\nfwd+bwd: batch 1, 1 channel, {NUM_CLASSES} classes, training mode, cross-entropy, no optimiser step. "
        f"Time: median [min–max] of {args.rounds} round(s) × {args.repeats} step(s), each round a fresh subprocess "
        f"per variant after {args.warmup} warm-up step(s); Δ time in brackets uses the minima. "
        "CPU s: process CPU time per step (all threads; less sensitive to other processes than the clock). "
        f"GFLOP: torch.utils.flop_counter over one step. Memory: {MEMORY_METHOD}."
    )
    la0, la1 = info["load_average_start"], info["load_average_end"]
    print(
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['threads']} threads, "
        f"Python {info['python']}; load average {la0[0]:.2f} at start, {la1[0]:.2f} at end "
        "(the machine is shared: timings are noisy)."
    )
    print(f"Date: {report['date_utc']}")
    print(f"Command: `{command}`")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=list))
    if args.plot:
        plot([report], args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
