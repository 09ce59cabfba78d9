"""Per-case, per-class segmentation metrics computed with MONAI.

Every number comes from MONAI's own implementations (``compute_dice``,
``compute_iou``, ``compute_hausdorff_distance``, ``compute_surface_dice``)
applied to one-hot tensors of shape ``(1, K, *spatial)``, one channel per
foreground label; this module only adds physical units and explicit rules for
empty masks, which MONAI leaves as NaN/inf plus a warning.

Metrics (one row per case and foreground label):

- ``dice``, ``iou``: overlap, unitless, in ``[0, 1]``.
- ``hd95_mm``: 95th-percentile symmetric Hausdorff distance in millimetres,
  MONAI's definition: the larger of the two directed 95th percentiles of the
  distances between boundary voxels, measured with the voxel ``spacing``.
- ``nsd``: normalised surface Dice at ``tolerance_mm``: the fraction of both
  boundaries lying within ``tolerance_mm`` of the other boundary.
- ``volume_pred_ml``, ``volume_ref_ml``, ``volume_diff_ml`` (pred - ref):
  voxel count times the voxel volume ``prod(spacing)`` mm³, in millilitres.

Empty masks (README-ready)
--------------------------
A class can be absent from the reference, the prediction, or both. segfuse
never leaves these cases undefined:

=========================  ====  ===  ===  ========  ====================
reference / prediction     Dice  IoU  NSD  HD95      note
=========================  ====  ===  ===  ========  ====================
both empty                 1     1    1    0         ``"both empty"``
reference empty only       0     0    0    NaN       ``"reference empty"``
prediction empty only      0     0    0    NaN       ``"prediction empty"``
both non-empty             MONAI values              ``""``
=========================  ====  ===  ===  ========  ====================

A NaN HD95 (a boundary is missing, so no distance exists) is excluded from
means and other statistics, and the number of such cases is reported next to
them (``n_nan`` in ``summary.json``). Dice, IoU and NSD are never NaN, so a
missed or hallucinated structure always counts as a failure in their means.

Label 0 is background and never gets a row.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import (
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    compute_surface_dice,
)

__all__ = ["METRIC_NAMES", "case_metrics", "region_case_metrics", "region_key"]

#: Numeric columns of a metrics row, in output order.
METRIC_NAMES: tuple[str, ...] = (
    "dice",
    "iou",
    "hd95_mm",
    "nsd",
    "volume_pred_ml",
    "volume_ref_ml",
    "volume_diff_ml",
)


def _one_hot(labelmap: np.ndarray, labels: Sequence[int]) -> torch.Tensor:
    """Binary channels ``(1, K, *spatial)`` (float32), one per label in ``labels``."""
    channels = np.stack([labelmap == v for v in labels], axis=0)
    return torch.from_numpy(channels[None]).float()


def _check_inputs(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance_mm: float
) -> tuple[float, ...]:
    if pred.shape != ref.shape:
        raise ValueError(
            f"pred and ref must have the same shape, got pred {pred.shape} and ref {ref.shape}"
        )
    if pred.ndim not in (2, 3):
        raise ValueError(f"pred and ref must be 2D or 3D label maps, got shape {pred.shape}")
    spacing_t = tuple(float(s) for s in spacing)
    if len(spacing_t) != pred.ndim:
        raise ValueError(
            f"spacing must have one value per spatial axis ({pred.ndim}), got {spacing_t}"
        )
    if not all(math.isfinite(s) and s > 0 for s in spacing_t):
        raise ValueError(f"spacing must be positive finite millimetres, got {spacing_t}")
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm}")
    return spacing_t


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    labels: Mapping[int, str],
    tolerance_mm: float = 1.0,
) -> list[dict[str, Any]]:
    """Compute Dice, IoU, HD95, NSD and volumes for each foreground label of one case.

    Args:
        pred: predicted label map, integer values, shape ``(X, Y, Z)`` (or ``(X, Y)``).
        ref: reference label map, same shape as ``pred``.
        spacing: voxel size in millimetres, one value per axis; makes HD95 and
            NSD physical and gives the voxel volume.
        labels: foreground label value -> class name; label 0 (background) is skipped.
        tolerance_mm: boundary tolerance of the normalised surface Dice, in mm.

    Returns:
        One dict per foreground label, in ascending label order, with keys
        ``label, name, dice, iou, hd95_mm, nsd, volume_pred_ml, volume_ref_ml,
        volume_diff_ml, ref_empty, pred_empty, note``. Empty masks follow the
        rules in this module's docstring.

    Example:
        >>> ref = np.zeros((8, 8, 8), np.uint8); ref[2:6, 2:6, 2:6] = 1
        >>> row, = case_metrics(ref, ref, (1.0, 1.0, 1.0), {1: "tumour"})
        >>> row["dice"], row["hd95_mm"], row["volume_ref_ml"]
        (1.0, 0.0, 0.064)
    """
    spacing_t = _check_inputs(pred, ref, spacing, tolerance_mm)
    fg = sorted(int(v) for v in labels if int(v) != 0)
    if not fg:
        return []

    voxel_mm3 = float(np.prod(spacing_t))
    pred_t = _one_hot(pred, fg)
    ref_t = _one_hot(ref, fg)
    dice = compute_dice(pred_t, ref_t, include_background=True, ignore_empty=False)[0]
    iou = compute_iou(pred_t, ref_t, include_background=True, ignore_empty=False)[0]

    pred_count = pred_t[0].flatten(1).sum(dim=1).to(torch.int64).tolist()
    ref_count = ref_t[0].flatten(1).sum(dim=1).to(torch.int64).tolist()

    # Surface distances only exist when both boundaries exist; computing them
    # otherwise makes MONAI warn and return inf/nan, so those channels are
    # filled by the documented rules instead.
    both = [i for i in range(len(fg)) if pred_count[i] > 0 and ref_count[i] > 0]
    hd95: dict[int, float] = {}
    nsd: dict[int, float] = {}
    if both:
        idx = torch.tensor(both)
        p_sub, r_sub = pred_t[:, idx], ref_t[:, idx]
        with warnings.catch_warnings():
            # MONAI 1.5+ warns about its own internal use of a deprecated argument.
            warnings.filterwarnings(
                "ignore", message=".*always_return_as_numpy", category=FutureWarning
            )
            hd = compute_hausdorff_distance(
                p_sub, r_sub, include_background=True, percentile=95, spacing=list(spacing_t)
            )[0]
            sd = compute_surface_dice(
                p_sub,
                r_sub,
                class_thresholds=[float(tolerance_mm)] * len(both),
                include_background=True,
                spacing=list(spacing_t),
            )[0]
        for j, i in enumerate(both):
            hd95[i] = float(hd[j])
            nsd[i] = float(sd[j])

    rows: list[dict[str, Any]] = []
    for i, value in enumerate(fg):
        ref_empty, pred_empty = ref_count[i] == 0, pred_count[i] == 0
        if ref_empty and pred_empty:
            d, j, h, s, note = 1.0, 1.0, 0.0, 1.0, "both empty"
        elif ref_empty:
            d, j, h, s, note = 0.0, 0.0, math.nan, 0.0, "reference empty"
        elif pred_empty:
            d, j, h, s, note = 0.0, 0.0, math.nan, 0.0, "prediction empty"
        else:
            d, j, h, s, note = float(dice[i]), float(iou[i]), hd95[i], nsd[i], ""
        vol_pred = pred_count[i] * voxel_mm3 / 1000.0
        vol_ref = ref_count[i] * voxel_mm3 / 1000.0
        rows.append(
            {
                "label": value,
                "name": str(labels[value]),
                "dice": d,
                "iou": j,
                "hd95_mm": h,
                "nsd": s,
                "volume_pred_ml": vol_pred,
                "volume_ref_ml": vol_ref,
                "volume_diff_ml": (pred_count[i] - ref_count[i]) * voxel_mm3 / 1000.0,
                "ref_empty": ref_empty,
                "pred_empty": pred_empty,
                "note": note,
            }
        )
    return rows


def region_key(values: Sequence[int]) -> str:
    """The ``label`` column of a region's rows: its label values joined by ``+`` (``"1+2+4"``)."""
    return "+".join(str(int(v)) for v in values)


