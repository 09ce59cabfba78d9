"""Grid geometry: the edge-aligned auxiliary grid contract and field-of-view overlap."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segfuse.io import (
    aux_grid,
    axcodes,
    describe_affine,
    overlap_fraction,
    same_grid,
    scale_between,
    spacing_from_affine,
)

BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])


def test_aux_grid_brats_geometry() -> None:
    affine, shape = aux_grid(BRATS_AFFINE, (240, 240, 155), (2, 2, 4))
    assert shape == (120, 120, 39)
    expected = np.array([[-2.0, 0, 0, -0.5], [0, -2.0, 0, 238.5], [0, 0, 4.0, 1.5], [0, 0, 0, 1.0]])
    np.testing.assert_allclose(affine, expected, atol=1e-12)


@pytest.mark.parametrize(
    ("shape", "scale", "expected_shape"),
    [
        ((7, 6, 5), (2, 2, 4), (4, 3, 2)),
        ((8, 8, 8), (1, 1, 1), (8, 8, 8)),
        ((9, 4), (3, 2), (3, 2)),
    ],
)
def test_aux_grid_shape_is_ceil(
    shape: tuple[int, ...], scale: tuple[int, ...], expected_shape: tuple[int, ...]
) -> None:
    _, aux_shape = aux_grid(np.eye(4), shape, scale)
    assert aux_shape == expected_shape


@pytest.mark.parametrize("scale", [(2, 2), (0, 1, 1), (1.5, 1, 1)])
def test_aux_grid_rejects_bad_scale(scale: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="scale"):
        aux_grid(np.eye(4), (4, 4, 4), scale)


def test_block_average_lands_on_aux_voxel_centres(oblique_affine: np.ndarray) -> None:
    """avg_pool over a world-coordinate ramp gives each aux voxel's own centre."""
    shape, scale = (7, 6, 5), (2, 2, 4)
    aux_affine, aux_shape = aux_grid(oblique_affine, shape, scale)
    # Pad to a multiple of the scale by extending the ramp (the grid continues past the edge).
    padded = tuple(n * s for n, s in zip(aux_shape, scale, strict=True))
    index = np.stack(np.meshgrid(*[np.arange(n) for n in padded], indexing="ij"), axis=-1)
    world = index @ oblique_affine[:3, :3].T + oblique_affine[:3, 3]  # (X, Y, Z, 3)
    ramp = torch.from_numpy(np.moveaxis(world, -1, 0)[None])  # (1, 3, X, Y, Z)
    pooled = F.avg_pool3d(ramp, kernel_size=scale, stride=scale)[0].numpy()
    assert pooled.shape[1:] == aux_shape
    aux_index = np.stack(np.meshgrid(*[np.arange(n) for n in aux_shape], indexing="ij"), -1)
    aux_world = aux_index @ aux_affine[:3, :3].T + aux_affine[:3, 3]
    np.testing.assert_allclose(np.moveaxis(pooled, 0, -1), aux_world, atol=1e-9)


def test_spacing_axcodes_scale_and_description(oblique_affine: np.ndarray) -> None:
    np.testing.assert_allclose(spacing_from_affine(oblique_affine), [0.8, 1.2, 3.0])
    assert axcodes(BRATS_AFFINE) == ("L", "P", "S")
    np.testing.assert_allclose(scale_between((1.0, 1.0, 1.0), (2.0, 2.0, 4.0)), [2, 2, 4])
    with pytest.raises(ValueError, match="primary"):
        scale_between((1.0, 1.0), (2.0, 2.0, 4.0))
    text = describe_affine(BRATS_AFFINE)
    assert "239" in text and "LPS" in text and "1x1x1 mm" in text


def test_same_grid() -> None:
    shifted = BRATS_AFFINE.copy()
    shifted[0, 3] += 1e-3
    assert same_grid(BRATS_AFFINE, (240, 240, 155), BRATS_AFFINE.copy(), (240, 240, 155))
    assert not same_grid(BRATS_AFFINE, (240, 240, 155), BRATS_AFFINE, (240, 240, 154))
    assert not same_grid(BRATS_AFFINE, (240, 240, 155), shifted, (240, 240, 155))
    assert same_grid(BRATS_AFFINE, (240, 240, 155), shifted, (240, 240, 155), atol=1e-2)


def _shifted(affine: np.ndarray, voxels: tuple[float, float, float]) -> np.ndarray:
    out = affine.copy()
    out[:3, 3] += affine[:3, :3] @ np.asarray(voxels)
    return out


def test_overlap_fraction_identical_half_and_disjoint(oblique_affine: np.ndarray) -> None:
    shape = (20, 16, 10)
    for affine in (np.eye(4), oblique_affine):
        assert overlap_fraction(affine, shape, affine, shape) == 1.0
        half = overlap_fraction(affine, shape, _shifted(affine, (10, 0, 0)), shape)
        assert half == pytest.approx(0.5, abs=0.03)
        assert overlap_fraction(affine, shape, _shifted(affine, (25, 0, 0)), shape) == 0.0


def test_overlap_fraction_oblique_versus_axis_aligned() -> None:
    """A box rotated 45 degrees in-plane inside a much larger axis-aligned box: fully covered;
    the big box seen from the small one: covered by the small box's area share."""
    angle = np.deg2rad(45.0)
    small = np.eye(4)
    small[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    big = np.eye(4)
    big[:3, 3] = [-50.0, -50.0, -0.0]
    assert overlap_fraction(small, (10, 10, 4), big, (100, 100, 4)) == 1.0
    share = overlap_fraction(big, (100, 100, 4), small, (10, 10, 4))
    assert share == pytest.approx(100 / 10000, abs=0.005)


def test_overlap_fraction_different_resolutions() -> None:
    """A 2 mm grid covering the same box as a 1 mm grid overlaps fully both ways."""
    aux_affine, aux_shape = aux_grid(BRATS_AFFINE, (240, 240, 156), (2, 2, 4))
    assert overlap_fraction(BRATS_AFFINE, (240, 240, 156), aux_affine, aux_shape) == 1.0
    assert overlap_fraction(aux_affine, aux_shape, BRATS_AFFINE, (240, 240, 156)) == 1.0


@pytest.mark.realdata
def test_brats_flair_2x2x4_is_aux_grid_of_t1(shared_data: Path) -> None:
    cases = sorted(p for p in (shared_data / "brats18_t1_flair").glob("*") if p.is_dir())
    cases = [
        c for c in cases if (c / "t1.nii.gz").exists() and (c / "flair_2x2x4mm.nii.gz").exists()
    ]
    if not cases:
        pytest.skip(f"no BraTS cases with t1 and flair_2x2x4mm under {shared_data}")
    for case in cases:
        t1 = nib.load(case / "t1.nii.gz")  # headers only: no voxel data is decoded
        flair = nib.load(case / "flair_2x2x4mm.nii.gz")
        affine, shape = aux_grid(t1.affine, t1.shape[:3], (2, 2, 4))
        assert shape == flair.shape[:3], case.name
        np.testing.assert_allclose(affine, flair.affine, atol=1e-4, err_msg=case.name)
