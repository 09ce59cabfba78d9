"""Tests for segfuse.evaluation.metrics: known geometry, MONAI agreement, empty rules."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric
from scipy import ndimage

from segfuse.evaluation.metrics import METRIC_NAMES, case_metrics


def sphere(shape: tuple[int, int, int], centre: tuple[float, ...], radius: float) -> np.ndarray:
    """Voxels whose centre lies within ``radius`` voxels of ``centre``, as uint8."""
    grid = np.indices(shape, dtype=np.float64)
    c = np.asarray(centre, dtype=np.float64).reshape(3, 1, 1, 1)
    return (((grid - c) ** 2).sum(axis=0) <= radius**2).astype(np.uint8)


def cube(shape: tuple[int, int, int], start: int, size: int) -> np.ndarray:
    arr = np.zeros(shape, np.uint8)
    arr[start : start + size, start : start + size, start : start + size] = 1
    return arr


ISO = (1.0, 1.0, 1.0)


def test_offset_spheres_dice_iou_equal_voxel_counts() -> None:
    pred = sphere((40, 40, 40), (18, 20, 20), 8)
    ref = sphere((40, 40, 40), (22, 21, 20), 9)
    inter = int(np.logical_and(pred, ref).sum())
    union = int(np.logical_or(pred, ref).sum())
    n_pred, n_ref = int(pred.sum()), int(ref.sum())

    (row,) = case_metrics(pred, ref, ISO, {1: "ball"})

    assert row["label"] == 1 and row["name"] == "ball" and row["note"] == ""
    # MONAI returns float32 Dice, hence the relative tolerance.
    assert row["dice"] == pytest.approx(2 * inter / (n_pred + n_ref), rel=1e-6)
    assert row["iou"] == pytest.approx(inter / union, rel=1e-6)
    assert row["volume_pred_ml"] == pytest.approx(n_pred / 1000)
    assert row["volume_ref_ml"] == pytest.approx(n_ref / 1000)
    assert row["volume_diff_ml"] == pytest.approx((n_pred - n_ref) / 1000)
    assert not row["ref_empty"] and not row["pred_empty"]


def test_volumes_use_voxel_volume() -> None:
    ref = cube((20, 20, 20), 5, 4)  # 64 voxels
    (row,) = case_metrics(ref, ref, (2.0, 1.5, 0.5), {1: "c"})
    assert row["volume_ref_ml"] == pytest.approx(64 * 1.5 / 1000)
    assert row["volume_diff_ml"] == 0.0
    assert row["dice"] == 1.0 and row["hd95_mm"] == 0.0 and row["nsd"] == 1.0


def test_concentric_spheres_hd95_is_radius_difference() -> None:
    # Radii 10 and 13 voxels at 1 mm: the ideal surfaces are 3 mm apart
    # everywhere. Voxelisation puts each boundary voxel up to ~0.5 voxel off its
    # ideal sphere (and boundary voxels are the inner shell), so single
    # distances spread over roughly [2, 4] mm; the 95th percentile must stay
    # within 0.5 mm of 3 mm (it is sqrt(10) = 3.16 mm here).
    inner = sphere((40, 40, 40), (20, 20, 20), 10)
    outer = sphere((40, 40, 40), (20, 20, 20), 13)
    (row,) = case_metrics(inner, outer, ISO, {1: "ball"})
    assert row["hd95_mm"] == pytest.approx(3.0, abs=0.5)
    # Every boundary point is ~3 mm away, so NSD at 1 mm is ~0 and at 5 mm is 1.
    assert row["nsd"] < 0.05
    (wide,) = case_metrics(inner, outer, ISO, {1: "ball"}, tolerance_mm=5.0)
    assert wide["nsd"] == pytest.approx(1.0)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's internal deprecation notice
def test_shifted_cube_hausdorff_is_physical_distance() -> None:
    # A cube moved by exactly 2 voxels along x, voxels 2 mm wide along x:
    # the farthest boundary point is 2 voxels = 4 mm from the other boundary.
    ref = cube((40, 40, 40), 10, 10)
    pred = np.roll(ref, 2, axis=0)
    spacing = (2.0, 1.0, 1.0)

    hd100 = HausdorffDistanceMetric(include_background=True, reduction="none")(
        torch.from_numpy(pred[None, None]).float(),
        torch.from_numpy(ref[None, None]).float(),
        spacing=list(spacing),
    )
    assert float(hd100) == pytest.approx(4.0)

    (row,) = case_metrics(pred, ref, spacing, {1: "cube"})
    assert 0.0 < row["hd95_mm"] <= 4.0 + 1e-6
    assert row["hd95_mm"] == pytest.approx(4.0)  # most of both x faces are 4 mm off
    # The same shift along y (1 mm voxels) is 2 mm: spacing is applied per axis.
    (row_y,) = case_metrics(np.roll(ref, 2, axis=1), ref, spacing, {1: "cube"})
    assert row_y["hd95_mm"] == pytest.approx(2.0)


def test_nsd_grows_with_tolerance_and_reaches_one() -> None:
    ref = cube((40, 40, 40), 10, 10)
    pred = np.roll(ref, 2, axis=0)
    nsd = [
        case_metrics(pred, ref, (2.0, 1.0, 1.0), {1: "c"}, tolerance_mm=t)[0]["nsd"]
        for t in (0.0, 1.0, 3.0, 4.0, 100.0)
    ]
    assert 0.0 < nsd[0] < 1.0  # the side faces overlap exactly, the x faces do not
    assert nsd == sorted(nsd)
    assert nsd[-2] == pytest.approx(1.0)  # every boundary point is within 4 mm
    assert nsd[-1] == pytest.approx(1.0)
    same = case_metrics(ref, ref, (2.0, 1.0, 1.0), {1: "c"}, tolerance_mm=0.0)[0]["nsd"]
    assert same == pytest.approx(1.0)


def random_blobs(seed: int, shape: tuple[int, int, int], n_labels: int) -> np.ndarray:
    """Smooth random field cut into ``n_labels`` foreground classes plus background."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=3)
    cuts = np.quantile(field, np.linspace(0.4, 1.0, n_labels + 1)[:-1])
    return np.digitize(field, cuts).astype(np.uint8)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's internal deprecation notice
