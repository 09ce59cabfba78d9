"""The ``segfuse`` command line: thin verbs over importable library functions.

Each verb is two small functions and one entry in :data:`VERBS`:

* ``add_arguments(parser)`` declares the verb's options;
* ``run(args) -> int`` imports the library function it wraps (lazily, so
  ``segfuse --version`` does not load torch), calls it and returns an exit code.

Errors in the user's input (:class:`segfuse.io.errors.SegfuseInputError`, or any
``ValueError`` raised while checking inputs) are printed as one line,
``segfuse: error: <message>``, with exit code 2 and no traceback; a file that
cannot be written (disk full: :class:`segfuse.io.errors.SegfuseWriteError` or
any ``OSError``) likewise, with exit code 1. Every verb takes ``--geometry``
(see :mod:`segfuse.io.geometry_rules`).

Example:
    >>> main(["evaluate", "--pred", "preds/", "--ref", "labelsTs/", "--out", "eval/"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from segfuse import __version__

__all__ = ["VERBS", "Verb", "build_parser", "main"]

PROG = "segfuse"
EXIT_USAGE = 2
EXIT_FAILURE = 1


def _overrides_argument(parser: argparse.ArgumentParser, example: str) -> None:
    """The ``SECTION.KEY=VALUE`` config overrides every verb that reads a run config takes."""
    parser.add_argument(
        "overrides", nargs="*", metavar="SECTION.KEY=VALUE", help=f"config overrides, e.g. {example}"
    )


@dataclass(frozen=True)
class Verb:
    """One ``segfuse <verb>``: a one-line help, its options and what it runs."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------------- plan


def _plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path, help="dataset folder, its dataset.json, or a CSV/YAML manifest")
    parser.add_argument("--out", type=Path, required=True, help="where to write the plan (YAML run config)")
    parser.add_argument("--primary", default=None, help="primary modality name (default: the layout's first)")
    parser.add_argument(
        "--aux", nargs="*", default=None, metavar="NAME", help="auxiliary modalities (default: all the others)"
    )
    parser.add_argument(
        "--mode", choices=("auto", "2d", "3d"), default="auto",
        help="auto: what trains best in the budget here (3D, or 2.5D slices for large volumes); 2d: 2.5D slices",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="the device to plan (and time) for; auto: a GPU if torch sees one")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training-time budget in minutes (default: 30); sets training.max_minutes")
    parser.add_argument("--memory-gb", type=float, default=4.0,
                        help="CPU training memory limit in GiB (default: 4; on a GPU its free memory decides)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _plan_run(args: argparse.Namespace) -> int:
    from segfuse.training.budget import plan_for_budget

    _, report, budget = plan_for_budget(
        args.dataset,
        primary=args.primary,
        aux=args.aux,
        device=args.device,
        minutes=args.minutes,
        mode=args.mode,
        memory_budget_gb=args.memory_gb,
        out=args.out,
        progress=not args.no_progress,
    )
    print(report.table())
    rows = budget.lines()
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
    for warning in budget.warnings:
        print(f"WARNING: {warning}")
    print(f"wrote {args.out}; edit it, then run: segfuse train --config {args.out}")
    return 0


# ---------------------------------------------------------------- preprocess


def _preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="run config YAML (the one you will train with)")
    _overrides_argument(parser, "data.store=/scratch/store")
    parser.add_argument(
        "-j", "--workers", type=int, default=None,
        help="processes preparing cases (default: 1 for a small dataset, else the cores, at most 8)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _preprocess_run(args: argparse.Namespace) -> int:
    from segfuse.config import load_config
    from segfuse.data.store import preprocess

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"-j/--workers must be at least 1, got {args.workers}")
    cfg = load_config(args.config, args.overrides)
    _, report = preprocess(cfg, workers=args.workers, progress=not args.no_progress)
    print(report.summary())
    return 0


