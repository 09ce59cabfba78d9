"""Evaluate predicted label images against references: CSV, JSON summary, box plot.

Inputs are either two folders of label images (``.nii``, ``.nii.gz``, ``.nrrd``,
``.nhdr``, ``.mha``, ``.mhd``; a case is the file name without its extension) or a CSV manifest with
columns ``case_id,pred,ref`` whose relative paths are resolved from the
manifest's folder.

Rules:

- A reference without a prediction is an error that lists every such case id;
  cases are never skipped silently.
- A prediction without a reference is reported as a warning (``warnings.warn``
  and ``EvaluationResult.warnings``) and ignored.
- Prediction and reference must share the grid (shape and affine), else an
  error names the case, both shapes and both affines.
- Label values found in any image must be 0 (background) or listed in
  ``labels``; an undeclared value is an error naming the file that holds it
  (references are checked before predictions). ``labels`` comes from the
  caller (``--labels dataset.json|run/config.yaml``), else from the
  ``predictions.json`` that ``segfuse predict`` wrote beside the predictions,
  else it is every non-zero value found in the references, named
  ``label_<v>``, with a warning (:mod:`segfuse.evaluation.labelset`).
- With ``regions`` (name → label values, e.g. BraTS whole tumour ``1, 2, 4``)
  each region is scored instead of each label: a row per case and region, whose
  ``label`` column holds the region's values joined by ``+`` (``1+2+4``).

Metric definitions and the empty-mask rules are in :mod:`segfuse.evaluation.metrics`.

Outputs in ``out_dir`` (written atomically): ``per_case.csv``,
``summary.json`` and ``dice_boxplot.png``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from segfuse.evaluation.labelset import labels_from_predictions
from segfuse.evaluation.metrics import METRIC_NAMES, case_metrics, region_case_metrics, region_key
from segfuse.io.atomic import atomic_write, atomic_write_text
from segfuse.io.errors import SegfuseInputError
from segfuse.io.geometry import describe_affine, same_grid
from segfuse.io.image import Volume, read_image
from segfuse.io.label_tables import integer_labels

__all__ = ["IMAGE_EXTENSIONS", "EvaluationResult", "evaluate"]

#: Label image extensions recognised in folders (longest first for stripping).
IMAGE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

#: Columns of ``per_case.csv``, in order.
CSV_COLUMNS: tuple[str, ...] = (
    "case_id",
    "label",
    "name",
    *METRIC_NAMES,
    "ref_empty",
    "pred_empty",
    "note",
)

_STATS = ("mean", "std", "median", "min", "max", "n", "n_nan")


@dataclass
class EvaluationResult:
    """What :func:`evaluate` computed and wrote.

    Attributes:
        rows: one dict per case and foreground label (the rows of ``per_case.csv``).
        summary: the content of ``summary.json``.
        out_dir: folder holding ``per_case.csv``, ``summary.json``, ``dice_boxplot.png``.
        warnings: human-readable warnings (e.g. predictions without a reference).
    """

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    out_dir: Path
    warnings: list[str] = field(default_factory=list)

    def table(self) -> str:
        """Readable text table: one line per class, mean ± std of Dice, HD95 and NSD.

        Example:
            >>> print(result.table())  # doctest: +SKIP
            class          Dice           HD95 (mm)       NSD@1mm        cases
            tumour         0.912 ± 0.031  2.41 ± 0.88     0.951 ± 0.020  3
        """
        tol = self.summary["tolerance_mm"]
        header = ("class", "Dice", "HD95 (mm)", f"NSD@{tol:g}mm", "cases")
        lines: list[tuple[str, ...]] = [header]
        for name, entry in self.summary["classes"].items():
            m = entry["metrics"]
            hd = _fmt(m["hd95_mm"], 2)
            if m["hd95_mm"]["n_nan"]:
                hd += f" ({m['hd95_mm']['n_nan']} NaN)"
            lines.append((name, _fmt(m["dice"], 3), hd, _fmt(m["nsd"], 3), str(m["dice"]["n"])))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        out = [
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in lines
        ]
        out.append(f"mean Dice over classes: {_num(self.summary['mean_dice'], 3)}")
        return "\n".join(out)


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt(stats: Mapping[str, Any], digits: int) -> str:
    if stats["mean"] is None:
        return "n/a"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


# ---------------------------------------------------------------- case pairing


def _case_id(path: Path) -> str | None:
    name = path.name
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return None


def _scan_folder(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise SegfuseInputError(f"{folder}: {role} folder does not exist or is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        case = _case_id(path)
        if case is None or not path.is_file() or path.name.startswith("."):
            continue
        if case in found:
            raise SegfuseInputError(
                f"{folder}: two {role} files for case {case!r}: {found[case].name} and {path.name}"
            )
        found[case] = path
    if not found:
        raise SegfuseInputError(
            f"{folder}: no {role} label images found "
            f"(expected files ending in {', '.join(IMAGE_EXTENSIONS)})"
        )
    return found


def _read_manifest(manifest: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise SegfuseInputError(f"{manifest}: cannot read manifest: {err}") from err
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    expected = ["case_id", "pred", "ref"]
    if any(c not in columns for c in expected):
        raise SegfuseInputError(
            f"{manifest}: manifest columns must include {','.join(expected)}, "
            f"got {','.join(columns)}"
        )
    base = manifest.parent
    preds: dict[str, Path] = {}
    refs: dict[str, Path] = {}
    seen: set[str] = set()
    for line_no, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        case = row["case_id"]
        if not case:
            raise SegfuseInputError(f"{manifest}: line {line_no} has an empty case_id")
        if case in seen:
            raise SegfuseInputError(f"{manifest}: case_id {case!r} appears more than once")
        seen.add(case)
        if row["pred"]:
            preds[case] = (base / row["pred"]).resolve()
        if row["ref"]:
            refs[case] = (base / row["ref"]).resolve()
    if not seen:
        raise SegfuseInputError(f"{manifest}: manifest has no rows")
    return preds, refs


def _pair_cases(pred: Path, ref: Path | None) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Return ``[(case_id, pred_path, ref_path)]`` sorted by case id, and warnings."""
    if pred.is_file() and pred.suffix.lower() == ".csv":
        if ref is not None:
            raise SegfuseInputError(
                f"{pred}: ref must not be given with a manifest CSV (the manifest names the "
                f"references), got ref={ref}"
            )
        preds, refs = _read_manifest(pred)
        missing_files = sorted(str(p) for p in (*preds.values(), *refs.values()) if not p.is_file())
        if missing_files:
            raise SegfuseInputError(
                f"{pred}: {len(missing_files)} file(s) named in the manifest do not exist: "
                + ", ".join(missing_files)
            )
    else:
        if ref is None:
            raise SegfuseInputError(
                f"{pred}: ref folder is required unless pred is a manifest CSV (case_id,pred,ref)"
            )
        preds = _scan_folder(pred, "prediction")
        refs = _scan_folder(ref, "reference")

    no_pred = sorted(set(refs) - set(preds))
    if no_pred:
        raise SegfuseInputError(
            f"{pred}: {len(no_pred)} reference case(s) have no prediction: {', '.join(no_pred)}"
        )
    notes: list[str] = []
    no_ref = sorted(set(preds) - set(refs))
    if no_ref:
        notes.append(
            f"{len(no_ref)} prediction(s) have no reference and are not evaluated: "
            + ", ".join(no_ref)
        )
    pairs = [(case, preds[case], refs[case]) for case in sorted(refs)]
    if not pairs:
        raise SegfuseInputError(f"{pred}: no case has both a prediction and a reference")
    return pairs, notes


