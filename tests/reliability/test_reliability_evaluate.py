"""evaluate: undeclared labels name their file, label sets, detached-header formats (issue 15 failure 11, issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import yaml
from reliability_helpers import AFFINE

from segfuse.cli import main
from segfuse.evaluation.evaluate import evaluate
from segfuse.io.errors import SegfuseInputError

SHAPE = (12, 10, 8)
LABELS = {1: "Anterior", 2: "Posterior"}


def _label(seed: int = 0) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[2 + seed : 7 + seed, 2:8, 2:6] = 1
    label[3:6, 3:6, 6:8] = 2
    return label


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def _folders(tmp_path: Path, n: int = 2) -> tuple[Path, Path]:
    for i in range(n):
        _save(tmp_path / "ref" / f"c{i}.nii.gz", _label(i))
        _save(tmp_path / "pred" / f"c{i}.nii.gz", _label(i))  # perfect predictions
    return tmp_path / "pred", tmp_path / "ref"


def _dataset_json(tmp_path: Path, nnunet: bool = False) -> Path:
    labels = {"background": 0, "Anterior": 1, "Posterior": 2} if nnunet else {
        "0": "background", "1": "Anterior", "2": "Posterior"}
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": labels}))
    return path


def _evaluate(pred: Path, ref: Path, out: Path, *extra: str) -> int:
    return main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(out), "--no-progress", *extra])


# ---------------------------------------------------------------- failure 11: undeclared labels


def test_a_stray_label_in_a_reference_is_an_error_naming_that_file(tmp_path: Path) -> None:
    pred, ref = _folders(tmp_path)
    stray = _label(1)
    stray[0, 0, 0] = 7
    _save(ref / "c1.nii.gz", stray)
    with pytest.raises(SegfuseInputError) as info:
        evaluate(pred, ref, tmp_path / "eval", labels=LABELS, progress=False)
    assert str(ref / "c1.nii.gz") in str(info.value) and "[7]" in str(info.value)
    assert str(pred / "c1.nii.gz") not in str(info.value)
    assert not (tmp_path / "eval" / "summary.json").exists()


def test_a_reference_with_only_undeclared_values_blames_the_reference(tmp_path: Path) -> None:
    pred, ref = _folders(tmp_path, 1)
    only = (_label(0) > 0).astype(np.uint8) * 7
    _save(ref / "c0.nii.gz", only)
    _save(pred / "c0.nii.gz", only)  # a "perfect" prediction of the stray value
    with pytest.raises(SegfuseInputError) as info:
        evaluate(pred, ref, tmp_path / "eval", labels=LABELS, progress=False)
    assert str(info.value).startswith(f"{ref / 'c0.nii.gz'}: reference")


def test_labels_recorded_by_predict_are_the_default_label_set(tmp_path: Path) -> None:
    """The issue's probe: a stray 7 became a class label_7 and a perfect prediction scored 0.667."""
    pred, ref = _folders(tmp_path)
    (pred / "predictions.json").write_text(json.dumps({"labels": {"0": "background", "1": "core", "2": "rim"}}))
    stray = _label(0)
    stray[0, 0, 0] = 7
    _save(ref / "c0.nii.gz", stray)
    with pytest.raises(SegfuseInputError, match="declared") as info:
        evaluate(pred, ref, tmp_path / "eval", progress=False)
    assert str(ref / "c0.nii.gz") in str(info.value)
    _save(ref / "c0.nii.gz", _label(0))
    evaluate(pred, ref, tmp_path / "eval", progress=False)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert list(summary["classes"]) == ["core", "rim"] and summary["mean_dice"] == 1.0


# ---------------------------------------------------------------- issue 13: --labels, --no-progress, .nhdr/.mhd


@pytest.mark.parametrize("source", ["msd", "nnunet", "run_config"])
def test_labels_from_dataset_json_or_run_config_name_the_classes(tmp_path: Path, source: str, capfd) -> None:
    pred, ref = _folders(tmp_path)
    if source == "run_config":
        labels = tmp_path / "run" / "config.yaml"
        labels.parent.mkdir()
        labels.write_text(yaml.safe_dump({"data": {"labels": {0: "background", 1: "Anterior", 2: "Posterior"}}}))
    else:
        labels = _dataset_json(tmp_path, nnunet=source == "nnunet")
    assert _evaluate(pred, ref, tmp_path / "eval", "--labels", str(labels)) == 0
    captured = capfd.readouterr()
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert list(summary["classes"]) == ["Anterior", "Posterior"] and "label_1" not in captured.out
    assert "Anterior" in captured.out and "%|" not in captured.err  # --no-progress: no bar


def test_progress_bar_is_shown_without_no_progress(tmp_path: Path, capfd) -> None:
    pred, ref = _folders(tmp_path)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(tmp_path / "eval"),
                 "--labels", str(_dataset_json(tmp_path))]) == 0
    assert "evaluate" in capfd.readouterr().err


@pytest.mark.parametrize("suffix", [".nhdr", ".mhd"])
def test_evaluate_reads_detached_header_formats(tmp_path: Path, suffix: str) -> None:
    pred, ref = _folders(tmp_path, 1)
    (pred / "c0.nii.gz").unlink()
    image = sitk.GetImageFromArray(_label(0).transpose(2, 1, 0))
    lps = np.diag([-1.0, -1.0, 1.0]) @ AFFINE[:3, :3]
    spacing = np.sqrt((lps**2).sum(axis=0))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps / spacing).reshape(-1).tolist())
    image.SetOrigin((np.diag([-1.0, -1.0, 1.0]) @ AFFINE[:3, 3]).tolist())
    sitk.WriteImage(image, str(pred / f"c0{suffix}"), useCompression=True)
    assert _evaluate(pred, ref, tmp_path / "eval", "--labels", str(_dataset_json(tmp_path))) == 0
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["mean_dice"] == 1.0


# ---------------------------------------------------------------- cases that already passed


def test_grid_mismatch_is_refused(tmp_path: Path, capsys) -> None:
    pred, ref = _folders(tmp_path, 1)
    moved = AFFINE.copy()
    moved[0, 3] += 3.0
    _save(pred / "c0.nii.gz", _label(0), moved)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(tmp_path / "eval")]) == 2
    assert "not on the same grid" in capsys.readouterr().err


def test_missing_prediction_is_refused_listing_the_case(tmp_path: Path, capsys) -> None:
    pred, ref = _folders(tmp_path, 2)
    (pred / "c1.nii.gz").unlink()
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(tmp_path / "eval")]) == 2
    assert "have no prediction: c1" in capsys.readouterr().err
