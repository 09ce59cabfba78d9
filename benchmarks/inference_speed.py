"""Inference speed on CPU: segfuse predict versus MONAI's sliding window (issues 4 and 5, §3).

A benchmark, not a test. One BraTS-size case, a 240×240×155 T1 primary with its
FLAIR at 2×2×4 mm (120×120×39), taken from ``../shared/data/brats18_t1_flair``
when present (``t1.nii.gz`` + ``flair_2x2x4mm.nii.gz``), else random data of
those shapes (the report says which). Methods, each in a fresh subprocess so
that peak RSS (``ru_maxrss``) belongs to one method:

- ``segfuse predict``: :func:`segfuse.inference.case.predict_case` from a
  checkpoint file, the whole path: reading the checkpoint and rebuilding the
  network, reading the NIfTI files, preprocessing (canonical RAS, z-score),
  the multi-resolution sliding window (the FLAIR windowed at its own 2×2×4 grid),
  the label map written on the input grid. The same runs also time the stages:
  ``window+network`` is :func:`segfuse.inference.engine.predict_prepared` alone
  (windows, network, softmax, Gaussian blending), measured by wrapping the
  function ``predict_case`` calls.
- ``MONAI``: ``monai.inferers.sliding_window_inference`` with
  ``FlexibleUNet(in_channels=2, out_channels=2, backbone="resnet18",
  spatial_dims=3, pretrained=False)`` on the T1 and the FLAIR upsampled
  trilinearly to the T1 grid (early fusion; the upsampling is timed). Inputs are
  in memory: MONAI's time has no reading, preprocessing or writing.

- ``nnU-Net v2's predictor`` (issue 5 §3), mirroring off and on, each in its own
  subprocess of nnU-Net's own interpreter (``--nnunet-python``, default
  ``/tmp/segfuse-nnunet-venv/bin/python``, made by
  ``bash benchmarks/nnunet_hippocampus.sh --setup-only``; skipped, and the report
  says so, when it is absent) running ``benchmarks/nnunet/predict_speed.py``:
  nnU-Net's fingerprint extraction and experiment planner (``--nnunet-planner``)
  plan a one-case dataset of the T1 and the FLAIR upsampled trilinearly to the T1
  grid (the input MONAI gets), the planned 3d_fullres network is saved untrained
  in nnU-Net's model-folder layout, and ``nnUNetPredictor`` (tile step 0.5,
  Gaussian, CPU) times ``initialize_from_trained_model_folder`` +
  ``predict_from_files``: read, crop to the non-zero box, z-score, windows of its
  own planned patch (not ``--roi``), resample/export. ``--nnunet-processes``
  (default 1) preprocessing and export processes; the same ``--threads``. nnU-Net's
  folders live in the run's temporary directory. With ``--quick`` the mirroring-on
  call is one timed call without a warm-up; ``--nnunet-mirroring-repeats`` and
  ``--nnunet-mirroring-warmups`` set them otherwise (default ``--repeats`` and 1).

segfuse and MONAI use the same window (``--roi``, default the segfuse config's roi), overlap
(``--overlap``, default 0.5), ``sw_batch_size``, Gaussian blending
(``sigma_scale=0.125``) and softmax inside the predictor. The segfuse network is
the one ``configs/brats_t1_flair_lowres.yaml`` describes (``--config``; a
built-in equivalent when the file is absent), saved untrained with
:func:`segfuse.io.checkpoint.save_checkpoint`: weights do not change the time.
With ``--tta`` a second table repeats both with mirror test-time augmentation
over the three axes (8 passes per window; for MONAI the predictor averages the
same 8 flips), and shows nnU-Net's mirroring-on row (the same measurement) beside them.

Each subprocess runs one warm-up call (reported apart), then ``--repeats`` timed
calls; the table shows the median. ``--profile`` adds a ``torch.profiler``
breakdown of one segfuse ``window+network`` call and one MONAI call.

Usage::

    nice -n 19 .venv/bin/python benchmarks/inference_speed.py --json /tmp/speed.json
    nice -n 19 .venv/bin/python benchmarks/inference_speed.py --quick   # < 10 min smoke run

Prints markdown tables, the machine, the date and the exact command.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "brats_t1_flair_lowres.yaml"
DEFAULT_CASE = REPO.parent / "shared" / "data" / "brats18_t1_flair" / "Brats18_CBICA_AAB_1"
AUX_NAME = "flair_2x2x4mm"
LABEL_NAME = "whole_tumour.nii.gz"
SCALE = (2, 2, 4)
FULL_SHAPE = (240, 240, 155)
QUICK_SHAPE = (128, 128, 64)  # a centred crop; starts are multiples of SCALE
TARGET_RATIO = 1.0
NNUNET_WORKER = REPO / "benchmarks" / "nnunet" / "predict_speed.py"
DEFAULT_NNUNET_PYTHON = "/tmp/segfuse-nnunet-venv/bin/python"
NNUNET_SETUP = "bash benchmarks/nnunet_hippocampus.sh --setup-only"

# The brats-like network when the YAML is absent (same fields as the YAML's).
BUILTIN_CONFIG: dict[str, Any] = {
    "data": {
        "aux": {
            AUX_NAME: {
                "scale": list(SCALE),
                "mapper": "conv",
                "fusion": "concat",
                "features": 16,
                "mapper_layers": 2,
                "dropout": 0.3,
                "norm": {"kind": "mr"},
            }
        },
        "labels": {0: "background", 1: "whole_tumour"},
        "target_spacing": [1.0, 1.0, 1.0],
        "primary_norm": {"kind": "mr"},
    },
    "model": {
        "mode": "3d",
        "encoder_depth": 5,
        "widen_factor": 0.5,
        "stem_kernel": 3,
        "norm": "instance",
        "decoder_channels": [128, 64, 32, 16, 16],
        "deep_supervision": True,
    },
    "training": {"patch_size": [96, 96, 64], "batch_size": 2},
    "inference": {"overlap": 0.5, "sw_batch_size": 2, "blend": "gaussian"},
}


def log(msg: str) -> None:
    print(f"[inference_speed] {msg}", file=sys.stderr, flush=True)


# -- inputs ------------------------------------------------------------------------------


def segfuse_config(path: Path | None, roi: list[int] | None, overlap: float, sw_batch_size: int):
    """The run config (YAML when present, else built-in) with the benchmark's window settings."""
    from segfuse.config import config_from_dict, load_config

    overrides = [
        f"inference.overlap={overlap}",
        f"inference.sw_batch_size={sw_batch_size}",
        "inference.mirror_axes=[]",
        "inference.blend=gaussian",
        "training.device=cpu",
        "data.labels={0: background, 1: whole_tumour}",
    ]
    if roi:
        overrides.append(f"inference.roi_size={list(roi)}")
    if path is not None and path.is_file():
        cfg = load_config(path, overrides)
        return cfg, str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    cfg = config_from_dict(BUILTIN_CONFIG)
    cfg.inference.overlap, cfg.inference.sw_batch_size = overlap, sw_batch_size
    if roi:
        cfg.inference.roi_size = list(roi)
    return cfg, "built-in (brats-like: widen 0.5, stem 3, depth 5, decoder [128, 64, 32, 16, 16])"