def region_case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    regions: Mapping[str, Sequence[int]],
    tolerance_mm: float = 1.0,
) -> list[dict[str, Any]]:
    """:func:`case_metrics` per label region (a union of label values, e.g. BraTS tumour core = 1 ∪ 4).

    Each region is scored as a binary mask in both label maps, with the same
    metrics and empty-mask rules as a class. Rows are in region order; their
    ``label`` is :func:`region_key` of the region's values and ``name`` its name.

    Example:
        >>> ref = np.zeros((8, 8, 8), np.uint8); ref[2:6, 2:6, 2:6] = 2; ref[3:5, 3:5, 3:5] = 4
        >>> rows = region_case_metrics(ref, ref, (1.0,) * 3, {"whole": [1, 2, 4], "enhancing": [4]})
        >>> [(r["label"], r["name"], r["dice"]) for r in rows]
        [('1+2+4', 'whole', 1.0), ('4', 'enhancing', 1.0)]
    """
    rows = []
    for name, values in regions.items():
        members = np.asarray([int(v) for v in values])
        binary_pred = np.isin(pred, members).astype(np.uint8)
        binary_ref = np.isin(ref, members).astype(np.uint8)
        (row,) = case_metrics(binary_pred, binary_ref, spacing, {1: name}, tolerance_mm=tolerance_mm)
        rows.append({**row, "label": region_key(values)})
    return rows
