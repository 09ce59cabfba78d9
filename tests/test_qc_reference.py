"""QC pictures with the reference: its outline over the prediction and an error column."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from matplotlib.image import imread

from segfuse.cli import main
from segfuse.config import config_from_dict
from segfuse.factory import build_model
from segfuse.inference.predict import predict
from segfuse.inference.qc import render_qc, save_qc_png
from segfuse.io.checkpoint import save_checkpoint

SHAPE = (24, 20, 10)


def _masks() -> tuple[np.ndarray, np.ndarray]:
    pred = np.zeros(SHAPE, np.uint8)
    pred[6:14, 5:12, 3:7] = 1
    ref = pred.copy()
    ref[14:18, 5:12, 3:7] = 1  # missed by the prediction
    ref[6:9, 5:8, 3:7] = 2  # wrong class
    return pred, ref


def _contours(ax, gid: str) -> list:
    return [c for c in ax.collections if c.get_gid() == gid]


def test_every_panel_shows_the_reference_outline_and_the_errors() -> None:
    pred, ref = _masks()
    primary = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    aux = {"flair": np.ones((12, 10, 3), np.float32)}
    fig = render_qc(primary, aux, pred, 3, scales={"flair": (2, 2, 4)}, reference=ref)
    axes = np.asarray(fig.axes).reshape(-1, 3)  # rows of: primary, flair, errors
    for ax in axes[:, :2].flat:
        assert _contours(ax, "reference"), "every image panel carries the reference outline"
    for ax in axes[:, 2]:
        assert _contours(ax, "reference") and _contours(ax, "prediction")
        assert "slice Dice" in ax.get_title()
    # The outline follows the reference: class 1 spans x 6..17 and y 5..11 (voxel centres),
    # class 2 x 6..8, y 5..7; the level-0.5 lines lie half a voxel outside.
    ones, twos = (np.concatenate([p.vertices for p in c.get_paths()]) for c in _contours(axes[0, 2], "reference"))
    assert (ones.min(0), ones.max(0)) == (pytest.approx([5.5, 4.5], abs=0.01), pytest.approx([17.5, 11.5], abs=0.01))
    assert (twos.min(0), twos.max(0)) == (pytest.approx([5.5, 4.5], abs=0.01), pytest.approx([8.5, 7.5], abs=0.01))
    # the error overlay: missed (1), extra (2), wrong class (3) where the masks say
    errors = next(im for im in axes[0, 2].images if im.get_gid() == "errors")
    kinds = np.ma.filled(errors.get_array(), 0).T  # back to (X, Y)
    assert set(np.unique(kinds)) == {0, 1, 3}
    assert (kinds == 1).sum() == 4 * 7 and (kinds == 3).sum() == 3 * 3
    assert kinds[15, 8] == 1 and kinds[7, 6] == 3 and kinds[10, 8] == 0


def test_picture_differs_where_the_reference_differs(tmp_path: Path) -> None:
    pred, ref = _masks()
    primary = np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)
    same = imread(save_qc_png(primary, {}, pred, tmp_path / "same.png", reference=pred))
    other = imread(save_qc_png(primary, {}, pred, tmp_path / "other.png", reference=ref))
    plain = imread(save_qc_png(primary, {}, pred, tmp_path / "plain.png"))
    assert same.shape == other.shape and plain.shape[1] < same.shape[1]  # an error column more
    changed = np.abs(same - other).sum(axis=-1) > 0.05
    assert changed.any()
    # no error shown where the reference agrees: the agreeing render has no error colour
    fig = render_qc(primary, {}, pred, reference=pred)
    errors = [im for ax in fig.axes for im in ax.images if im.get_gid() == "errors"]
    assert errors and all(np.ma.count(im.get_array()) == 0 for im in errors)


def test_rows_include_slices_the_prediction_missed() -> None:
    pred = np.zeros(SHAPE, np.uint8)
    pred[5:10, 5:10, 1:3] = 1
    ref = pred.copy()
    ref[5:10, 5:10, 7:9] = 1  # slices without any prediction
    fig = render_qc(np.zeros(SHAPE, np.float32), {}, pred, 5, reference=ref)
    rows = {int(ax.get_ylabel().split("=")[1]) for ax in fig.axes if ax.get_ylabel()}
    assert rows & {7, 8}


# ------------------------------------------------------------------ predict and evaluate


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    cfg = config_from_dict(
        {
            "data": {"labels": {0: "background", 1: "lesion"}},
            "model": {"encoder_depth": 2, "widen_factor": 0.25, "stem_kernel": 3, "decoder_channels": [8, 8]},
            "training": {"patch_size": [16, 16, 8]},
        }
    )
    torch.manual_seed(0)
    net = build_model(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "m.pt"
    return save_checkpoint({"model": net.state_dict(), "config": cfg.to_dict(), "in_channels": 1}, path)


def _dataset(folder: Path, labelled: bool) -> Path:
    folder.mkdir(parents=True)
    affine = np.diag([-1.0, 1.2, 2.0, 1.0])
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(image, affine), folder / "c0.nii.gz")
    label = np.zeros(SHAPE, np.uint8)
    label[4:12, 4:12, 2:6] = 1
    nib.save(nib.Nifti1Image(label, affine), folder / "c0_seg.nii.gz")
    lines = ["case_id,primary,label", "c0,c0.nii.gz,c0_seg.nii.gz"] if labelled else ["case_id,primary", "c0,c0.nii.gz"]
    (folder / "cases.csv").write_text("\n".join(lines) + "\n")
    return folder / "cases.csv"


def test_predict_qc_on_a_labelled_dataset_adds_the_reference(ckpt: Path, tmp_path: Path) -> None:
    with_ref = predict(ckpt, _dataset(tmp_path / "a", True), tmp_path / "pa", qc=True, progress=False)
    without = predict(ckpt, _dataset(tmp_path / "b", False), tmp_path / "pb", qc=True, progress=False)
    assert with_ref.ok and without.ok
    a = imread(tmp_path / "pa" / "qc" / "c0.png")
    b = imread(tmp_path / "pb" / "qc" / "c0.png")
    assert a.shape[1] > b.shape[1]  # the error column


def test_evaluate_qc_writes_a_picture_per_case(tmp_path: Path, capsys) -> None:
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    pred, ref = _masks()
    for folder, array in (("pred", pred), ("ref", ref)):
        (tmp_path / folder).mkdir()
        for case in ("a", "b"):
            nib.save(nib.Nifti1Image(array, affine), tmp_path / folder / f"{case}.nii.gz")
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
                 "--out", str(tmp_path / "eval"), "--qc"])  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "eval" / "qc").iterdir()) == ["a.png", "b.png"]
    picture = imread(tmp_path / "eval" / "qc" / "a.png")
    assert picture.shape[1] > picture.shape[0] / 3  # two columns: labels and errors
