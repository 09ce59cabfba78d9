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
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from segfuse import __version__

__all__ = ["VERBS", "Verb", "build_parser", "main"]

PROG = "segfuse"
EXIT_USAGE = 2
EXIT_FAILURE = 1


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
    parser.add_argument("--mode", choices=("2d", "3d"), default="3d", help="train on 2D slices or 3D patches")
    parser.add_argument("--memory-gb", type=float, default=4.0, help="training memory budget in GiB (default: 4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _plan_run(args: argparse.Namespace) -> int:
    from segfuse.data.plan import plan_dataset

    _, report = plan_dataset(
        args.dataset,
        primary=args.primary,
        aux=args.aux,
        mode=args.mode,
        memory_budget_gb=args.memory_gb,
        out=args.out,
        progress=not args.no_progress,
    )
    print(report.table())
    print(f"wrote {args.out}; edit it, then run: segfuse train --config {args.out}")
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
        "--labels",
        type=Path,
        default=None,
        metavar="FILE",
        help="the label set: a dataset.json or a run's config.yaml (default: the labels segfuse predict "
        "recorded in the prediction folder, else the values found in the references)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _evaluate_run(args: argparse.Namespace) -> int:
    from segfuse.evaluation.evaluate import evaluate
    from segfuse.evaluation.labelset import labels_from_file

    labels = labels_from_file(args.labels) if args.labels is not None else None
    result = evaluate(
        args.pred, args.ref, args.out, labels=labels, tolerance_mm=args.tolerance_mm, progress=not args.no_progress
    )
    print(result.table())
    print(f"wrote {result.out_dir / 'per_case.csv'}, summary.json and dice_boxplot.png")
    return 0


# ------------------------------------------------------------------- predict


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file (or a run folder)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", type=Path, help="one case: the primary scan (NIfTI, NRRD, MHA or DICOM folder)")
    source.add_argument("--dataset", type=Path, help="many cases: a dataset folder or a CSV/YAML manifest")
    parser.add_argument(
        "--aux", action="append", default=[], metavar="NAME=PATH", help="an auxiliary scan of the --image case"
    )
    parser.add_argument("--out", type=Path, required=True, help="label file for --image; output folder for --dataset")
    parser.add_argument("--probabilities", action="store_true", help="also write the probability maps")
    parser.add_argument("--qc", action="store_true", help="also write QC pictures (PNG)")
    parser.add_argument("--mirror", action="store_true", help="mirror test-time augmentation on every axis")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    parser.add_argument("--resume", action="store_true", help="--dataset: skip cases finished with unchanged outputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _predict_run(args: argparse.Namespace) -> int:
    from segfuse.inference.predict import case_from_paths, predict, predict_case

    mirror = True if args.mirror else None
    if args.image is not None:
        if args.resume:
            raise ValueError("--resume applies to --dataset runs only")
        if any("=" not in a for a in args.aux):
            raise ValueError(f"--aux must look like NAME=PATH, got {args.aux}")
        aux = dict(a.split("=", 1) for a in args.aux)
        result = predict_case(
            args.checkpoint,
            case_from_paths(args.image, aux),
            args.out,
            save_probabilities=args.probabilities,
            qc_path=True if args.qc else None,
            device=args.device,
            mirror=mirror,
            progress=not args.no_progress,
        )
        print("wrote " + ", ".join(str(p) for p in result.outputs().values()))
        return 0
    if args.aux:
        raise ValueError("--aux applies to --image; a --dataset names its auxiliaries itself")
    batch = predict(
        args.checkpoint,
        args.dataset,
        args.out,
        resume=args.resume,
        save_probabilities=args.probabilities,
        qc=args.qc,
        device=args.device,
        mirror=mirror,
        progress=not args.no_progress,
    )
    print(batch.summary())
    return 0 if batch.ok else 1  # 1: some cases failed (2 is kept for bad input)


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


#: verb name → :class:`Verb`. Add a verb by adding one entry here.
# --------------------------------------------------------------------- train


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="run config YAML (from `segfuse plan` or configs/)")
    parser.add_argument(
        "overrides", nargs="*", metavar="SECTION.KEY=VALUE", help="config overrides, e.g. training.iterations=500"
    )
    parser.add_argument("--run-dir", type=Path, default=None, help="run folder (default: output_dir/name)")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue an interrupted run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _train_run(args: argparse.Namespace) -> int:
    from segfuse.config import load_config
    from segfuse.training.loop import train

    if args.resume is not None:
        if args.config is not None or args.overrides:
            raise ValueError("--resume continues a run with the config saved in it; drop --config and overrides")
        result = train(run_dir=args.resume, resume=True, progress=not args.no_progress)
    else:
        if args.config is None:
            raise ValueError("train needs --config FILE (write one with `segfuse plan`), or --resume RUN_DIR")
        cfg = load_config(args.config, args.overrides)
        result = train(cfg, run_dir=args.run_dir, progress=not args.no_progress)
    if result.interrupted:
        print(f"stopped at iteration {result.iteration}; continue with: segfuse train --resume {result.run_dir}")
        return 130
    print(f"finished {result.iteration} iterations; best validation mean Dice {result.best_metric:.4f}")
    print(f"run folder: {result.run_dir} (checkpoint_best.pt, metrics.csv, training_curve.png)")
    return 0


# ---------------------------------------------------------------------- demo


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default: demo_output)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "overrides", nargs="*", metavar="SECTION.KEY=VALUE", help="config overrides, e.g. training.iterations=60"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _demo_run(args: argparse.Namespace) -> int:
    from segfuse.demo import run_demo

    run_demo(args.out, device=args.device, overrides=args.overrides, progress=not args.no_progress)
    return 0


VERBS: dict[str, Verb] = {
    "demo": Verb(
        help="train, predict and evaluate on the bundled hippocampus sample (a few minutes on a CPU)",
        add_arguments=_demo_arguments,
        run=_demo_run,
    ),
    "plan": Verb(
        help="fingerprint a dataset and write an editable plan: spacing, patch, batch, normalisation, aux scales",
        add_arguments=_plan_arguments,
        run=_plan_run,
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