@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_monai_metric_classes(seed: int) -> None:
    shape = (32, 28, 24)
    pred = random_blobs(seed, shape, 3)
    ref = random_blobs(seed + 100, shape, 3)
    spacing = (1.5, 1.0, 2.0)
    labels = {1: "a", 2: "b", 3: "c"}
    rows = case_metrics(pred, ref, spacing, labels, tolerance_mm=2.0)

    def one_hot(arr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([arr == v for v in range(4)])[None]).float()

    p, r = one_hot(pred), one_hot(ref)
    dice = DiceMetric(include_background=False, reduction="none")(p, r)[0]
    hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
        p, r, spacing=list(spacing)
    )[0]
    nsd = SurfaceDiceMetric(class_thresholds=[2.0] * 3, include_background=False, reduction="none")(
        p, r, spacing=list(spacing)
    )[0]
    assert [row["label"] for row in rows] == [1, 2, 3]
    for i, row in enumerate(rows):
        assert row["dice"] == pytest.approx(float(dice[i]), abs=1e-6)
        assert row["hd95_mm"] == pytest.approx(float(hd95[i]), abs=1e-5)
        assert row["nsd"] == pytest.approx(float(nsd[i]), abs=1e-6)
        assert row["hd95_mm"] > 0


@pytest.mark.parametrize(
    ("pred_on", "ref_on", "expected"),
    [
        (False, False, {"dice": 1.0, "iou": 1.0, "nsd": 1.0, "hd95_mm": 0.0, "note": "both empty"}),
        (
            True,
            False,
            {"dice": 0.0, "iou": 0.0, "nsd": 0.0, "hd95_mm": math.nan, "note": "reference empty"},
        ),
        (
            False,
            True,
            {"dice": 0.0, "iou": 0.0, "nsd": 0.0, "hd95_mm": math.nan, "note": "prediction empty"},
        ),
    ],
)
def test_empty_rules(pred_on: bool, ref_on: bool, expected: dict) -> None:
    blob = cube((16, 16, 16), 4, 5)
    pred = blob if pred_on else np.zeros_like(blob)
    ref = blob if ref_on else np.zeros_like(blob)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MONAI's empty-mask warnings must not fire
        (row,) = case_metrics(pred, ref, ISO, {1: "x"})
    for key, value in expected.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(row[key])
        else:
            assert row[key] == value, key
    assert row["ref_empty"] is (not ref_on)
    assert row["pred_empty"] is (not pred_on)


def test_mixed_classes_and_label_order() -> None:
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[2:8, 2:8, 2:8] = 4
    pred = ref.copy()
    pred[12:15, 12:15, 12:15] = 2  # class 2 only in the prediction
    rows = case_metrics(pred, ref, ISO, {4: "four", 0: "background", 2: "two", 1: "one"})
    assert [r["label"] for r in rows] == [1, 2, 4]  # sorted, background skipped
    one, two, four = rows
    assert one["note"] == "both empty" and one["dice"] == 1.0
    assert two["note"] == "reference empty" and math.isnan(two["hd95_mm"])
    assert four["dice"] == pytest.approx(1.0) and four["hd95_mm"] == 0.0
    assert set(METRIC_NAMES) <= set(four)


def test_rejects_bad_inputs() -> None:
    a = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match=r"same shape.*\(4, 4, 4\).*\(4, 4, 5\)"):
        case_metrics(a, np.zeros((4, 4, 5), np.uint8), ISO, {1: "x"})
    with pytest.raises(ValueError, match="spacing must have one value per spatial axis"):
        case_metrics(a, a, (1.0, 1.0), {1: "x"})
    with pytest.raises(ValueError, match="tolerance_mm"):
        case_metrics(a, a, ISO, {1: "x"}, tolerance_mm=-1.0)
