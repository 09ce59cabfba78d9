"""nnU-Net v2's predictor on one BraTS case, timed (issue 5 §3). Called by ``benchmarks/inference_speed.py``.

Runs inside nnU-Net's own virtual environment (``bash benchmarks/nnunet_hippocampus.sh --setup-only`` makes it
at ``/tmp/segfuse-nnunet-venv``), never segfuse's: it imports only nnunetv2, torch, numpy, nibabel and the
standard library. nnU-Net's folders (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``) are always set
to ``<work>/nnUNet_*``, whatever the caller's environment says.

Verbs:

``prepare --t1 T1 --flair FLAIR [--label LABEL] --work DIR``
    Writes a one-case nnUNet_raw dataset (``Dataset990_SegfuseSpeed``) with two channels: the T1 and the FLAIR
    upsampled trilinearly to the T1 grid (``torch.nn.functional.interpolate``, ``align_corners=False``: the
    early-fusion input MONAI gets in ``inference_speed.py``; nnU-Net needs every channel on one grid), saved
    with the T1's header. The label (whole tumour) only feeds the fingerprint's foreground intensity
    statistics, which the z-score normalisation of MRI channels does not use; without one, the voxels above
    the T1's 95th percentile stand in. Then nnU-Net's own fingerprint extraction (with its dataset integrity
    check) and experiment planner (``--planner``, default ``ExperimentPlanner``, the planner
    ``nnUNetv2_plan_experiment`` uses by default) make the plans; no preprocessing. The 3d_fullres network is
    built untrained by ``nnUNetTrainer`` (``get_trainer_from_args`` +
    ``build_network_architecture``, as ``nnUNetTrainer.initialize`` does; weights do not change the time) and
    saved by ``nnUNetTrainer.save_checkpoint`` as ``fold_0/checkpoint_final.pth`` next to ``dataset.json`` and
    ``plans.json``: nnU-Net's model-folder layout. Writes the plan summary as JSON.

``time --work DIR --mirroring on|off [--repeats N] [--warmups 0|1] [--threads T]``
    One warm-up call (none with ``--warmups 0``), then ``--repeats`` timed calls. One call is the whole prediction path:
    ``nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=..., perform_everything_on_device=False,
    device=cpu)``, ``initialize_from_trained_model_folder`` (checkpoint read, network rebuilt) and
    ``predict_from_files`` (read both channels, crop to the non-zero box, z-score, sliding window with the planned
    patch, resample/export of the label map as NIfTI). Mirroring is nnU-Net's test-time augmentation over the
    checkpoint's axes (0, 1, 2 for 3d: 8 passes per window). Preprocessing and export each run in
    ``--processes`` background processes (default 1; ``nnUNet_n_proc_DA`` is set to the same count). Writes the
    times, CPU seconds (this process and, apart, its reaped worker processes), peak RSS (``ru_maxrss`` of this
    process; apart, the peak of VmRSS summed over this process and its workers, sampled every 0.25 s), the
    sliding-window stage alone, the window count and the torch threads.

Run each ``time`` in its own process, so that each peak RSS is its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

DATASET_ID = 990
DATASET = f"Dataset{DATASET_ID:03d}_SegfuseSpeed"
CASE = "SPEED_000"
CONFIGURATION = "3d_fullres"
TRAINER = "nnUNetTrainer"
FOLD = 0


def set_nnunet_env(work: Path, processes: int, threads: int) -> None:
    """nnU-Net's folders inside ``work``; worker-process and thread counts for the spawned workers too."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(work / name)
    os.environ["nnUNet_n_proc_DA"] = str(processes)  # noqa: SIM112 (nnU-Net's own names)
    os.environ["nnUNet_compile"] = "f"  # noqa: SIM112 (no torch.compile on CPU)
    if threads:
        # spawned preprocessing/export workers start a fresh torch; these make them use the same count
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(threads)


def image_files(work: Path) -> list[str]:
    images = work / "nnUNet_raw" / DATASET / "imagesTr"
    return [str(images / f"{CASE}_0000.nii.gz"), str(images / f"{CASE}_0001.nii.gz")]