# --------------------------------------------------------------- label checks


def _label_array(vol: Volume, case: str, role: str) -> np.ndarray:
    arr = np.asarray(vol.array)
    if arr.ndim not in (2, 3):
        raise SegfuseInputError(
            f"{vol.path}: {role} of case {case!r} must be a 2D or 3D label image, "
            f"got shape {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.integer) and not np.issubdtype(arr.dtype, np.bool_):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.rint(arr)):
            raise SegfuseInputError(
                f"{vol.path}: {role} of case {case!r} is not a label image: "
                f"it has non-integer values (dtype {arr.dtype})"
            )
        arr = arr.astype(np.int64)
    return arr


def _check_grid(case: str, p: Volume, r: Volume, pa: np.ndarray, ra: np.ndarray) -> None:
    if not same_grid(p.affine, pa.shape, r.affine, ra.shape):
        raise SegfuseInputError(
            f"case {case!r}: prediction and reference are not on the same grid: "
            f"prediction {p.path} shape {pa.shape} affine {describe_affine(p.affine)}; "
            f"reference {r.path} shape {ra.shape} affine {describe_affine(r.affine)}"
        )


def _default_labels(pairs: Sequence[tuple[str, Path, Path]], progress: bool) -> dict[int, str]:
    values: set[int] = set()
    for case, _, ref_path in tqdm(pairs, desc="scan labels", disable=not progress, unit="case"):
        arr = _label_array(read_image(ref_path), case, "reference")
        values.update(int(v) for v in np.unique(arr))
    return {v: f"label_{v}" for v in sorted(values - {0})}


def _normalise_labels(labels: Mapping[int, str]) -> dict[int, str]:
    out = {value: name for value, name in integer_labels(labels).items() if value != 0}
    names = list(out.values())
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SegfuseInputError(f"labels: class names must be unique, repeated: {', '.join(dupes)}")
    if not out:
        raise SegfuseInputError(f"labels: no foreground label given (got {dict(labels)})")
    return dict(sorted(out.items()))


# ------------------------------------------------------------------- summary


def _stats(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[~np.isnan(arr)]
    n_nan = int(arr.size - finite.size)
    if finite.size == 0:
        return {
            "mean": None,
            "std": None,
            "median": None,
            "min": None,
            "max": None,
            "n": 0,
            "n_nan": n_nan,
        }
    return {
        "mean": float(finite.mean()),
        "std": float(finite.std()),  # population std (ddof=0), as nnU-Net reports
        "median": float(np.median(finite)),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "n": int(finite.size),
        "n_nan": n_nan,
    }


def _summarise(
    rows: Sequence[Mapping[str, Any]],
    labels: Mapping[int, str],
    tolerance_mm: float,
    n_cases: int,
    notes: Sequence[str],
) -> dict[str, Any]:
    classes: dict[str, Any] = {}
    for value, name in labels.items():
        own = [r for r in rows if r["label"] == value]
        classes[name] = {
            "label": value,
            "metrics": {m: _stats([r[m] for r in own]) for m in METRIC_NAMES},
            "cases_ref_empty": sum(bool(r["ref_empty"]) for r in own),
            "cases_pred_empty": sum(bool(r["pred_empty"]) for r in own),
        }
    class_means = [c["metrics"]["dice"]["mean"] for c in classes.values()]
    class_means = [m for m in class_means if m is not None]
    return {
        "n_cases": n_cases,
        "tolerance_mm": float(tolerance_mm),
        "labels": {str(v): n for v, n in labels.items()},
        "mean_dice": float(np.mean(class_means)) if class_means else None,
        "classes": classes,
        "statistics": list(_STATS),
        "notes": [
            "std is the population standard deviation (ddof=0)",
            "NaN HD95 (one mask empty) is excluded from statistics and counted in n_nan",
            "mean_dice is the unweighted mean of the per-class mean Dice",
        ],
        "warnings": list(notes),
    }


# ------------------------------------------------------------------- writers


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in CSV_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def _write_boxplot(
    path: Path, rows: Sequence[Mapping[str, Any]], labels: Mapping[int, str]
) -> None:
    # A bare Figure renders PNG with the Agg canvas and never touches pyplot's
    # global backend, so evaluating from a notebook or a headless job is the same.
    from matplotlib.figure import Figure

    names = list(labels.values())
    dice = [[r["dice"] for r in rows if r["label"] == v] for v in labels]
    hd = [
        [r["hd95_mm"] for r in rows if r["label"] == v and not math.isnan(r["hd95_mm"])]
        for v in labels
    ]
    fig = Figure(figsize=(max(6.0, 1.6 * len(names) + 3.0), 4.0), layout="constrained")
    ax_d, ax_h = fig.subplots(1, 2)
    ax_d.boxplot(dice, tick_labels=names)
    ax_d.set_title("Dice")
    ax_d.set_ylim(-0.02, 1.02)
    ax_h.boxplot([h if h else [math.nan] for h in hd], tick_labels=names)
    ax_h.set_title("HD95 (mm, NaN excluded)")
    for ax in (ax_d, ax_h):
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(axis="y", alpha=0.3)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)


# ---------------------------------------------------------------------- main


def evaluate(
    pred: Path,
    ref: Path | None,
    out_dir: Path,
    *,
    labels: Mapping[int, str] | None = None,
    regions: Mapping[str, Sequence[int]] | None = None,
    tolerance_mm: float = 1.0,
    progress: bool = True,
    qc: bool = False,
) -> EvaluationResult:
    """Score every case's prediction against its reference and write the reports.

    Args:
        pred: folder of predicted label images, or a CSV manifest with columns
            ``case_id,pred,ref`` (paths relative to the manifest's folder).
        ref: folder of reference label images; ``None`` when ``pred`` is a manifest.
        out_dir: output folder (created if needed) for ``per_case.csv``,
            ``summary.json`` and ``dice_boxplot.png``.
        labels: foreground label value -> class name. Default: the labels in
            ``pred/predictions.json`` (written by ``segfuse predict``), else every
            non-zero value found in the references, named ``label_<v>`` (a warning).
        regions: region name → label values (broadest first, as in ``data.regions``):
            score these unions of labels instead of each label. Values outside
            every region (and outside ``labels``, when given) are errors.
        tolerance_mm: boundary tolerance of the normalised surface Dice, in mm.
        progress: show a tqdm bar over cases.
        qc: also write ``out_dir/qc/<case_id>.png``: a few slices with the prediction,
            the reference's outline and the errors (missed, extra, wrong class).

    Returns:
        An :class:`EvaluationResult`; ``result.table()`` gives a printable summary.

    Raises:
        SegfuseInputError: a reference without prediction (all such case ids are
            listed), grids that differ, unknown label values, unreadable inputs.

    Example:
        >>> result = evaluate(Path("preds"), Path("labelsTs"), Path("eval"))  # doctest: +SKIP
        >>> print(result.table())  # doctest: +SKIP
    """
    pred, out_dir = Path(pred), Path(out_dir)
    ref = None if ref is None else Path(ref)
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise SegfuseInputError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm}")
    pairs, notes = _pair_cases(pred, ref)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)

    if labels is None and (recorded := labels_from_predictions(pred)) is not None:
        labels = recorded
    if regions is not None:
        from segfuse.config import check_regions

        check_regions(regions, paintable=False)
        member_values = {int(v) for values in regions.values() for v in values}
        declared = member_values | (set(_normalise_labels(labels)) if labels is not None else set())
        allowed = declared | {0}
        label_map = {region_key(values): str(name) for name, values in regions.items()}
    elif labels is None:
        label_map = _default_labels(pairs, progress)
        allowed = set(label_map) | {0}
        notes.append(
            f"no label set given: scoring the values found in the references as classes "
            f"{sorted(label_map)}; pass labels (--labels dataset.json or run/config.yaml) to name the "
            "classes and to catch stray values"
        )
        warnings.warn(notes[-1], UserWarning, stacklevel=2)
    else:
        label_map = _normalise_labels(labels)
        allowed = set(label_map) | {0}
    if not label_map:
        raise SegfuseInputError(
            f"{ref or pred}: the references contain no foreground label; pass labels= "
            "to evaluate classes that are absent everywhere"
        )

    rows: list[dict[str, Any]] = []
    for case, pred_path, ref_path in tqdm(
        pairs, desc="evaluate", disable=not progress, unit="case"
    ):
        r_vol, p_vol = read_image(ref_path), read_image(pred_path)
        r_arr = _label_array(r_vol, case, "reference")
        p_arr = _label_array(p_vol, case, "prediction")
        _check_grid(case, p_vol, r_vol, p_arr, r_arr)
        for role, arr, path in (("reference", r_arr, ref_path), ("prediction", p_arr, pred_path)):
            unknown = sorted(int(v) for v in np.unique(arr) if int(v) not in allowed)
            if unknown:
                raise SegfuseInputError(
                    f"{path}: {role} of case {case!r} has label values {unknown} that are not "
                    f"declared in the label set {sorted(allowed - {0})} (0 is background); a stray value in "
                    "this file, or pass a label set that declares it (--labels)"
                )
        spacing = tuple(float(s) for s in r_vol.spacing)[: r_arr.ndim]
        if regions is not None:
            case_rows = region_case_metrics(p_arr, r_arr, spacing, regions, tolerance_mm=tolerance_mm)
        else:
            case_rows = case_metrics(p_arr, r_arr, spacing, label_map, tolerance_mm=tolerance_mm)
        for row in case_rows:
            rows.append({"case_id": case, **row})

    summary = _summarise(rows, label_map, tolerance_mm, len(pairs), notes)
    if regions is not None:
        summary["regions"] = {str(name): [int(v) for v in values] for name, values in regions.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "per_case.csv", rows)
    atomic_write_text(
        out_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n"
    )
    _write_boxplot(out_dir / "dice_boxplot.png", rows, label_map)
    if qc:  # after every case passed its checks: no pictures from a failed evaluation
        _write_qc(pairs, out_dir / "qc", progress)
    return EvaluationResult(rows=rows, summary=summary, out_dir=out_dir, warnings=list(notes))


def _write_qc(pairs: Sequence[tuple[str, Path, Path]], folder: Path, progress: bool) -> None:
    from segfuse.inference.qc import save_label_comparison_png

    folder.mkdir(parents=True, exist_ok=True)
    for case, pred_path, ref_path in tqdm(pairs, desc="QC pictures", disable=not progress, unit="case"):
        p_vol, r_vol = read_image(pred_path), read_image(ref_path)
        save_label_comparison_png(p_vol.array, r_vol.array, r_vol.affine, folder / f"{case}.png")


def reference_folder(cases, folder: Path) -> Path:
    """Copy each case's label file to ``folder/<case_id>.nii.gz`` (the layout ``evaluate`` matches on).

    ``cases``: :class:`segfuse.data.cases.Case` objects with NIfTI labels. Existing files are kept.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        target = folder / f"{case.case_id}.nii.gz"
        if not target.exists():
            shutil.copyfile(case.label, target)
    return folder
