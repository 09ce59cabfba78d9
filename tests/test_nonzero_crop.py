"""Cropping to the head of a skull-stripped scan: found before normalisation, used by training and prediction.

``crop_to_nonzero`` used to look for zeros after the z-score had moved the background
to ``-mean / std``, so it never cropped (docs/benchmarks.md, "Data at real scale").
The box is now taken from the raw primary (``PreparedCase.nonzero_box``), the store
holds the cropped case, and prediction runs the network on the same box only.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import predict_config

import segfuse.inference.engine as engine
from segfuse.config import config_from_dict
from segfuse.data.cases import Case, ImageRef
from segfuse.data.preprocess import crop_to_nonzero, nonzero_box, prepare_case, preprocessing_from_config
from segfuse.factory import build_model
from segfuse.inference.case import predict_case
from segfuse.io.checkpoint import save_checkpoint
from segfuse.io.geometry import aux_grid

SHAPE = (30, 26, 20)
SCALE = (2, 2, 4)
# LPS on disk, so the box must be found on the canonical (RAS) grid, not on the file's axes
AFFINE = np.array([[-1.0, 0, 0, 40.0], [0, -1.0, 0, 30.0], [0, 0, 1.5, -12.0], [0, 0, 0, 1]])
HEAD = (slice(7, 23), slice(5, 19), slice(3, 15))  # on the file's axes


def write_skull_stripped_case(folder: Path) -> Case:
    """A primary that is exactly zero outside a head box, and a 2 × 2 × 4 FLAIR over the whole field of view."""
    rng = np.random.default_rng(0)
    t1 = np.zeros(SHAPE, np.float32)
    t1[HEAD] = 300.0 + 40.0 * rng.standard_normal(t1[HEAD].shape)
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(t1, AFFINE), folder / "t1.nii.gz")
    flair_affine, flair_shape = aux_grid(AFFINE, SHAPE, SCALE)
    flair = rng.random(flair_shape).astype(np.float32) * 100 + 1
    nib.save(nib.Nifti1Image(flair, flair_affine), folder / "flair.nii.gz")
    return Case("head", ImageRef(folder / "t1.nii.gz"), {"flair": ImageRef(folder / "flair.nii.gz")})


def head_box_canonical() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The head box on the RAS grid: axes 0 and 1 are flipped from LPS."""
    start, stop = [], []
    for axis, (s, n) in enumerate(zip(HEAD, SHAPE, strict=True)):
        if axis < 2:
            start.append(n - s.stop)
            stop.append(n - s.start)
        else:
            start.append(s.start)
            stop.append(s.stop)
    return tuple(start), tuple(stop)


def test_nonzero_box_of_an_array_and_of_nothing():
    array = np.zeros((2, 6, 5, 4), np.float32)
    array[1, 2:4, 1, 3] = -1.0  # a non-zero voxel in any channel counts, negative ones too
    array[0, 5, 2, 0] = 2.0
    assert nonzero_box(array) == ((2, 1, 0), (6, 3, 4))
    assert nonzero_box(np.zeros((1, 3, 3, 3))) is None