def write_inputs(case_dir: Path, shape: tuple[int, ...], work: Path) -> tuple[Path, Path, Path | None, str]:
    """T1, 2×2×4 FLAIR and (when the case has one) whole-tumour label NIfTI files of ``shape`` in ``work``.

    Real data when present. Only nnU-Net's planning reads the label (fingerprint statistics).
    """
    import nibabel as nib
    import numpy as np

    aux_shape = tuple(-(-n // s) for n, s in zip(shape, SCALE, strict=True))
    t1_path, flair_path = work / "t1.nii.gz", work / f"{AUX_NAME}.nii.gz"
    real_t1, real_flair = case_dir / "t1.nii.gz", case_dir / f"{AUX_NAME}.nii.gz"
    real_label = case_dir / LABEL_NAME
    if real_t1.is_file() and real_flair.is_file():
        t1, flair = nib.load(real_t1), nib.load(real_flair)
        label = nib.load(real_label) if real_label.is_file() else None
        full = tuple(t1.shape)
        if shape != full:
            # Centred crop whose start is a multiple of the scale keeps the grids edge-aligned.
            start = [((n - m) // 2) // s * s for n, m, s in zip(full, shape, SCALE, strict=True)]
            crop = tuple(slice(a, a + m) for a, m in zip(start, shape, strict=True))
            t1 = t1.slicer[crop]
            label = label.slicer[crop] if label is not None else None
            flair = flair.slicer[
                tuple(slice(a // s, a // s + m) for a, s, m in zip(start, SCALE, aux_shape, strict=True))
            ]
        nib.save(nib.Nifti1Image(np.asarray(t1.dataobj, dtype=np.float32), t1.affine, t1.header), t1_path)
        nib.save(nib.Nifti1Image(np.asarray(flair.dataobj, dtype=np.float32), flair.affine, flair.header), flair_path)
        label_path = None
        if label is not None:
            label_path = work / "label.nii.gz"
            header = label.header.copy()
            header.set_data_dtype(np.uint8)
            nib.save(
                nib.Nifti1Image((np.asarray(label.dataobj) > 0).astype(np.uint8), label.affine, header), label_path
            )
        source = f"real BraTS case {case_dir.name}" + ("" if shape == full else f", centred crop {shape}")
        return t1_path, flair_path, label_path, source
    rng = np.random.default_rng(0)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(rng.normal(size=shape).astype(np.float32), affine), t1_path)
    nib.save(nib.Nifti1Image(rng.normal(size=aux_shape).astype(np.float32), np.diag([*SCALE, 1.0])), flair_path)
    return t1_path, flair_path, None, f"random normal data (no BraTS case at {case_dir})"


# -- workers (one per subprocess) ---------------------------------------------------------


def _timed(fn, repeats: int) -> tuple[float, list[float], list[float]]:
    """Warm-up wall time, then wall and CPU (user + system, all threads) seconds of each timed call.

    CPU seconds barely change when other jobs share the machine; wall seconds do.
    """
    start = time.perf_counter()
    fn()
    warm = time.perf_counter() - start
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return warm, times, cpu


def _profile(fn, rows: int = 15) -> list[dict[str, Any]]:
    """Self CPU time of the top operators of one call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [
        {
            "op": e.key,
            "calls": e.count,
            "self_s": round(e.self_cpu_time_total / 1e6, 3),
            "share_pct": round(100 * e.self_cpu_time_total / total, 1),
        }
        for e in events[:rows]
    ]


def worker_segfuse(spec: dict[str, Any]) -> dict[str, Any]:
    import dataclasses

    from segfuse.data.preprocess import prepare_case
    from segfuse.inference.case import case_from_paths, predict_case
    from segfuse.inference.engine import predict_prepared
    from segfuse.inference.model import LoadedModel, load_model

    stages: dict[str, list[float]] = {"window+network": [], "read+preprocess": []}

    def timed_stage(name, fn):
        def wrapped(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                stages[name].append(time.perf_counter() - start)

        return wrapped

    @dataclasses.dataclass
    class TimedModel(LoadedModel):
        """The loaded model whose network stage (windowing + network) is timed."""

        def probabilities(self, prepared, *, mirror_axes, progress=False):
            return timed_stage("window+network", super().probabilities)(
                prepared, mirror_axes=mirror_axes, progress=progress
            )

    def timed_predict_case(checkpoint, case, out, mirror):
        # as predict_case(checkpoint, ...): the checkpoint is loaded on every call; the two stages are timed
        # through predict_case's public hooks (its model's probabilities, its prepare)
        loaded = load_model(checkpoint)
        model = TimedModel(**{f.name: getattr(loaded, f.name) for f in dataclasses.fields(LoadedModel)})
        prepare = timed_stage("read+preprocess", lambda c: prepare_case(c, model.preprocessing, with_label=False))
        return predict_case(model, case, out, mirror=mirror, prepare=prepare)

    case = case_from_paths(spec["t1"], {AUX_NAME: spec["flair"]}, case_id="bench")
    out = Path(spec["work"]) / f"seg_{os.getpid()}.nii.gz"
    mirror = [0, 1, 2] if spec["tta"] else False
    warm, times, cpu = _timed(lambda: timed_predict_case(spec["checkpoint"], case, out, mirror), spec["repeats"])
    result = {
        "warmup_s": warm,
        "times_s": times,
        "cpu_s": cpu,
        "stages_s": {k: v[1:] for k, v in stages.items()},  # the warm-up call dropped
        "stages_warmup_s": {k: v[0] for k, v in stages.items()},
    }
    model = load_model(spec["checkpoint"])
    result["parameters"] = sum(p.numel() for p in model.net.parameters())
    result["output_dtype"] = str(__import__("nibabel").load(out).get_data_dtype())
    if spec["profile"]:
        prepared = prepare_case(case, model.preprocessing, with_label=False)
        result["profile"] = _profile(lambda: predict_prepared(model.net, model.cfg, prepared, mirror_axes=mirror or []))
    return result


def worker_monai(spec: dict[str, Any]) -> dict[str, Any]:
    import itertools

    import nibabel as nib
    import numpy as np
    import torch
    import torch.nn.functional as F
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import FlexibleUNet

    def zscore(path: str) -> torch.Tensor:
        array = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        mask = array != 0
        if mask.any():
            array = (array - array[mask].mean()) / (array[mask].std() + 1e-8)
        return torch.from_numpy(array)[None, None]

    t1, flair = zscore(spec["t1"]), zscore(spec["flair"])
    torch.manual_seed(0)
    net = FlexibleUNet(in_channels=2, out_channels=2, backbone="resnet18", spatial_dims=3, pretrained=False).eval()
    flips = [[a + 2 for a in c] for k in range(4) for c in itertools.combinations(range(3), k)] if spec["tta"] else [[]]

    def predictor(x: torch.Tensor) -> torch.Tensor:
        # The same mirror TTA as segfuse's: every flip combination, un-flipped, averaged.
        total = None
        for dims in flips:
            pred = torch.softmax(net(torch.flip(x, dims) if dims else x).float(), dim=1)
            pred = torch.flip(pred, dims) if dims else pred
            total = pred if total is None else total + pred
        return total / len(flips)

    def run() -> torch.Tensor:
        with torch.no_grad():
            up = F.interpolate(flair, size=tuple(t1.shape[2:]), mode="trilinear", align_corners=False)
            return sliding_window_inference(
                torch.cat([t1, up], dim=1),
                spec["roi"],
                spec["sw_batch_size"],
                predictor,
                overlap=spec["overlap"],
                mode="gaussian",
                sigma_scale=0.125,
                padding_mode="constant",
                cval=0.0,
            )

    warm, times, cpu = _timed(run, spec["repeats"])
    result = {"warmup_s": warm, "times_s": times, "cpu_s": cpu, "parameters": sum(p.numel() for p in net.parameters())}
    if spec["profile"]:
        result["profile"] = _profile(run)
    return result


def worker(spec: dict[str, Any]) -> None:
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    result = (worker_segfuse if spec["method"] == "segfuse" else worker_monai)(spec)
    result["torch_threads"] = torch.get_num_threads()
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps(result))


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    load = os.getloadavg()[0]
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['method']} worker failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_average_1min"] = [load, os.getloadavg()[0]]
    return result


def run_nnunet_worker(python: str, verb: str, args: list[str], work: Path, out: Path) -> dict[str, Any]:
    """``benchmarks/nnunet/predict_speed.py VERB`` in nnU-Net's own interpreter; its JSON from ``out``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of segfuse on nnU-Net's path
    load = os.getloadavg()[0]
    proc = subprocess.run(
        [python, str(NNUNET_WORKER), verb, "--work", str(work), "--out", str(out), *args],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"nnU-Net {verb} {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    result["load_average_1min"] = [load, os.getloadavg()[0]]
    return result


def nnunet_xyz(plan: dict[str, Any], sizes: list[int]) -> list[int]:
    """Sizes in nnU-Net's axis order (a patch, a preprocessed shape) on the T1 file's voxel axes (those of ``--roi``).

    nnU-Net reads NIfTI with SimpleITK (array axes z, y, x: the file's axes reversed), then applies
    ``transpose_forward``; its patch is in that order.
    """
    xyz = [0, 0, 0]
    for axis, size in zip(plan["transpose_forward"], sizes, strict=True):
        xyz[2 - axis] = size
    return xyz


def run_nnunet(args: argparse.Namespace, base: dict[str, Any], label: Path | None, work: Path) -> dict[str, Any]:
    """Plan, build and time nnU-Net v2's predictor, mirroring off and on, each timing in its own process."""
    python = args.nnunet_python
    if not python:
        return {"status": "skipped: --nnunet-python is empty"}
    if not Path(python).is_file():
        return {"status": f"skipped: no nnU-Net interpreter at {python} (set it up with `{NNUNET_SETUP}`)"}
    common = ["--processes", str(args.nnunet_processes)]
    result: dict[str, Any] = {
        "status": "measured",
        "python": python,
        "worker": str(NNUNET_WORKER.relative_to(REPO)),
        "tile_step_size": 0.5,
        "use_gaussian": True,
        "perform_everything_on_device": False,
        "processes_preprocessing_export": args.nnunet_processes,
    }
    try:
        log(f"nnU-Net: fingerprint + {args.nnunet_planner} + untrained 3d_fullres model folder")
        prepare = ["--t1", base["t1"], "--flair", base["flair"], "--planner", args.nnunet_planner, *common]
        prepare += ["--label", str(label)] if label is not None else []
        plan = result["plan"] = run_nnunet_worker(python, "prepare", prepare, work, work / "prepare.json")
        plan["patch_size_xyz"] = nnunet_xyz(plan, plan["patch_size"])
        mirror_repeats = args.repeats if args.nnunet_mirroring_repeats is None else args.nnunet_mirroring_repeats
        mirror_warmups = args.nnunet_mirroring_warmups
        if mirror_warmups is None:
            mirror_warmups = 0 if args.quick else 1
        # --quick: mirroring on (8 passes per window) is one timed call without a warm-up call before it
        for mirroring, repeats, warmups in (("off", args.repeats, 1), ("on", mirror_repeats, mirror_warmups)):
            log(
                f"nnU-Net: mirroring {mirroring}, {warmups} warm-up + {repeats} run(s), "
                f"patch {plan['patch_size_xyz']} (xyz)"
            )
            timing = ["--mirroring", mirroring, "--repeats", str(repeats), "--warmups", str(warmups)]
            timing += ["--threads", str(args.threads), *common]
            row = run_nnunet_worker(python, "time", timing, work, work / f"time_{mirroring}.json")
            result[f"mirroring_{mirroring}"] = row
            log(f"nnU-Net: mirroring {mirroring} {[round(t, 1) for t in row['times_s']]} s")
    except (RuntimeError, json.JSONDecodeError) as error:
        log(str(error))
        result["status"] = f"failed: {str(error).splitlines()[0]}"
        result["error"] = str(error)
    return result


# -- report -------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    from segfuse.machine import machine_info as segfuse_machine_info

    return {**segfuse_machine_info(), "nice": os.nice(0)}


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def _window(size: list[int]) -> str:
    return "×".join(str(n) for n in size)


def nnunet_rows(nnunet: dict[str, Any], modes: tuple[str, ...], ref: float) -> list[str]:
    """Table rows of nnU-Net's predictor (mirroring off/on), the ratio to MONAI's median ``ref``."""
    if nnunet.get("status") != "measured":
        return [f"| nnU-Net v2 predictor — {nnunet.get('status')} | — | — | — | — | — | — | — | — |"]
    plan, lines = nnunet["plan"], []
    for mode in modes:
        row = nnunet[f"mirroring_{mode}"]
        time_s = _median(row["times_s"])
        cpu = _median([a + b for a, b in zip(row["cpu_s"], row["cpu_children_s"], strict=True)])
        warm = "—" if row["warmup_s"] is None else f"{row['warmup_s']:.1f}"
        passes = "8 passes per window" if mode == "on" else "1 pass"
        lines.append(
            f"| nnU-Net v2 predictor, {plan['configuration']} plan, mirroring {mode} ({passes}; "
            f"{row['windows']} window(s) on the {_window(nnunet_xyz(plan, row['preprocessed_shape'][1:]))} "
            f"non-zero box; "
            f"files → preprocess → windows → export) | {_window(plan['patch_size_xyz'])} (its plan), batch 1 | "
            f"{time_s} | {cpu} | {len(row['times_s'])} | {warm} | "
            f"{row['peak_rss_mib']:.0f} (with workers {row['peak_rss_tree_mib']:.0f}) | {row['parameters']:,} | "
            f"{time_s / ref:.2f} |"
        )
    return lines


def table(
    rows: dict[str, dict[str, Any]],
    title: str,
    roi: list[int],
    sw_batch_size: int,
    nnunet: dict[str, Any] | None = None,
    nnunet_modes: tuple[str, ...] = (),
) -> str:
    seg, mon = rows["segfuse"], rows["monai"]
    full, bare, ref = _median(seg["times_s"]), _median(seg["stages_s"]["window+network"]), _median(mon["times_s"])
    window = f"{_window(roi)} (`--roi`), batch {sw_batch_size}"
    lines = [
        f"#### {title}",
        "",
        "| method | window (x×y×z) | s / volume (median) | CPU s (median) | runs | warm-up s | peak RSS MiB "
        "| parameters | ratio to MONAI |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| segfuse `predict_case` (checkpoint → read → preprocess → windows → write) | {window} | {full} | "
        f"{_median(seg['cpu_s'])} | {len(seg['times_s'])} | {seg['warmup_s']:.1f} | "
        f"{seg['peak_rss_mib']:.0f} | {seg['parameters']:,} | "
        f"{full / ref:.2f} |",
        f"| segfuse window+network only (`predict_prepared`, same runs) | {window} | {bare} | — | "
        f"{len(seg['stages_s']['window+network'])} | {seg['stages_warmup_s']['window+network']:.1f} | — | — | "
        f"{bare / ref:.2f} |",
        f"| MONAI `sliding_window_inference` + FlexibleUNet-resnet18, early fusion | {window} | {ref} | "
        f"{_median(mon['cpu_s'])} | {len(mon['times_s'])} | {mon['warmup_s']:.1f} | "
        f"{mon['peak_rss_mib']:.0f} | {mon['parameters']:,} | 1.00 |",
    ]
    if nnunet is not None:
        lines += nnunet_rows(nnunet, nnunet_modes, ref)
    return "\n".join(lines)


def nnunet_note(nnunet: dict[str, Any], threads: int) -> str:
    if nnunet.get("status") != "measured":
        return f"nnU-Net: {nnunet.get('status')}"
    plan, off = nnunet["plan"], nnunet["mirroring_off"]
    return (
        f"nnU-Net v2 {plan['nnunetv2']}: {plan['planner']} plan ({plan['plans_identifier']}, {plan['configuration']}) "
        f"of a one-case dataset (T1 + FLAIR upsampled trilinearly to the T1 grid); patch "
        f"{_window(plan['patch_size'])} in nnU-Net's axis order = {_window(plan['patch_size_xyz'])} (x×y×z); "
        f"{plan['network'].rsplit('.', 1)[-1]}, {plan['n_stages']} stages, features {plan['features_per_stage']}; "
        f"untrained weights. nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, device=cpu, "
        f"perform_everything_on_device=False), initialize_from_trained_model_folder + predict_from_files, "
        f"{nnunet['processes_preprocessing_export']} preprocessing and as many export process(es) "
        f"(nnUNet_n_proc_DA={nnunet['processes_preprocessing_export']}), torch threads {off['torch_threads']}"
        f"{'' if threads else ' (torch default)'}; CPU s include its worker processes; peak RSS is the predicting "
        f'process\'s ru_maxrss; "with workers" the peak of VmRSS summed over it and its worker processes, '
        f"sampled every 0.25 s."
    )


def verdict(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    seg, mon = rows["segfuse"], rows["monai"]
    ref = statistics.median(mon["times_s"])
    full = statistics.median(seg["times_s"]) / ref
    bare = statistics.median(seg["stages_s"]["window+network"]) / ref
    return {
        "ratio_full": round(full, 3),
        "ratio_window_network": round(bare, 3),
        "target": TARGET_RATIO,
        "met": full <= TARGET_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="1 run on a 128×128×64 crop (< 10 minutes)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method after one warm-up")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="segfuse run config (YAML)")
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE, help="folder with t1.nii.gz + flair_2x2x4mm.nii.gz")
    parser.add_argument("--roi", type=int, nargs=3, default=None, help="window (default: the config's roi)")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw-batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--tta", action="store_true", help="also a second table with mirror TTA (3 axes)")
    parser.add_argument("--tta-repeats", type=int, default=1, help="timed runs per method with TTA")
    parser.add_argument("--profile", action="store_true", help="torch.profiler top operators of one call each")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument(
        "--nnunet-python",
        default=DEFAULT_NNUNET_PYTHON,
        help=f"nnU-Net's own interpreter (made by `{NNUNET_SETUP}`); empty = skip nnU-Net",
    )
    parser.add_argument("--nnunet-processes", type=int, default=1, help="nnU-Net preprocessing/export processes")
    parser.add_argument("--nnunet-planner", default="ExperimentPlanner", help="nnU-Net experiment planner class")
    parser.add_argument(
        "--nnunet-mirroring-repeats",
        type=int,
        default=None,
        help="timed nnU-Net runs with mirroring (default --repeats)",
    )
    parser.add_argument(
        "--nnunet-mirroring-warmups",
        type=int,
        default=None,
        help="warm-up calls before the timed nnU-Net runs with mirroring (default 1; 0 with --quick)",
    )
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    if args.quick:
        args.repeats = 1

    import torch

    from segfuse.factory import build_model
    from segfuse.io.checkpoint import save_checkpoint

    command = "nice -n 19 " * (os.nice(0) >= 19) + shlex.join([Path(sys.executable).name, *sys.argv])
    shape = QUICK_SHAPE if args.quick else FULL_SHAPE
    cfg, config_source = segfuse_config(args.config, args.roi, args.overlap, args.sw_batch_size)
    roi = cfg.roi_size
    report: dict[str, Any] = {
        "benchmark": "benchmarks/inference_speed.py (issue 4 acceptance, issue 5 §3)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_info(),
        "config": config_source,
        "model": cfg.to_dict()["model"],
        "primary_shape": list(shape),
        "aux_shape": [-(-n // s) for n, s in zip(shape, SCALE, strict=True)],
        "aux_scale": list(SCALE),
        "roi_size": roi,
        "overlap": args.overlap,
        "sw_batch_size": args.sw_batch_size,
        "blend": "gaussian",
        "repeats": args.repeats,
        "results": {},
    }
    with tempfile.TemporaryDirectory(prefix="segfuse_speed_") as tmp:
        work = Path(tmp)
        t1, flair, label_file, report["data"] = write_inputs(args.case, shape, work)
        torch.manual_seed(0)
        net = build_model(cfg, in_channels=1)
        checkpoint = save_checkpoint(
            {"model": net.state_dict(), "config": cfg.to_dict(), "in_channels": 1}, work / "checkpoint.pt"
        )
        base = {
            "t1": str(t1),
            "flair": str(flair),
            "checkpoint": str(checkpoint),
            "work": str(work),
            "roi": roi,
            "overlap": args.overlap,
            "sw_batch_size": args.sw_batch_size,
            "threads": args.threads,
            "profile": args.profile,
        }
        runs = [("plain", False, args.repeats)] + ([("tta", True, args.tta_repeats)] if args.tta else [])
        for label, tta, repeats in runs:
            rows = report["results"][label] = {}
            for method in ("monai", "segfuse"):
                log(f"{label}: {method}, warm-up + {repeats} run(s) on {shape}")
                rows[method] = run_worker({**base, "method": method, "tta": tta, "repeats": repeats})
                log(f"{label}: {method} {[round(t, 1) for t in rows[method]['times_s']]} s")
            report[f"verdict_{label}"] = verdict(rows)
        (work / "nnunet").mkdir()
        report["nnunet"] = run_nnunet(args, base, label_file, work / "nnunet")

    machine = report["machine"]
    print(
        f"\n### Inference speed: {report['primary_shape']} primary + {report['aux_shape']} FLAIR (2×2×4), "
        f"{report['data']}\n"
    )
    nnunet = report["nnunet"]
    print(
        table(
            report["results"]["plain"],
            "Without test-time augmentation (nnU-Net: mirroring off and on)",
            roi,
            args.sw_batch_size,
            nnunet,
            ("off", "on"),
        )
    )
    if args.tta:
        print()
        print(
            table(
                report["results"]["tta"],
                "Mirror TTA over 3 axes (8 passes per window), every method",
                roi,
                args.sw_batch_size,
                nnunet,
                ("on",),
            )
        )
    v = report["verdict_plain"]
    print(
        f"\nTarget segfuse ≤ {TARGET_RATIO:.1f}× MONAI's time: {'MET' if v['met'] else 'MISSED'} "
        f"(full predict_case {v['ratio_full']:.2f}×; window+network alone {v['ratio_window_network']:.2f}×)"
    )
    print(
        f"\nroi {roi}, overlap {args.overlap}, sw_batch_size {args.sw_batch_size}, gaussian blending; "
        f"segfuse config: {config_source}"
    )
    print(nnunet_note(nnunet, args.threads))
    print(
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
        f"({report['results']['plain']['segfuse']['torch_threads']} threads), MONAI {machine['monai']}, "
        f"Python {machine['python']}, nice {machine['nice']}; date {report['date']}"
    )
    print(f"Command: `{command}`")
    if args.profile:
        for method in ("segfuse", "monai"):
            print(f"\nProfile, {method} (self CPU time, top operators):")
            for row in report["results"]["plain"][method]["profile"]:
                print(f"  {row['share_pct']:5.1f} %  {row['self_s']:8.2f} s  {row['calls']:6d}×  {row['op']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