# ------------------------------------------------------------------ evaluate


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pred",
        type=Path,
        required=True,
        help="folder of predicted label images, or a CSV manifest with columns case_id,pred,ref",
    )
    parser.add_argument(
        "--ref", type=Path, default=None, help="folder of reference label images (omit with a manifest)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder for per_case.csv, summary.json, dice_boxplot.png"
    )
    parser.add_argument(
        "--tolerance-mm",
        type=float,
        default=1.0,
        help="boundary tolerance of the normalised surface Dice, in mm (default: 1.0)",
    )
    parser.add_argument(
        "--regions",
        nargs="+",
        default=None,
        metavar="REGION",
        help="score label regions instead of labels: 'brats' (whole_tumour=1,2,4 tumour_core=1,4 "
        "enhancing_tumour=4), NAME=V,V ... items, or a file holding them (a checkpoint, a run's config.yaml "
        "with data.regions, a YAML/JSON with regions, an nnU-Net dataset.json with list-valued labels)",
    )
    parser.add_argument(
        "--qc", action="store_true", help="also write QC pictures (qc/<case>.png): prediction, reference, errors"
    )
    parser.add_argument(
        "--labels",
        type=Path,
        default=None,
        metavar="FILE",
        help="the label set: a dataset.json or a run's config.yaml (default: the labels segfuse predict "
        "recorded in the prediction folder, else the values found in the references)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _evaluate_run(args: argparse.Namespace) -> int:
    from segfuse.data.regions import regions_from_arguments
    from segfuse.evaluation.evaluate import evaluate
    from segfuse.evaluation.labelset import labels_from_file

    regions = regions_from_arguments(args.regions) if args.regions else None
    labels = labels_from_file(args.labels) if args.labels is not None else None
    result = evaluate(
        args.pred, args.ref, args.out, labels=labels, regions=regions, tolerance_mm=args.tolerance_mm, qc=args.qc,
        progress=not args.no_progress,
    )
    print(result.table())
    print(f"wrote {result.out_dir / 'per_case.csv'}, summary.json and dice_boxplot.png")
    return 0


# ------------------------------------------------------------------- predict


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        required=True,
        help="checkpoint file, run folder, or folder of fold runs; repeat it to average several (soft ensemble)",
    )
    parser.add_argument(
        "--fallback",
        type=Path,
        action="append",
        default=[],
        metavar="CHECKPOINT",
        help="a model trained without some of the --checkpoint model's auxiliaries (checkpoint, run folder or folder "
        "of fold runs); a case lacking an auxiliary is predicted by the model that reads the most of what it has. "
        "Repeat it for other sets of auxiliaries",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", type=Path, help="one case: the primary scan (NIfTI, NRRD, MHA or DICOM folder)")
    source.add_argument("--dataset", type=Path, help="many cases: a dataset folder or a CSV/YAML manifest")
    parser.add_argument(
        "--aux", action="append", default=[], metavar="NAME=PATH", help="an auxiliary scan of the --image case"
    )
    parser.add_argument("--out", type=Path, required=True, help="label file for --image; output folder for --dataset")
    parser.add_argument("--probabilities", action="store_true", help="also write the probability maps")
    parser.add_argument("--qc", action="store_true", help="also write QC pictures (PNG)")
    parser.add_argument(
        "--labels-file",
        action="store_true",
        help="also write label names and colours for ITK-SNAP (labels_itksnap.txt) and Slicer (labels_slicer.ctbl) "
        "beside the output",
    )
    mirror = parser.add_mutually_exclusive_group()
    mirror.add_argument("--mirror", action="store_true", help="mirror test-time augmentation on every axis")
    mirror.add_argument("--no-mirror", action="store_true", help="no mirroring, whatever the checkpoint's config says")
    parser.add_argument("--overlap", type=float, default=None, help="window overlap in [0, 1) (default: config)")
    parser.add_argument(
        "--roi", type=int, nargs="+", default=None, metavar="N", help="sliding-window size per axis (default: config)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="windows per forward pass (default: config)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    parser.add_argument("--resume", action="store_true", help="--dataset: skip cases finished with unchanged outputs")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="--dataset: cases read ahead in background threads while the network runs, results written "
        "behind (default 1; 0: one case after the other; same outputs)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _predict_run(args: argparse.Namespace) -> int:
    from segfuse.inference.case import case_from_paths, predict_case
    from segfuse.inference.fallback import ModelChoice
    from segfuse.inference.model import load_model
    from segfuse.inference.options import set_inference_options
    from segfuse.inference.predict import predict

    mirror = True if args.mirror else False if args.no_mirror else None
    model = load_model(args.checkpoint, device=args.device)  # several checkpoints: an ensemble
    choice = ModelChoice.of(model, [load_model([f], device=args.device) for f in args.fallback])
    for member in choice.models:
        set_inference_options(member, overlap=args.overlap, roi=args.roi, batch_size=args.batch_size)
    if args.image is not None:
        if args.resume:
            raise ValueError("--resume applies to --dataset runs only")
        if any("=" not in a for a in args.aux):
            raise ValueError(f"--aux must look like NAME=PATH, got {args.aux}")
        aux = dict(a.split("=", 1) for a in args.aux)
        chosen, case, drop = choice.for_case(case_from_paths(args.image, aux))
        if chosen is not model:
            print(f"predicting with the fallback {', '.join(str(p) for p in chosen.checkpoints)}: the case has "
                  f"auxiliaries {sorted(case.aux) or 'none'}")
        result = predict_case(
            chosen,
            case,
            args.out,
            save_probabilities=args.probabilities,
            qc_path=True if args.qc else None,
            device=args.device,
            mirror=mirror,
            progress=not args.no_progress,
            drop_aux=drop,
            protected=choice.checkpoints,
        )
        print("wrote " + ", ".join(str(p) for p in result.outputs().values()))
        _write_label_tables(args, args.out.parent, model)
        return 0
    if args.aux:
        raise ValueError("--aux applies to --image; a --dataset names its auxiliaries itself")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    batch = predict(
        model,
        args.dataset,
        args.out,
        resume=args.resume,
        save_probabilities=args.probabilities,
        qc=args.qc,
        device=args.device,
        mirror=mirror,
        progress=not args.no_progress,
        workers=args.workers,
        fallbacks=choice.fallbacks,
    )
    print(batch.summary())
    _write_label_tables(args, args.out, model)
    return 0 if batch.ok else 1  # 1: some cases failed (2 is kept for bad input)


def _write_label_tables(args: argparse.Namespace, folder: Path, model) -> None:
    if args.labels_file:
        from segfuse.inference.label_outputs import write_label_tables_for

        paths = write_label_tables_for(model, folder)
        print("wrote " + " and ".join(str(p) for p in paths.values()))


# -------------------------------------------------------------------- ablate


def _ablate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint trained with modality dropout")
    parser.add_argument("--dataset", type=Path, required=True, help="labelled dataset folder or CSV/YAML manifest")
    parser.add_argument("--out", type=Path, required=True, help="output folder (ablation.csv, ablation.json, runs)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _ablate_run(args: argparse.Namespace) -> int:
    from segfuse.evaluation.ablate import ablate

    result = ablate(args.checkpoint, args.dataset, args.out, device=args.device, progress=not args.no_progress)
    print(result.table())
    print(f"wrote {result.out_dir / 'ablation.csv'} and ablation.json")
    return 0


# -------------------------------------------------------------------- export


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file (or a run folder)")
    parser.add_argument(
        "--format",
        choices=("onnx", "torchscript", "exported-program"),
        default="onnx",
        help="onnx (onnxruntime), torchscript (torch.jit.load) or exported-program (torch.export.load)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (the model and segfuse_export.json)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's exporter's choice)")
    parser.add_argument("--no-verify", action="store_true", help="skip the check against the eager network")


def _export_run(args: argparse.Namespace) -> int:
    from segfuse.inference.export import export_model

    result = export_model(args.checkpoint, args.out, fmt=args.format, opset=args.opset, verify=not args.no_verify)
    check = result.metadata["verification"]
    note = f"; checked: max |difference| {check['max_abs_difference']:.2g}" if check["checked"] else ""
    print(f"wrote {result.model_path} and {result.metadata_path}{note}")
    return 0


#: verb name → :class:`Verb`. Add a verb by adding one entry here.
# --------------------------------------------------------------------- train


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="run config YAML (from `segfuse plan` or configs/)")
    _overrides_argument(parser, "training.iterations=500")
    parser.add_argument("--run-dir", type=Path, default=None, help="run folder (default: output_dir/name)")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue an interrupted run")
    parser.add_argument(
        "--fold", type=int, default=None, metavar="K",
        help="cross-validation: train fold K of data.folds (default 5) into output_dir/name/fold_K, "
        "then predict its validation cases into fold_K/validation",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _train_run(args: argparse.Namespace) -> int:
    from segfuse.config import load_config
    from segfuse.evaluation.crossval import predict_validation
    from segfuse.training.loop import train

    if args.resume is not None:
        if args.config is not None or args.overrides or args.fold is not None:
            raise ValueError("--resume continues a run with its saved config; drop --config, --fold and overrides")
        result = train(run_dir=args.resume, resume=True, progress=not args.no_progress)
    else:
        if args.config is None:
            raise ValueError("train needs --config FILE (write one with `segfuse plan`), or --resume RUN_DIR")
        fold = [] if args.fold is None else [f"data.fold={args.fold}"]
        cfg = load_config(args.config, [*args.overrides, *fold])
        result = train(cfg, run_dir=args.run_dir, progress=not args.no_progress)
    if result.interrupted:
        print(f"stopped at iteration {result.iteration}; continue with: segfuse train --resume {result.run_dir}")
        return 130
    print(f"finished {result.iteration} iterations; best validation mean Dice {result.best_metric:.4f}")
    print(f"run folder: {result.run_dir} (checkpoint_best.pt, metrics.csv, training_curve.png, train.log)")
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 alone predicts
        return 0
    oof = predict_validation(result.run_dir, progress=not args.no_progress)  # None unless a fold run
    if oof is not None:
        print(f"out-of-fold predictions: {oof.summary()}")
        return 0 if oof.ok else 1
    return 0


# ---------------------------------------------------------------------- demo


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default: demo_output)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (prediction runs where training ran)")
    parser.add_argument(
        "--hippocampus",
        action="store_true",
        help="the single-modality demo on the bundled hippocampus sample instead of BraTS T1 + low-resolution FLAIR",
    )
    _overrides_argument(parser, "training.max_minutes=2")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _demo_run(args: argparse.Namespace) -> int:
    from segfuse.demo import run_demo

    sample = "hippocampus" if args.hippocampus else "brats"
    run_demo(args.out, sample=sample, device=args.device, overrides=args.overrides, progress=not args.no_progress)
    return 0


# ------------------------------------------------------------------ resample


def _resample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="the fine volume (NIfTI, NRRD, MHA or DICOM folder)")
    parser.add_argument(
        "--scale", type=int, nargs="+", required=True, metavar="S",
        help="integer downsampling factor per axis, e.g. 2 2 4 for 2x2x4 mm from 1 mm",
    )
    parser.add_argument("--out", type=Path, required=True, help="output file (.nii.gz, .nii, .nrrd or .mha)")


def _resample_run(args: argparse.Namespace) -> int:
    from segfuse.data.lowres import resample_file

    low = resample_file(args.image, args.out, args.scale)
    spacing = " x ".join(f"{s:g}" for s in low.spacing)
    print(f"wrote {args.out}: shape {low.shape}, spacing {spacing} mm (same field of view as {args.image})")
    return 0


# ---------------------------------------------------------------- cv-summary


def _cv_summary_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", type=Path, nargs="+", metavar="RUN_DIR", help="one folder of fold runs (fold_0, ...) per configuration"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (cv_summary.json, cv_per_case.csv)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="for out-of-fold predictions still missing (default: each run's training.device)")
    parser.add_argument("--tolerance-mm", type=float, default=1.0, help="surface Dice tolerance (default: 1.0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _cv_summary_run(args: argparse.Namespace) -> int:
    from segfuse.evaluation.crossval import cv_summary

    result = cv_summary(
        args.runs, args.out, device=args.device, tolerance_mm=args.tolerance_mm, progress=not args.no_progress
    )
    print(result.table())
    print(f"wrote {result.out_dir / 'cv_summary.json'}, cv_per_case.csv and one evaluation folder per configuration")
    return 0


# -------------------------------------------------------------------- config


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (
        ("show", "print the resolved config, every default filled in, as YAML"),
        ("check", "validate the config and its dataset (modalities, labels, folds); exit 2 naming the bad key"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("config", type=Path, help="run config YAML")
        action.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE", help="config overrides")


def _config_run(args: argparse.Namespace) -> int:
    import yaml

    from segfuse.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.action == "show":
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    from segfuse.data.check import check_config

    print(check_config(cfg))
    return 0


VERBS: dict[str, Verb] = {
    "demo": Verb(
        help="train with a low-resolution FLAIR on a bundled BraTS sample, predict, evaluate, and show what the "
        "FLAIR is worth (a few minutes on a CPU)",
        add_arguments=_demo_arguments,
        run=_demo_run,
    ),
    "plan": Verb(
        help="fingerprint a dataset, time candidate settings here and write an editable plan for a time budget",
        add_arguments=_plan_arguments,
        run=_plan_run,
    ),
    "preprocess": Verb(
        help="prepare every case once into the preprocessed store that train reads (-j N processes)",
        add_arguments=_preprocess_arguments,
        run=_preprocess_run,
    ),
    "train": Verb(
        help="train a FusionUNet from a run config; --resume continues an interrupted run",
        add_arguments=_train_arguments,
        run=_train_run,
    ),
    "evaluate": Verb(
        help="score predicted label images against references (Dice, IoU, HD95, NSD, volume)",
        add_arguments=_evaluate_arguments,
        run=_evaluate_run,
    ),
    "predict": Verb(
        help="segment scans with a checkpoint: label maps on the exact input grid, probabilities, QC pictures",
        add_arguments=_predict_arguments,
        run=_predict_run,
    ),
    "ablate": Verb(
        help="the value of each auxiliary: Dice with all, without each, and without any auxiliary",
        add_arguments=_ablate_arguments,
        run=_ablate_run,
    ),
    "resample": Verb(
        help="simulate a thick-slice acquisition: anti-alias smoothing, then a coarser grid over the same view",
        add_arguments=_resample_arguments,
        run=_resample_run,
    ),
    "cv-summary": Verb(
        help="score every fold's out-of-fold predictions together and compare configurations case by case",
        add_arguments=_cv_summary_arguments,
        run=_cv_summary_run,
    ),
    "config": Verb(
        help="show the resolved config with every default, or check it (exit 2 naming the bad key)",
        add_arguments=_config_arguments,
        run=_config_run,
    ),
    "export": Verb(
        help="export a checkpoint's network (ONNX, TorchScript, torch.export) with what prediction needs (JSON)",
        add_arguments=_export_arguments,
        run=_export_run,
    ),
}


# ---------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of :data:`VERBS`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Medical image segmentation with auxiliary scans fused at their native resolution.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, verb in VERBS.items():
        verb_parser = sub.add_parser(name, help=verb.help, description=verb.help)
        verb.add_arguments(verb_parser)
        verb_parser.add_argument(
            "--geometry",
            choices=("strict", "sform", "qform"),
            default="strict",
            help="NIfTI files whose qform and sform disagree: refuse them (strict, default) or use the "
            "sform / the qform (docs/reliability.md)",
        )
        verb_parser.set_defaults(run=verb.run)
    return parser


def _one_line(message: str) -> str:
    return " ".join(message.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the verb, return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        from segfuse.io.geometry_rules import geometry_rule

        with geometry_rule(getattr(args, "geometry", "strict")):
            return int(args.run(args))
    except ValueError as err:  # SegfuseInputError included: bad input, not a bug in segfuse
        print(f"{PROG}: error: {_one_line(str(err))}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # SegfuseWriteError included: disk full, permissions
        print(f"{PROG}: error: {_one_line(str(err))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