def test_prepare_case_finds_the_head_before_normalisation_and_the_crop_uses_it(tmp_path):
    cfg = config_from_dict(predict_config())
    prepared = prepare_case(write_skull_stripped_case(tmp_path), preprocessing_from_config(cfg))
    assert prepared.nonzero_box == head_box_canonical()
    # after the z-score the background is far from zero: the old crop, on these values, found nothing
    assert not np.any(prepared.primary == 0)

    cropped = crop_to_nonzero(prepared, {"flair": SCALE})
    start, stop = head_box_canonical()
    # the box widened to multiples of the auxiliary's scale, never beyond the volume
    assert cropped.offset == tuple(a // s * s for a, s in zip(start, SCALE, strict=True))
    expected_stop = [min(n, -(-b // s) * s) for b, s, n in zip(stop, SCALE, prepared.shape, strict=True)]
    assert cropped.shape == tuple(b - a for a, b in zip(cropped.offset, expected_stop, strict=True))
    assert np.prod(cropped.shape) < 0.5 * np.prod(prepared.shape)
    # the crop is the same voxels, at the same physical place, and the FLAIR stays its block on the crop
    window = tuple(slice(a, a + n) for a, n in zip(cropped.offset, cropped.shape, strict=True))
    np.testing.assert_array_equal(cropped.primary, prepared.primary[(slice(None), *window)])
    np.testing.assert_allclose(cropped.affine[:3, 3], prepared.affine[:3, :3] @ cropped.offset + prepared.affine[:3, 3])
    aux_window = tuple(slice(a // s, a // s + -(-n // s)) for a, n, s in zip(cropped.offset, cropped.shape, SCALE,
                                                                            strict=True))
    np.testing.assert_array_equal(cropped.aux["flair"], prepared.aux["flair"][(slice(None), *aux_window)])
    # the box moves with the crop, and cropping again changes nothing
    assert cropped.nonzero_box == (
        tuple(a - o for a, o in zip(start, cropped.offset, strict=True)),
        tuple(b - o for b, o in zip(stop, cropped.offset, strict=True)),
    )
    assert crop_to_nonzero(cropped, {"flair": SCALE}) is cropped


def test_a_label_outside_the_head_is_kept_by_the_crop(tmp_path):
    cfg = config_from_dict(predict_config())
    prepared = prepare_case(write_skull_stripped_case(tmp_path), preprocessing_from_config(cfg))
    prepared.label = np.zeros(prepared.shape, np.uint8)
    prepared.label[1, 1, 1] = 1  # outside the head box
    cropped = crop_to_nonzero(prepared, {"flair": SCALE})
    assert cropped.offset == (0, 0, 0)
    assert cropped.label.sum() == 1


@pytest.mark.parametrize("mode", ["3d", "2d"])
@pytest.mark.parametrize("regions", [False, True], ids=["softmax", "regions"])
def test_prediction_runs_the_network_on_the_head_box_only_and_outside_is_background(tmp_path, mode, regions):
    cfg_dict = predict_config(mode=mode)
    if regions:
        cfg_dict["data"]["labels"] = {0: "background", 1: "a", 2: "b"}
        cfg_dict["data"]["regions"] = {"whole": [1, 2], "inner": [2]}
    cfg = config_from_dict(cfg_dict)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    prepared = prepare_case(write_skull_stripped_case(tmp_path), preprocessing_from_config(cfg), with_label=False)
    cropped = crop_to_nonzero(prepared, {"flair": SCALE})

    probabilities = engine.predict_prepared(model, cfg, prepared)
    assert probabilities.shape == (2, *prepared.shape)
    window = tuple(slice(a, a + n) for a, n in zip(cropped.offset, cropped.shape, strict=True))
    # inside: exactly what the network gives on the cropped case (the crop training samples from)
    torch.testing.assert_close(probabilities[(slice(None), *window)], engine.predict_prepared(model, cfg, cropped))
    outside = torch.ones(prepared.shape, dtype=torch.bool)
    outside[window] = False
    expected = torch.zeros(probabilities.shape[0])
    if not regions:
        expected[0] = 1.0  # softmax: all background; regions: every sigmoid 0
    torch.testing.assert_close(probabilities[:, outside], expected[:, None].expand(-1, int(outside.sum())))

    # switched off, the network runs over the whole volume (and so predicts something else outside)
    cfg.data.crop_to_nonzero = False
    whole = engine.predict_prepared(model, cfg, prepared)
    assert not torch.allclose(whole[:, outside], probabilities[:, outside])


def test_predict_case_writes_background_outside_the_head_on_the_input_grid(tmp_path):
    cfg = config_from_dict(predict_config())
    torch.manual_seed(0)
    net = build_model(cfg)
    with torch.no_grad():  # a network that calls everything it sees foreground
        net.head.bias.copy_(torch.tensor([-5.0, 5.0]))
    checkpoint = save_checkpoint({"model": net.state_dict(), "config": cfg.to_dict(), "in_channels": 1},
                                 tmp_path / "ckpt.pt")
    case = write_skull_stripped_case(tmp_path / "scans")
    result = predict_case(checkpoint, case, tmp_path / "seg.nii.gz", save_probabilities=True)
    written = nib.load(result.label_path)
    np.testing.assert_array_equal(written.affine, AFFINE)
    assert written.shape == SHAPE
    labels = np.asarray(written.dataobj)
    head = np.zeros(SHAPE, bool)
    head[HEAD] = True
    # every voxel of the head box is inside the crop; outside the crop, nothing but background
    assert labels[head].all()
    assert labels.sum() < np.prod(SHAPE)
    probabilities = np.asarray(nib.load(result.probabilities_path).dataobj)
    assert probabilities.shape == (*SHAPE, 2)
    np.testing.assert_array_equal(probabilities[labels == 0], [[1.0, 0.0]] * int((labels == 0).sum()))
