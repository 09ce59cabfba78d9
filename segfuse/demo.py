"""``segfuse demo``: what a low-resolution auxiliary scan is worth, on a bundled BraTS sample.

The default demo uses ``segfuse/sample/brats`` (12 BraTS subjects, BraTS terms of
use, see its ``LICENSE.md``): the T1 at 2 mm is the primary, the FLAIR is a
thick-slice 4 × 4 × 8 mm acquisition that segfuse reads at that native resolution
(never upsampled to the T1 grid), the labels are whole tumour. The demo

1. trains a small 2.5D FusionUNet with modality dropout on 9 subjects for a few
   minutes (``segfuse/sample/demo.yaml``); 3 subjects are held back;
2. predicts the held-back subjects with the *last* checkpoint and evaluates them,
   once with the FLAIR and once without it, through
   :func:`segfuse.evaluation.ablate.ablate`;
3. prints per held-back subject the Dice with the FLAIR, without it and the
   difference, and writes one picture per subject: the T1, the FLAIR on its own
   grid (its thick voxels visible), the reference and both predictions.

``segfuse demo --hippocampus`` runs the older single-modality demo on the 24
bundled MSD hippocampus cases (6 held back): train, predict with QC pictures,
evaluate. Everything lands in one output folder.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segfuse.config import Config, load_config

if TYPE_CHECKING:
    from segfuse.evaluation.ablate import AblationResult

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
DEMO_CONFIG = SAMPLE_DIR / "demo.yaml"
HIPPOCAMPUS_CONFIG = SAMPLE_DIR / "demo_hippocampus.yaml"
SAMPLES = {"brats": DEMO_CONFIG, "hippocampus": HIPPOCAMPUS_CONFIG}
HIPPOCAMPUS_HELD_BACK = 6


@dataclass
class AuxValueRow:
    """Mean Dice over classes of one held-back case with and without the auxiliary."""

    case_id: str
    with_aux: float
    without_aux: float

    @property
    def difference(self) -> float:
        """``with_aux - without_aux``: what the auxiliary adds (positive: it helps)."""
        return self.with_aux - self.without_aux


@dataclass
class AuxValueTable:
    """Per-case Dice with and without one auxiliary, from an :class:`AblationResult`."""

    aux: str
    rows: list[AuxValueRow]

    @property
    def mean_with(self) -> float:
        return _nanmean([r.with_aux for r in self.rows])

    @property
    def mean_without(self) -> float:
        return _nanmean([r.without_aux for r in self.rows])

    def text(self) -> str:
        """The table the demo prints: one line per case, then the mean.

        Example:
            >>> t = AuxValueTable("flair", [AuxValueRow("a", 0.9, 0.5), AuxValueRow("b", 0.8, 0.4)])
            >>> print(t.text())
            held-back case  Dice with flair  without flair  difference
            a               0.900            0.500          +0.400
            b               0.800            0.400          +0.400
            mean            0.850            0.450          +0.400
        """
        header = ("held-back case", f"Dice with {self.aux}", f"without {self.aux}", "difference")
        lines = [header]
        for row in self.rows:
            lines.append((row.case_id, _fmt(row.with_aux), _fmt(row.without_aux), _fmt(row.difference, "{:+.3f}")))
        lines.append(("mean", _fmt(self.mean_with), _fmt(self.mean_without),
                      _fmt(self.mean_with - self.mean_without, "{:+.3f}")))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


@dataclass
class DemoResult:
    """Where the demo wrote its outputs and what it measured.

    Attributes:
        out_dir: the demo's output folder.
        mean_dice: mean Dice over classes and held-back cases (with every auxiliary).
        per_class: class name → mean Dice over the held-back cases.
        aux_value: per-case Dice with and without the auxiliary (``None`` without one).
        pictures: the comparison pictures (reference, with and without the auxiliary).
        seconds: wall time of the whole demo.
    """

    out_dir: Path
    mean_dice: float
    per_class: dict[str, float]
    aux_value: AuxValueTable | None = None
    pictures: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def _fmt(value: float, spec: str = "{:.3f}") -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return spec.format(round(value, 3) + 0.0)  # + 0.0: no "-0.000"


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _per_case_dice(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Case id → mean Dice over its classes (NaN classes skipped) from ``EvaluationResult.rows``."""
    by_case: dict[str, list[float]] = {}
    for row in rows:
        value = row["dice"]
        by_case.setdefault(str(row["case_id"]), []).append(float("nan") if value is None else float(value))
    return {case: _nanmean(values) for case, values in by_case.items()}


