"""End-to-end tests for segfuse.evaluation.evaluate on synthetic NIfTI cases."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segfuse.evaluation.evaluate import EvaluationResult, evaluate
from segfuse.io.errors import SegfuseInputError
from segfuse.io.geometry import describe_affine
from segfuse.io.image import read_image, write_image

SHAPE = (24, 24, 16)
AFFINE = np.array(
    [[-1.5, 0, 0, 30.0], [0, 1.0, 0, -12.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]], dtype=np.float64
)
LABELS = {1: "core", 2: "edema"}


def save(path: Path, arr: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), affine), path)
    return path


def ball(centre: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.indices(SHAPE, dtype=np.float64)
    c = np.asarray(centre, dtype=np.float64).reshape(3, 1, 1, 1)
    return ((grid - c) ** 2).sum(axis=0) <= radius**2


def make_cases(root: Path) -> tuple[Path, Path]:
    """Three cases; case_c's prediction misses class 2, so its HD95 is NaN."""
    specs = {
        "case_a": ((12, 12, 8), (13, 12, 8), True),
        "case_b": ((10, 11, 7), (10, 13, 8), True),
        "case_c": ((14, 12, 9), (12, 12, 9), False),
    }
    for case, (c_ref, c_pred, pred_has_edema) in specs.items():
        ref = np.zeros(SHAPE, np.uint8)
        ref[ball(c_ref, 6)] = 2
        ref[ball(c_ref, 3)] = 1
        pred = np.zeros(SHAPE, np.uint8)
        if pred_has_edema:
            pred[ball(c_pred, 5)] = 2
        pred[ball(c_pred, 3)] = 1
        save(root / "ref" / f"{case}.nii.gz", ref)
        save(root / "pred" / f"{case}.nii.gz", pred)
    return root / "pred", root / "ref"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_end_to_end_outputs_agree(tmp_path: Path) -> None:
    pred, ref = make_cases(tmp_path)
    out = tmp_path / "eval"
    result = evaluate(pred, ref, out, labels=LABELS, tolerance_mm=2.0, progress=False)

    assert isinstance(result, EvaluationResult)
    rows = read_csv(out / "per_case.csv")
    assert len(rows) == 6 == len(result.rows)
    assert [(r["case_id"], r["label"]) for r in rows] == [
        (c, lab) for c in ("case_a", "case_b", "case_c") for lab in ("1", "2")
    ]
    assert list(rows[0]) == [
        "case_id", "label", "name", "dice", "iou", "hd95_mm", "nsd",
        "volume_pred_ml", "volume_ref_ml", "volume_diff_ml", "ref_empty", "pred_empty", "note",
    ]  # fmt: skip

    summary = json.loads((out / "summary.json").read_text())
    assert summary == result.summary
    assert summary["n_cases"] == 3 and summary["tolerance_mm"] == 2.0
    for value, name in LABELS.items():
        own = [r for r in rows if r["label"] == str(value)]
        stats = summary["classes"][name]["metrics"]
        for metric in ("dice", "iou", "nsd", "hd95_mm", "volume_ref_ml", "volume_diff_ml"):
            values = np.array([float(r[metric]) for r in own])
            finite = values[~np.isnan(values)]
            assert stats[metric]["mean"] == pytest.approx(finite.mean()), (name, metric)
            assert stats[metric]["std"] == pytest.approx(finite.std())
            assert stats[metric]["median"] == pytest.approx(np.median(finite))
            assert stats[metric]["min"] == pytest.approx(finite.min())
            assert stats[metric]["max"] == pytest.approx(finite.max())
            assert stats[metric]["n"] == finite.size
            assert stats[metric]["n_nan"] == values.size - finite.size
    # case_c has no predicted edema: Dice 0, HD95 NaN, excluded and counted.
    edema_c = next(r for r in rows if r["case_id"] == "case_c" and r["label"] == "2")
    assert edema_c["note"] == "prediction empty" and float(edema_c["dice"]) == 0.0
    assert math.isnan(float(edema_c["hd95_mm"]))
    assert summary["classes"]["edema"]["metrics"]["hd95_mm"]["n_nan"] == 1
    assert summary["classes"]["edema"]["metrics"]["hd95_mm"]["n"] == 2
    assert summary["classes"]["edema"]["metrics"]["dice"]["n"] == 3
    class_means = [summary["classes"][n]["metrics"]["dice"]["mean"] for n in LABELS.values()]
    assert summary["mean_dice"] == pytest.approx(np.mean(class_means))
    # Volumes use the affine's voxel size (1.5 x 1 x 2 mm = 3 mm^3).
    core_a = next(r for r in result.rows if r["case_id"] == "case_a" and r["label"] == 1)
    ref_a = np.asarray(nib.load(tmp_path / "ref" / "case_a.nii.gz").dataobj)
    assert core_a["volume_ref_ml"] == pytest.approx((ref_a == 1).sum() * 3.0 / 1000)

    png = out / "dice_boxplot.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = result.table()
    assert "core" in table and "edema" in table and "±" in table and "1 NaN" in table
    assert not list(out.glob(".tmp-*"))  # atomic writes leave no temporaries


