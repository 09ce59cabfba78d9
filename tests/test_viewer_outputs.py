"""Viewer-ready outputs: Slicer .seg.nrrd segmentations, ITK-SNAP label files, Slicer colour tables."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch

from segfuse.cli import main
from segfuse.config import config_from_dict
from segfuse.factory import build_model
from segfuse.inference.case import case_from_paths, predict_case
from segfuse.io.checkpoint import save_checkpoint
from segfuse.io.errors import SegfuseInputError
from segfuse.io.image import Volume, read_image
from segfuse.io.label_tables import (
    ITKSNAP_NAME,
    SLICER_NAME,
    label_colours,
    read_itksnap_labels,
    read_slicer_color_table,
    write_label_tables,
)
from segfuse.io.segmentation_nrrd import read_slicer_segmentation, write_slicer_segmentation

LABELS = {0: "background", 1: "left hippocampus", 2: "Posterior"}
SHAPE = (20, 18, 12)


def _volume(affine: np.ndarray, shape=SHAPE) -> Volume:
    return Volume(array=np.zeros(shape, np.float32), affine=affine, path=None, header=None)


@pytest.fixture(scope="module")
def named_ckpt(tmp_path_factory) -> Path:
    cfg = config_from_dict(
        {
            "data": {"labels": LABELS},
            "model": {"encoder_depth": 2, "widen_factor": 0.25, "stem_kernel": 3, "decoder_channels": [8, 8]},
            "training": {"patch_size": [16, 16, 8]},
        }
    )
    torch.manual_seed(0)
    net = build_model(cfg)
    with torch.no_grad():  # a head biased so that every class wins somewhere
        net.head.bias.copy_(torch.tensor([0.0, 0.05, -0.05]))
    path = tmp_path_factory.mktemp("ckpt") / "named.pt"
    return save_checkpoint({"model": net.state_dict(), "config": cfg.to_dict(), "in_channels": 1}, path)


def _scan(folder: Path, affine: np.ndarray, name: str = "case") -> Path:
    rng = np.random.default_rng(0)
    array = rng.normal(100, 30, SHAPE).astype(np.float32)
    array[5:15, 4:12, 3:9] += 150
    path = folder / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


# ------------------------------------------------------------------ .seg.nrrd


def test_slicer_segmentation_fields_and_geometry(tmp_path: Path, oblique_affine: np.ndarray) -> None:
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:6, 3:9, 1:4] = 1
    path = write_slicer_segmentation(labels, _volume(oblique_affine), tmp_path / "x.seg.nrrd", LABELS)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    meta = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    assert meta["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert meta["Segment0_Name"] == "left hippocampus" and meta["Segment1_Name"] == "Posterior"
    assert meta["Segment0_LabelValue"] == "1" and meta["Segment1_LabelValue"] == "2"
    assert meta["Segment0_Layer"] == meta["Segment1_Layer"] == "0"
    assert meta["Segment0_ID"] == "Segment_1"
    assert meta["Segment0_Extent"] == "2 5 3 8 1 3"
    assert meta["Segment1_Extent"] == "0 -1 0 -1 0 -1"  # a class absent from this case keeps its segment
    r, g, b = label_colours([0, 1, 2])[1]
    assert [float(c) for c in meta["Segment0_Color"].split()] == pytest.approx([r / 255, g / 255, b / 255], abs=1e-5)
    assert "Segment2_ID" not in meta
    volume, segments = read_slicer_segmentation(path)
    assert [(s.name, s.label_value) for s in segments] == [("left hippocampus", 1), ("Posterior", 2)]
    np.testing.assert_array_equal(volume.array, labels)
    np.testing.assert_allclose(volume.affine, oblique_affine, atol=1e-5)
    assert not list(tmp_path.glob(".tmp-*"))


def test_slicer_segmentation_rejects_unnamed_values_and_wrong_suffix(tmp_path: Path) -> None:
    labels = np.zeros(SHAPE, np.uint8)
    labels[0, 0, 0] = 7
    with pytest.raises(SegfuseInputError, match=r"label values \[7\] have no name"):
        write_slicer_segmentation(labels, _volume(np.eye(4)), tmp_path / "x.seg.nrrd", LABELS)
    with pytest.raises(SegfuseInputError, match=r"must end in \.seg\.nrrd"):
        write_slicer_segmentation(labels, _volume(np.eye(4)), tmp_path / "x.nrrd", LABELS)
    assert not list(tmp_path.iterdir())


def test_predict_writes_a_named_slicer_segmentation(
    named_ckpt: Path, tmp_path: Path, oblique_affine: np.ndarray
) -> None:
    scan = _scan(tmp_path, oblique_affine, "scan")
    case = case_from_paths(scan)
    plain = predict_case(named_ckpt, case, tmp_path / "case.nii.gz")
    seg = predict_case(named_ckpt, case, tmp_path / "case.seg.nrrd", qc_path=True)
    assert seg.qc_path == tmp_path / "case_qc.png"
    volume, segments = read_slicer_segmentation(seg.label_path)
    expected = read_image(plain.label_path)
    np.testing.assert_array_equal(volume.array, expected.array)  # same labels as the NIfTI output
    np.testing.assert_allclose(volume.affine, read_image(scan).affine, atol=1e-5)  # the input's exact grid
    assert volume.shape == SHAPE
    assert [(s.name, s.label_value) for s in segments] == [("left hippocampus", 1), ("Posterior", 2)]
    present = set(np.unique(volume.array).tolist()) - {0}
    for s in segments:
        if s.label_value in present:
            box = np.argwhere(volume.array == s.label_value)
            assert s.extent == tuple(int(v) for pair in zip(box.min(0), box.max(0), strict=True) for v in pair)


# ------------------------------------------------------------------ label tables


def test_label_tables_round_trip(tmp_path: Path) -> None:
    paths = write_label_tables(tmp_path, {1: "left hippocampus", 2: "Posterior"})
    assert paths == {"itksnap": tmp_path / ITKSNAP_NAME, "slicer": tmp_path / SLICER_NAME}
    colours = label_colours([0, 1, 2])
    itk = read_itksnap_labels(paths["itksnap"])
    assert itk == {
        0: ("Clear Label", (0, 0, 0), 0.0),
        1: ("left hippocampus", colours[1], 1.0),
        2: ("Posterior", colours[2], 1.0),
    }
    slicer = read_slicer_color_table(paths["slicer"])
    assert slicer == {
        0: ("background", (0, 0, 0), 0),
        1: ("left_hippocampus", colours[1], 255),
        2: ("Posterior", colours[2], 255),
    }
    assert colours[1] != colours[2]
    with pytest.raises(SegfuseInputError, match="does not exist"):
        write_label_tables(tmp_path / "absent", {1: "a"})


def test_cli_labels_file_beside_a_dataset_and_a_single_case(named_ckpt: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    affine = np.diag([1.0, 1.2, 2.0, 1.0])
    for i in range(2):
        _scan(data, affine, f"c{i}")
    manifest = data / "cases.csv"
    manifest.write_text("case_id,primary\nc0,c0.nii.gz\nc1,c1.nii.gz\n")
    out = tmp_path / "preds"
    code = main(["predict", "--checkpoint", str(named_ckpt), "--dataset", str(manifest), "--out", str(out),
                 "--labels-file", "--no-progress"])  # fmt: skip
    assert code == 0
    assert read_itksnap_labels(out / ITKSNAP_NAME)[1][0] == "left hippocampus"
    assert read_slicer_color_table(out / SLICER_NAME)[2][0] == "Posterior"
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["c0.nii.gz", "c1.nii.gz"]
    single = tmp_path / "single"
    single.mkdir()
    code = main(["predict", "--checkpoint", str(named_ckpt), "--image", str(data / "c0.nii.gz"),
                 "--out", str(single / "c0.seg.nrrd"), "--labels-file", "--no-progress"])  # fmt: skip
    assert code == 0
    assert {p.name for p in single.iterdir()} == {"c0.seg.nrrd", ITKSNAP_NAME, SLICER_NAME}
    assert "labels_itksnap.txt" in capsys.readouterr().out