def aux_value_table(ablation: AblationResult, aux: str) -> AuxValueTable:
    """Per-case Dice with every auxiliary (variant ``all``) and with ``aux`` removed.

    Raises:
        ValueError: the ablation has no variant that removes exactly ``aux``.
    """
    full = next(r["variant"] for r in ablation.rows if not r["dropped"])
    without = next((r["variant"] for r in ablation.rows if r["dropped"] == [aux]), None)
    if without is None:
        raise ValueError(f"the ablation has no variant without {aux!r}: {[r['variant'] for r in ablation.rows]}")
    with_dice = _per_case_dice(ablation.evaluations[full].rows)
    without_dice = _per_case_dice(ablation.evaluations[without].rows)
    rows = [AuxValueRow(case, with_dice[case], without_dice.get(case, float("nan"))) for case in sorted(with_dice)]
    return AuxValueTable(aux, rows)


def demo_config(out_dir: Path, device: str = "auto", overrides: list[str] | None = None,
                sample: str = "brats") -> Config:
    """The demo's run config: the bundled ``sample``, its held-back cases, a CPU-sized schedule."""
    from segfuse.data.layouts import read_dataset
    from segfuse.sample import sample_data_path

    if sample not in SAMPLES:
        raise ValueError(f"no demo for sample {sample!r}; available: {sorted(SAMPLES)}")
    data = sample_data_path(sample)
    cfg = load_config(
        SAMPLES[sample],
        [f"data.dataset={data}", f"experiment.output_dir={out_dir}", f"training.device={device}", *(overrides or [])],
    )
    if sample == "hippocampus":
        cfg.data.val_cases = sorted(c.case_id for c in read_dataset(data).cases)[-HIPPOCAMPUS_HELD_BACK:]
    return cfg


def run_demo(out_dir: str | Path = "demo_output", *, sample: str = "brats", device: str = "auto",
             overrides: list[str] | None = None, progress: bool = True) -> DemoResult:
    """Train, then predict and evaluate the held-back cases (with and without the auxiliary).

    With an auxiliary (the BraTS sample) the held-back cases are predicted and
    evaluated by :func:`~segfuse.evaluation.ablate.ablate`, once with the auxiliary
    and once without (outputs in ``<out>/ablation/<variant>/``), and a comparison
    picture per case goes to ``<out>/comparison/``. Without one (the hippocampus
    sample) they are predicted with QC pictures (``<out>/predictions/``) and
    evaluated (``<out>/evaluation/``). Prediction runs on the device training ran on.

    Args:
        out_dir: output folder; its run folder is replaced, other files are overwritten.
        sample: ``"brats"`` (T1 + low-resolution FLAIR) or ``"hippocampus"``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        overrides: ``section.key=value`` config overrides (e.g. ``training.max_minutes=1``).
        progress: progress bars.
    """
    from segfuse.data.layouts import read_dataset
    from segfuse.training.loop import train

    started = time.perf_counter()
    out = Path(out_dir)
    cfg = demo_config(out, device, overrides, sample)
    aux_names = list(cfg.data.aux)
    dataset = read_dataset(cfg.data.dataset, primary=cfg.data.primary, aux=aux_names)
    held_ids = set(cfg.data.val_cases or [])
    held_back = replace(dataset, cases=[c for c in dataset.cases if c.case_id in held_ids])
    run_dir = out / cfg.experiment.name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo always starts afresh; its folder is its own
    with_aux = f" with the {', '.join(aux_names)} as auxiliary" if aux_names else ""
    print(f"segfuse demo: training on {len(dataset.cases) - len(held_back.cases)} cases of {cfg.data.dataset}"
          f"{with_aux} ({len(held_back.cases)} held back) -> {run_dir}")
    result = train(cfg, run_dir=run_dir, progress=progress)
    checkpoint = result.run_dir / "checkpoint_last.pt"  # the last weights: the held-back cases chose nothing
    # "auto" resolves to the same device in train and predict: prediction runs where training ran
    if aux_names:
        demo = _with_and_without(checkpoint, held_back, cfg, out, aux_names[0], progress)
        print(f"\nWhat the {aux_names[0]} is worth (model trained with modality dropout, {result.iteration} "
              "iterations; difference = with - without):")
        print(demo.aux_value.text())
    else:
        demo = _predict_and_evaluate(checkpoint, held_back, cfg, out, progress)

    demo.seconds = time.perf_counter() - started
    minutes, seconds = divmod(round(demo.seconds), 60)
    print(f"\nsegfuse demo: mean Dice {demo.mean_dice:.3f} on {len(held_back.cases)} held-back cases, "
          f"{minutes} min {seconds} s in all; outputs in {out}")
    print(f"  training curve: {run_dir / 'training_curve.png'}")
    if demo.pictures:
        print(f"  pictures (scans, reference, predictions with and without the {aux_names[0]}): {out / 'comparison'}")
    return demo