def test_default_labels_come_from_references(tmp_path: Path) -> None:
    pred, ref = make_cases(tmp_path)
    result = evaluate(pred, ref, tmp_path / "eval", progress=False)
    assert result.summary["labels"] == {"1": "label_1", "2": "label_2"}
    assert {r["name"] for r in result.rows} == {"label_1", "label_2"}


def test_missing_predictions_are_all_listed(tmp_path: Path) -> None:
    pred, ref = make_cases(tmp_path)
    (pred / "case_a.nii.gz").unlink()
    (pred / "case_c.nii.gz").unlink()
    with pytest.raises(
        SegfuseInputError, match=r"2 reference case\(s\) have no prediction: case_a, case_c"
    ):
        evaluate(pred, ref, tmp_path / "eval", labels=LABELS, progress=False)
    assert not (tmp_path / "eval" / "per_case.csv").exists()


def test_prediction_without_reference_is_a_warning(tmp_path: Path) -> None:
    pred, ref = make_cases(tmp_path)
    save(pred / "extra_case.nii.gz", np.zeros(SHAPE, np.uint8))
    (pred / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="no reference.*extra_case"):
        result = evaluate(pred, ref, tmp_path / "eval", labels=LABELS, progress=False)
    assert {r["case_id"] for r in result.rows} == {"case_a", "case_b", "case_c"}
    assert any("extra_case" in w for w in result.warnings)
    assert any("extra_case" in w for w in result.summary["warnings"])


def test_grid_mismatch_names_case_shapes_and_affines(tmp_path: Path) -> None:
    pred, ref = make_cases(tmp_path)
    moved = AFFINE.copy()
    moved[0, 3] += 3.0
    arr = np.asarray(nib.load(pred / "case_b.nii.gz").dataobj)
    save(pred / "case_b.nii.gz", arr, moved)
    with pytest.raises(SegfuseInputError) as info:
        evaluate(pred, ref, tmp_path / "eval", labels=LABELS, progress=False)
    msg = str(info.value)
    assert "case_b" in msg and "same grid" in msg
    assert describe_affine(moved) in msg and describe_affine(AFFINE) in msg
    assert msg.count(str(SHAPE)) == 2

    save(pred / "case_b.nii.gz", np.zeros((24, 24, 15), np.uint8))
    with pytest.raises(SegfuseInputError, match=r"shape \(24, 24, 15\).*shape \(24, 24, 16\)"):
        evaluate(pred, ref, tmp_path / "eval", labels=LABELS, progress=False)


def test_unknown_label_values_are_listed(tmp_path: Path) -> None:
    pred, ref = make_cases(tmp_path)
    arr = np.asarray(nib.load(pred / "case_a.nii.gz").dataobj).copy()
    arr[0, 0, 0], arr[1, 1, 1] = 5, 7
    save(pred / "case_a.nii.gz", arr)
    with pytest.raises(SegfuseInputError, match=r"case_a.*label values \[5, 7\].*\[1, 2\]"):
        evaluate(pred, ref, tmp_path / "eval", labels=LABELS, progress=False)
    # With default labels the prediction still may not invent classes.
    with pytest.raises(SegfuseInputError, match=r"\[5, 7\]"):
        evaluate(pred, ref, tmp_path / "eval", progress=False)


def test_manifest_csv_input(tmp_path: Path) -> None:
    pred, ref = make_cases(tmp_path / "data")
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.write_text(
        "case_id,pred,ref\n"
        + "".join(f"{c},pred/{c}.nii.gz,ref/{c}.nii.gz\n" for c in ("case_b", "case_a"))
    )
    result = evaluate(manifest, None, tmp_path / "eval", labels=LABELS, progress=False)
    assert sorted({r["case_id"] for r in result.rows}) == ["case_a", "case_b"]
    assert result.summary["n_cases"] == 2
    from_folders = evaluate(pred, ref, tmp_path / "eval2", labels=LABELS, progress=False)
    expected = [r for r in from_folders.rows if r["case_id"] != "case_c"]
    assert result.rows == expected

    manifest.write_text("case_id,pred,ref\ncase_a,,ref/case_a.nii.gz\ncase_b,,ref/case_b.nii.gz\n")
    with pytest.raises(SegfuseInputError, match="no prediction: case_a, case_b"):
        evaluate(manifest, None, tmp_path / "eval", labels=LABELS, progress=False)
    manifest.write_text("case,prediction\nx,y\n")
    with pytest.raises(SegfuseInputError, match="columns must include case_id,pred,ref"):
        evaluate(manifest, None, tmp_path / "eval", progress=False)


def test_mixed_formats_match_by_case_id(tmp_path: Path) -> None:
    pred, ref = make_cases(tmp_path)
    vol = read_image(pred / "case_a.nii.gz")
    (pred / "case_a.nii.gz").unlink()
    write_image(vol.array, vol, pred / "case_a.mha", dtype=np.uint8)
    vol_b = read_image(pred / "case_b.nii.gz")
    (pred / "case_b.nii.gz").unlink()
    write_image(vol_b.array, vol_b, pred / "case_b.nrrd", dtype=np.uint8)
    result = evaluate(pred, ref, tmp_path / "eval", labels=LABELS, progress=False)
    assert {r["case_id"] for r in result.rows} == {"case_a", "case_b", "case_c"}