def write_raw_dataset(t1_path: Path, flair_path: Path, label_path: Path | None, work: Path) -> dict[str, Any]:
    """``nnUNet_raw/Dataset990_SegfuseSpeed``: T1 + FLAIR upsampled to the T1 grid, one case."""
    import nibabel as nib
    import numpy as np
    import torch
    import torch.nn.functional as F

    root = work / "nnUNet_raw" / DATASET
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    t1 = nib.load(t1_path)
    t1_array = np.asarray(t1.dataobj, dtype=np.float32)
    flair = torch.from_numpy(np.asarray(nib.load(flair_path).dataobj, dtype=np.float32))[None, None]
    up = F.interpolate(flair, size=t1_array.shape, mode="trilinear", align_corners=False)[0, 0].numpy()
    header = t1.header.copy()
    header.set_data_dtype(np.float32)
    t1_out, flair_out = image_files(work)
    nib.save(nib.Nifti1Image(t1_array, t1.affine, header), t1_out)
    nib.save(nib.Nifti1Image(up, t1.affine, header), flair_out)
    if label_path is not None:
        label = np.asarray(nib.load(label_path).dataobj) > 0
        label_source = str(label_path)
    else:
        label = t1_array > np.percentile(t1_array[t1_array != 0], 95) if (t1_array != 0).any() else t1_array > 0
        label_source = "stand-in: T1 above its 95th percentile (no label given)"
    label_header = t1.header.copy()
    label_header.set_data_dtype(np.uint8)
    nib.save(nib.Nifti1Image(label.astype(np.uint8), t1.affine, label_header), root / "labelsTr" / f"{CASE}.nii.gz")
    meta = {
        "name": "segfuse inference-speed case (T1 + FLAIR upsampled to the T1 grid)",
        "channel_names": {"0": "T1", "1": "FLAIR"},
        "labels": {"background": 0, "whole_tumour": 1},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return {"shape": list(t1_array.shape), "flair_shape": list(flair.shape[2:]), "label": label_source}


def plan_summary(plans: dict[str, Any]) -> dict[str, Any]:
    config = plans["configurations"][CONFIGURATION]
    arch = config["architecture"]
    kwargs = arch["arch_kwargs"]
    return {
        "plans_name": plans["plans_name"],
        "patch_size": config["patch_size"],
        "spacing": config["spacing"],
        "median_image_size_in_voxels": config["median_image_size_in_voxels"],
        "batch_size_planned": config["batch_size"],
        "normalization_schemes": config["normalization_schemes"],
        "use_mask_for_norm": config["use_mask_for_norm"],
        "transpose_forward": plans["transpose_forward"],
        "network": arch["network_class_name"],
        "n_stages": kwargs.get("n_stages"),
        "features_per_stage": kwargs.get("features_per_stage"),
        "strides": kwargs.get("strides"),
        "kernel_sizes": kwargs.get("kernel_sizes"),
        "n_conv_per_stage": kwargs.get("n_conv_per_stage", kwargs.get("n_blocks_per_stage")),
        "n_conv_per_stage_decoder": kwargs.get("n_conv_per_stage_decoder"),
        "configurations_planned": sorted(plans["configurations"]),
    }


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    import importlib.metadata

    import nnunetv2
    import torch
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
    )
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    stages: dict[str, float] = {}
    start = time.perf_counter()
    data = write_raw_dataset(args.t1, args.flair, args.label, args.work)
    stages["write_raw_dataset"] = time.perf_counter() - start

    start = time.perf_counter()
    extract_fingerprint_dataset(
        DATASET_ID,
        num_processes=args.processes,
        check_dataset_integrity=True,
        clean=True,
        verbose=False,
        show_progress_bar=False,
    )
    stages["fingerprint"] = time.perf_counter() - start

    start = time.perf_counter()
    planner = recursive_find_python_class(
        os.path.join(nnunetv2.__path__[0], "experiment_planning"),
        args.planner,
        current_module="nnunetv2.experiment_planning",
    )
    if planner is None:
        raise SystemExit(f"no nnU-Net planner class {args.planner!r}")
    plans, plans_identifier = plan_experiment_dataset(DATASET_ID, planner)
    stages["plan"] = time.perf_counter() - start
    if CONFIGURATION not in plans["configurations"]:
        raise SystemExit(f"the planner made no {CONFIGURATION} configuration: {sorted(plans['configurations'])}")

    # The untrained network, built the way nnUNetTrainer.initialize builds it (initialize itself also wants
    # preprocessed data, which the predictor does not need), saved by the trainer's own save_checkpoint.
    start = time.perf_counter()
    trainer = get_trainer_from_args(
        str(DATASET_ID), CONFIGURATION, FOLD, TRAINER, plans_identifier, device=torch.device("cpu")
    )
    torch.manual_seed(0)
    trainer.num_input_channels = determine_num_input_channels(
        trainer.plans_manager, trainer.configuration_manager, trainer.dataset_json
    )
    trainer.network = trainer.build_network_architecture(
        trainer.plans_manager,
        trainer.configuration_manager,
        trainer.num_input_channels,
        trainer.label_manager.num_segmentation_heads,
        trainer.enable_deep_supervision,
    )
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets inference_allowed_mirroring_axes
    save_json(trainer.plans_manager.plans, os.path.join(trainer.output_folder_base, "plans.json"), sort_keys=False)
    save_json(trainer.dataset_json, os.path.join(trainer.output_folder_base, "dataset.json"), sort_keys=False)
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    stages["build_and_save_network"] = time.perf_counter() - start

    model_dir = Path(trainer.output_folder_base)
    (args.work / "model_dir.txt").write_text(str(model_dir))
    return {
        "nnunetv2": importlib.metadata.version("nnunetv2"),
        "torch": torch.__version__,
        "planner": args.planner,
        "plans_identifier": plans_identifier,
        "configuration": CONFIGURATION,
        "trainer": TRAINER,
        "model_folder": str(model_dir),
        "data": data,
        **plan_summary(plans),
        "inference_allowed_mirroring_axes": list(trainer.inference_allowed_mirroring_axes),
        "parameters": sum(p.numel() for p in trainer.network.parameters()),
        "prepare_s": stages,
        "processes": args.processes,
    }


