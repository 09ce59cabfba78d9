"""The value of each auxiliary scan: predict with it, without it, and without any.

For a model trained with modality dropout (so it may run with auxiliaries
absent), :func:`ablate` predicts a labelled dataset once per variant:

* ``all``: every auxiliary present;
* ``without_<name>``: that auxiliary removed, the others present;
* ``none``: every auxiliary removed;

evaluates each run with :func:`segfuse.evaluation.evaluate.evaluate` and reports
per-class mean Dice (per region for a model trained with ``data.regions``),
the mean over classes and the drop of that mean (and of each class) against
``all``. Variants that remove the same set of auxiliaries (``without_x`` and
``none`` with a single auxiliary) are predicted once.

Outputs in ``out_dir``: ``<variant>/predictions/`` and ``<variant>/evaluation/``
per variant, ``ablation.csv`` and ``ablation.json``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segfuse.data.cases import Dataset
from segfuse.data.layouts import read_dataset
from segfuse.evaluation.evaluate import EvaluationResult, evaluate
from segfuse.inference.model import LoadedModel, load_model
from segfuse.inference.predict import predict
from segfuse.io.atomic import atomic_write_text
from segfuse.io.errors import SegfuseInputError

__all__ = ["AblationResult", "ablate"]


@dataclass
class AblationResult:
    """What :func:`ablate` measured.

    Attributes:
        rows: one dict per variant: ``variant``, ``dropped`` (list of names),
            ``dice`` (class name → mean Dice), ``mean_dice``, ``drop_vs_all``, ``dice_drop_vs_all`` (per class).
        classes: class names, in label order.
        out_dir: folder holding ``ablation.csv``, ``ablation.json`` and each variant's runs.
        evaluations: variant → its :class:`EvaluationResult` (per-case rows in ``.rows``).
    """

    rows: list[dict[str, Any]]
    classes: list[str]
    out_dir: Path
    evaluations: dict[str, EvaluationResult] = field(default_factory=dict)

    def table(self) -> str:
        """A text table: variant × class Dice, mean Dice, drop vs ``all``.

        Example:
            >>> print(result.table())  # doctest: +SKIP
            variant        tumour  mean Dice  drop vs all
            all            0.910   0.910      +0.000
            without_flair  0.850   0.850      +0.060
            none           0.850   0.850      +0.060
        """
        header = ("variant", *self.classes, "mean Dice", "drop vs all")
        lines = [header]
        for row in self.rows:
            lines.append(
                (
                    row["variant"],
                    *(_num(row["dice"][c], "{:.3f}") for c in self.classes),
                    _num(row["mean_dice"], "{:.3f}"),
                    _num(row["drop_vs_all"], "{:+.3f}"),
                )
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def _variants(names: list[str]) -> list[tuple[str, frozenset[str]]]:
    return [("all", frozenset()), *((f"without_{n}", frozenset({n})) for n in names), ("none", frozenset(names))]


def _write_eval_manifest(path: Path, pred_dir: Path, dataset: Dataset) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case_id", "pred", "ref"])
    for case in dataset.cases:
        writer.writerow([case.case_id, str((pred_dir / f"{case.case_id}.nii.gz").resolve()), str(case.label.resolve())])
    return atomic_write_text(path, buf.getvalue())


def ablate(
    checkpoint: str | Path | Mapping[str, Any] | LoadedModel,
    dataset: str | Path | Dataset,
    out_dir: str | Path,
    *,
    device: str = "cpu",
    tolerance_mm: float = 1.0,
    progress: bool = True,
) -> AblationResult:
    """Measure how much each auxiliary adds: Dice with all, without each, and without any.

    Args:
        checkpoint: a checkpoint of a model trained with modality dropout
            (some ``data.aux.<name>.dropout > 0``), a loaded dict or a :class:`LoadedModel`.
        dataset: a labelled dataset in any layout :func:`~segfuse.data.layouts.read_dataset` reads.
        out_dir: output folder (created).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        tolerance_mm: tolerance of the normalised surface Dice (passed to ``evaluate``).
        progress: progress bars.

    Returns:
        An :class:`AblationResult`; ``result.table()`` prints it.

    Raises:
        SegfuseInputError: a model without auxiliaries or trained without modality
            dropout; a variant in which some case failed (the cases are listed).

    Example:
        >>> print(ablate("ckpt.pt", "data/val.yaml", "ablation").table())  # doctest: +SKIP
    """
    model = load_model(checkpoint, device=device)
    names = list(model.cfg.data.aux)
    if not names:
        raise SegfuseInputError(
            "ablate needs a model with auxiliary inputs; this checkpoint has none (data.aux is empty)"
        )
    if not model.allow_missing_aux:
        raise SegfuseInputError(
            "ablate needs a model trained with modality dropout (data.aux.<name>.dropout > 0 for some auxiliary): "
            f"this model was trained with dropout 0 for {names}, so it cannot run with an auxiliary removed and "
            "its predictions without one would be meaningless"
        )
    if not isinstance(dataset, Dataset):
        dataset = read_dataset(dataset, primary=model.cfg.data.primary, aux=names, require_labels=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = {v: n for v, n in (model.cfg.data.labels or dataset.labels).items() if int(v) != 0}
    regions = model.cfg.data.regions  # a region-trained model is scored per region
    classes = list(regions) if regions else list(labels.values())

    by_dropped: dict[frozenset[str], EvaluationResult] = {}
    rows: list[dict[str, Any]] = []
    for variant, dropped in _variants(names):
        if dropped not in by_dropped:
            folder = out_dir / variant
            pred_dir = folder / "predictions"
            run = predict(model, dataset, pred_dir, drop_aux=dropped, progress=progress)
            if not run.ok:
                raise SegfuseInputError(f"ablation variant {variant!r}: prediction failed; {run.summary()}")
            manifest = _write_eval_manifest(folder / "evaluation_pairs.csv", pred_dir, dataset)
            by_dropped[dropped] = evaluate(
                manifest, None, folder / "evaluation", labels=labels, regions=regions, tolerance_mm=tolerance_mm,
                progress=progress,
            )
        summary = by_dropped[dropped].summary
        dice = {name: summary["classes"][name]["metrics"]["dice"]["mean"] for name in classes}
        rows.append({"variant": variant, "dropped": sorted(dropped), "dice": dice, "mean_dice": summary["mean_dice"]})
    reference = rows[0]["mean_dice"]
    for row in rows:
        mean = row["mean_dice"]
        row["drop_vs_all"] = None if reference is None or mean is None else reference - mean
        row["dice_drop_vs_all"] = {
            c: None if rows[0]["dice"][c] is None or row["dice"][c] is None else rows[0]["dice"][c] - row["dice"][c]
            for c in classes
        }

    evaluations = {row["variant"]: by_dropped[frozenset(row["dropped"])] for row in rows}
    result = AblationResult(rows=rows, classes=classes, out_dir=out_dir, evaluations=evaluations)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["variant", "dropped", *(f"dice_{c}" for c in classes), "mean_dice", "drop_vs_all"])
    for row in rows:
        writer.writerow(
            [
                row["variant"],
                ";".join(row["dropped"]),
                *(row["dice"][c] for c in classes),
                row["mean_dice"],
                row["drop_vs_all"],
            ]
        )
    atomic_write_text(out_dir / "ablation.csv", buf.getvalue())
    payload = {
        "checkpoint": None if model.checkpoint is None else str(model.checkpoint),
        "classes": classes,
        "tolerance_mm": tolerance_mm,
        "variants": rows,
        "regions": regions,
        "notes": [
            "dice values are per-class (or per-region) means over cases",
            "drop_vs_all = mean_dice(all) - mean_dice(variant); dice_drop_vs_all: the same per class",
        ],
    }
    atomic_write_text(out_dir / "ablation.json", json.dumps(payload, indent=2) + "\n")
    return result