def _summary(evaluation) -> tuple[float, dict[str, float]]:
    per_class = {name: entry["metrics"]["dice"]["mean"] for name, entry in evaluation.summary["classes"].items()}
    return float(evaluation.summary.get("mean_dice", float("nan"))), per_class


def _predict_and_evaluate(checkpoint: Path, held_back, cfg: Config, out: Path, progress: bool) -> DemoResult:
    """Single-modality demo: predict the held-back cases with QC pictures, evaluate them."""
    from segfuse.evaluation.evaluate import evaluate, reference_folder
    from segfuse.inference.predict import predict

    predictions = out / "predictions"
    print(f"segfuse demo: predicting the {len(held_back.cases)} held-back cases -> {predictions}")
    batch = predict(checkpoint, held_back, predictions, qc=True, device=cfg.training.device, progress=progress)
    if not batch.ok:
        raise RuntimeError(f"demo prediction failed: {batch.summary()}")
    references = reference_folder(held_back.cases, out / "references")
    labels = {k: v for k, v in held_back.labels.items() if k != 0}
    evaluation = evaluate(predictions, references, out / "evaluation", labels=labels, progress=False)
    print(evaluation.table())
    print(f"  QC pictures: {predictions / 'qc'}")
    return DemoResult(out, *_summary(evaluation))


def _with_and_without(checkpoint: Path, held_back, cfg: Config, out: Path, aux: str, progress: bool) -> DemoResult:
    """Fusion demo: ``ablate`` predicts and scores the held-back cases with and without ``aux``; pictures."""
    from segfuse.evaluation.ablate import ablate
    from segfuse.inference.compare_qc import save_comparison_png

    print(f"segfuse demo: predicting the {len(held_back.cases)} held-back cases with and without the {aux} "
          f"(segfuse ablate) -> {out / 'ablation'}")
    ablation = ablate(checkpoint, held_back, out / "ablation", device=cfg.training.device, progress=progress)
    full = next(r["variant"] for r in ablation.rows if not r["dropped"])
    without = next(r["variant"] for r in ablation.rows if r["dropped"] == [aux])
    evaluation = ablation.evaluations[full]
    print(f"with the {aux}:")
    print(evaluation.table())
    demo = DemoResult(out, *_summary(evaluation), aux_value=aux_value_table(ablation, aux))
    dice = {row.case_id: row for row in demo.aux_value.rows}
    for case in held_back.cases:
        row, name = dice[case.case_id], f"{case.case_id}.nii.gz"
        # ablate's documented layout: <out_dir>/<variant>/predictions/<case_id>.nii.gz
        masks = {
            "reference": case.label,
            f"with {aux}: Dice {_fmt(row.with_aux)}": ablation.out_dir / full / "predictions" / name,
            f"without {aux}: Dice {_fmt(row.without_aux)}": ablation.out_dir / without / "predictions" / name,
        }
        picture = out / "comparison" / f"{case.case_id}.png"
        demo.pictures.append(save_comparison_png(case, masks, picture, aux={aux: cfg.data.aux[aux].scale},
                                                 primary_name=held_back.primary_name))
    return demo