class TreeRss(threading.Thread):
    """Sum of VmRSS over this process and its descendants (Linux ``/proc``), sampled; the peak is kept.

    ``ru_maxrss`` of the reaped children is no measure of nnU-Net's workers: a spawned worker is forked before
    it execs, so its high-water mark starts at the parent's resident size at that moment.
    """

    def __init__(self, interval: float = 0.25):
        super().__init__(daemon=True)
        self.interval, self.peak_kib, self.done = interval, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            with contextlib.suppress(Exception):  # a sample lost is no reason to stop timing
                self.peak_kib = max(self.peak_kib, tree_rss_kib(os.getpid()))

    def stop(self) -> float:
        self.done.set()
        self.join()
        return self.peak_kib / 1024


def tree_rss_kib(root: int) -> int:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        except (OSError, ValueError):
            pass
        todo.extend(children.get(pid, []))
    return total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_predictor(args: argparse.Namespace) -> dict[str, Any]:
    import importlib.metadata

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    if args.threads:
        torch.set_num_threads(args.threads)
    sampler = TreeRss()
    sampler.start()
    model_dir = (args.work / "model_dir.txt").read_text().strip()
    mirroring = args.mirroring == "on"
    out_dir = args.work / f"predictions_mirroring_{args.mirroring}"
    stages: dict[str, list[float]] = {"initialize": [], "sliding_window": []}
    seen: dict[str, Any] = {}

    def call() -> None:
        predictor = nnUNetPredictor(
            tile_step_size=0.5,
            use_gaussian=True,
            use_mirroring=mirroring,
            perform_everything_on_device=False,
            device=torch.device("cpu"),
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
        start = time.perf_counter()
        predictor.initialize_from_trained_model_folder(
            model_dir, use_folds=(FOLD,), checkpoint_name="checkpoint_final.pth"
        )
        stages["initialize"].append(time.perf_counter() - start)
        inner_logits, inner_slicers = (
            predictor.predict_logits_from_preprocessed_data,
            predictor._internal_get_sliding_window_slicers,
        )

        def logits(data):  # the sliding window alone: windows, network (and mirrors), Gaussian blending
            seen["preprocessed_shape"] = list(data.shape)
            start = time.perf_counter()
            try:
                return inner_logits(data)
            finally:
                stages["sliding_window"].append(time.perf_counter() - start)

        def slicers(image_size):
            result = inner_slicers(image_size)
            seen["windows"] = len(result)
            return result

        predictor.predict_logits_from_preprocessed_data = logits
        predictor._internal_get_sliding_window_slicers = slicers
        predictor.predict_from_files(
            [image_files(args.work)],
            [str(out_dir / CASE)],
            save_probabilities=False,
            overwrite=True,
            num_processes_preprocessing=args.processes,
            num_processes_segmentation_export=args.processes,
        )
        seen["parameters"] = sum(p.numel() for p in predictor.network.parameters())
        seen["mirror_axes"] = list(predictor.allowed_mirroring_axes) if mirroring else None
        seen["patch_size"] = list(predictor.configuration_manager.patch_size)

    warm = None
    if args.warmups:
        start = time.perf_counter()
        call()
        warm = time.perf_counter() - start
    times, cpu, cpu_children = [], [], []
    for _ in range(args.repeats):
        start, start_cpu, start_children = time.perf_counter(), time.process_time(), _children_cpu()
        call()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        cpu_children.append(_children_cpu() - start_children)
    output = out_dir / f"{CASE}.nii.gz"
    if not output.is_file():
        raise SystemExit(f"nnU-Net wrote no {output}")
    import nibabel as nib

    return {
        "nnunetv2": importlib.metadata.version("nnunetv2"),
        "mirroring": mirroring,
        "warmup_s": warm,
        "times_s": times,
        "cpu_s": cpu,
        "cpu_children_s": cpu_children,
        "stages_s": {k: v[args.warmups :] for k, v in stages.items()},  # the warm-up call dropped
        "stages_warmup_s": {k: v[0] if args.warmups else None for k, v in stages.items()},
        **seen,
        "output_shape": list(nib.load(output).shape),
        "tile_step_size": 0.5,
        "use_gaussian": True,
        "perform_everything_on_device": False,
        "processes": args.processes,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        # ru_maxrss of the largest reaped worker: it counts the parent's pages at fork time (see TreeRss)
        "peak_rss_children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "peak_rss_tree_mib": sampler.stop(),  # VmRSS summed over this process and its workers, every 0.25 s
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("prepare", help="raw dataset, fingerprint, plan, untrained model folder")
    p.add_argument("--t1", type=Path, required=True)
    p.add_argument("--flair", type=Path, required=True)
    p.add_argument("--label", type=Path, default=None)
    p.add_argument("--planner", default="ExperimentPlanner", help="nnU-Net experiment planner class")
    t = sub.add_parser("time", help="time the predictor (one warm-up, then --repeats calls)")
    t.add_argument("--mirroring", choices=("on", "off"), required=True)
    t.add_argument("--repeats", type=int, default=1)
    t.add_argument("--warmups", type=int, choices=(0, 1), default=1, help="untimed warm-up calls first")
    t.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    for q in (p, t):
        q.add_argument("--work", type=Path, required=True, help="nnU-Net's folders go here")
        q.add_argument("--processes", type=int, default=1, help="preprocessing/export worker processes")
        q.add_argument("--out", type=Path, default=None, help="write the JSON here (default: stdout)")
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    set_nnunet_env(args.work, args.processes, getattr(args, "threads", 0))
    # nnU-Net prints freely: keep stdout for the JSON
    with contextlib.redirect_stdout(sys.stderr):
        result = prepare(args) if args.verb == "prepare" else time_predictor(args)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
