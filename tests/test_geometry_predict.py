"""Predictions land on the exact input grid, whatever the input's orientation.

One physical image is saved as RAS, LPS, PIR and with a 20° oblique affine;
the masks must carry the input's shape, affine and qform/sform codes, and their
voxels must equal the RAS prediction after reorientation. A left-right flipped
copy must give the flipped mask.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from segfuse.config import config_from_dict
from segfuse.factory import build_model
from segfuse.inference.case import case_from_paths, predict_case
from segfuse.inference.model import load_model, model_from_config
from segfuse.io.checkpoint import save_checkpoint

SHAPE = (16, 24, 8)
SPACING = (1.0, 0.8, 2.5)


def _tiny_cfg(**data) -> dict:
    return {
        "data": {"labels": {0: "background", 1: "foreground"}, **data},
        "model": {"encoder_depth": 3, "widen_factor": 0.25, "stem_kernel": 3, "decoder_channels": [16, 8, 8]},
        "training": {"patch_size": [16, 16, 8]},
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    cfg = config_from_dict(_tiny_cfg())
    torch.manual_seed(0)
    net = build_model(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint({"model": net.state_dict(), "config": cfg.to_dict(), "in_channels": 1}, path)
    return path


def _ras_image() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    array = rng.normal(100.0, 30.0, SHAPE).astype(np.float32)
    array[4:12, 6:18, 2:6] += 150.0  # a bright block, so the picture is not pure noise
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = [-7.5, 10.0, -3.0]
    return array, affine


def _reorient(array: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """The same physical image stored with axis codes ``codes`` (array permuted/flipped, affine composed)."""
    transform = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(("R", "A", "S")), nib.orientations.axcodes2ornt(tuple(codes))
    )
    out = nib.orientations.apply_orientation(array, transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, array.shape)
    return np.ascontiguousarray(out), new_affine


def _to_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(("R", "A", "S"))
    )
    return nib.orientations.apply_orientation(array, transform)


def _rotation_z(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return rot


def _save(path: Path, array: np.ndarray, affine: np.ndarray, qcode: int, scode: int) -> Path:
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=qcode)
    image.set_sform(affine, code=scode)
    nib.save(image, path)
    return path


@pytest.mark.parametrize("target_spacing", [None, [1.0, 1.0, 2.0]], ids=["native", "resampled"])
def test_orientations_give_the_ras_mask_on_the_input_grid(checkpoint: Path, tmp_path: Path, target_spacing) -> None:
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["data"]["target_spacing"] = target_spacing
    model = load_model(state)
    ras, affine = _ras_image()
    variants = {
        "RAS": (ras, affine, 1, 1),
        "LPS": (*_reorient(ras, affine, "LPS"), 2, 1),
        "PIR": (*_reorient(ras, affine, "PIR"), 1, 2),
        "oblique": (*_reorient(ras, _rotation_z(20.0) @ affine, "LPI"), 1, 1),
        "oblique_ras": (ras, _rotation_z(20.0) @ affine, 0, 2),
    }
    masks, probs = {}, {}
    for name, (array, aff, qcode, scode) in variants.items():
        src = _save(tmp_path / f"{name}.nii.gz", array, aff, qcode, scode)
        result = predict_case(model, case_from_paths(src), tmp_path / f"{name}_seg.nii.gz", save_probabilities=True)
        out = nib.load(result.label_path)
        src_img = nib.load(src)
        assert out.shape == src_img.shape
        np.testing.assert_allclose(out.affine, src_img.affine, atol=1e-6)
        assert int(out.header["qform_code"]) == int(src_img.header["qform_code"])
        assert int(out.header["sform_code"]) == int(src_img.header["sform_code"])
        assert out.get_data_dtype() == np.uint8
        masks[name] = _to_ras(np.asarray(out.dataobj), out.affine)
        p = nib.load(result.probabilities_path)
        probs[name] = np.stack([_to_ras(np.asarray(p.dataobj)[..., k], p.affine) for k in range(p.shape[-1])])
    assert 0 < masks["RAS"].sum() < masks["RAS"].size or np.unique(probs["RAS"]).size > 2
    for name in variants:
        np.testing.assert_allclose(probs[name], probs["RAS"], atol=1e-5, err_msg=name)
        np.testing.assert_array_equal(masks[name], masks["RAS"], err_msg=name)


class _Bright(torch.nn.Module):
    """Voxel-wise 'model': foreground where the normalised primary is above 0.5."""

    def forward(self, x: torch.Tensor, aux=None) -> torch.Tensor:
        v = x[:, :1] - 0.5
        return torch.cat([-v, v], dim=1) * 10.0


def test_left_right_flipped_copy_gives_flipped_mask(tmp_path: Path) -> None:
    cfg = config_from_dict(_tiny_cfg())
    model = model_from_config(cfg, _Bright())
    _, affine = _ras_image()
    ras = np.zeros(SHAPE, np.float32) + 10.0
    ras[2:7, 3:20, 1:7] = 100.0  # off-centre in x, so flipping changes the mask
    ras[9:11, 5:8, 2:4] = 300.0
    for codes in ("RAS", "PIR"):
        array, aff = _reorient(ras, affine, codes)
        src = _save(tmp_path / f"{codes}.nii.gz", array, aff, 1, 1)
        flipped = _save(tmp_path / f"{codes}_flip.nii.gz", np.ascontiguousarray(array[::-1]), aff, 1, 1)
        a = np.asarray(nib.load(predict_case(model, case_from_paths(src), tmp_path / "a.nii.gz").label_path).dataobj)
        b = np.asarray(
            nib.load(predict_case(model, case_from_paths(flipped), tmp_path / "b.nii.gz").label_path).dataobj
        )
        assert 0 < a.sum() < a.size
        assert not np.array_equal(a, a[::-1])
        np.testing.assert_array_equal(b, a[::-1])
