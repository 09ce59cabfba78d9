"""The low-resolution simulation (segfuse.data.lowres) and `segfuse resample`."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segfuse.cli import main
from segfuse.data.cases import ImageRef
from segfuse.data.lowres import anti_alias_sigma, simulate_low_resolution, simulate_low_resolution_array
from segfuse.data.preprocess import load_aux
from segfuse.io.geometry import aux_grid, same_grid
from segfuse.io.image import Volume, read_image


def _box(affine: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """World coordinates of the outer corners (voxel edges) of the first and last voxel."""
    lo = affine @ np.array([-0.5, -0.5, -0.5, 1.0])
    hi = affine @ np.array([n - 0.5 for n in shape] + [1.0])
    return lo[:3], hi[:3]


def test_sigma_rule() -> None:
    assert anti_alias_sigma((1, 2, 4)).tolist() == [0.0, 0.5, 1.5]


@pytest.mark.parametrize("shape", [(16, 16, 16), (17, 13, 10)])
def test_constant_volume_stays_constant(shape) -> None:
    volume = Volume(np.full(shape, 7.25, np.float32), np.eye(4))
    low = simulate_low_resolution(volume, (2, 2, 4))
    assert low.shape == tuple(-(-n // s) for n, s in zip(shape, (2, 2, 4), strict=True))
    np.testing.assert_allclose(low.array, 7.25, rtol=0, atol=1e-5)


def test_channels_are_handled_independently() -> None:
    data = np.stack([np.full((8, 8, 8), 1.0), np.full((8, 8, 8), -3.0)], axis=-1).astype(np.float32)
    out = simulate_low_resolution_array(data, (2, 2, 2))
    assert out.shape == (4, 4, 4, 2)
    np.testing.assert_allclose(out[..., 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(out[..., 1], -3.0, atol=1e-6)


def test_output_grid_covers_the_same_field_of_view(oblique_affine: np.ndarray) -> None:
    shape = (40, 36, 24)  # multiples of the scale: the boxes must coincide exactly
    low = simulate_low_resolution(Volume(np.zeros(shape, np.float32), oblique_affine), (2, 3, 4))
    expected_affine, expected_shape = aux_grid(oblique_affine, shape, (2, 3, 4))
    assert low.shape == expected_shape == (20, 12, 6)
    np.testing.assert_allclose(low.affine, expected_affine)
    for a, b in zip(_box(oblique_affine, shape), _box(low.affine, low.shape), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-9)
    np.testing.assert_allclose(low.spacing, np.array([0.8 * 2, 1.2 * 3, 3.0 * 4]))


def test_not_a_multiple_extends_by_less_than_one_coarse_voxel() -> None:
    shape = (17, 13, 10)
    low = simulate_low_resolution(Volume(np.zeros(shape, np.float32), np.eye(4)), (2, 2, 4))
    (lo_in, hi_in), (lo_out, hi_out) = _box(np.eye(4), shape), _box(low.affine, low.shape)
    np.testing.assert_allclose(lo_in, lo_out)
    overhang = hi_out - hi_in
    assert np.all(overhang >= 0) and np.all(overhang < np.array([2, 2, 4]))


def test_linear_ramp_is_sampled_at_block_centres() -> None:
    """Smoothing keeps a ramp, so interior coarse voxels equal the ramp at their block's centre.

    A one-voxel shift of the sampling grid would change every value by 1, 2 or 3.
    """
    x, y, z = np.meshgrid(np.arange(32), np.arange(32), np.arange(32), indexing="ij")
    ramp = (x + 2 * y + 3 * z).astype(np.float32)
    out = simulate_low_resolution_array(ramp, (2, 2, 4))
    i, j, k = np.meshgrid(np.arange(16), np.arange(16), np.arange(8), indexing="ij")
    expected = (2 * i + 0.5) + 2 * (2 * j + 0.5) + 3 * (4 * k + 1.5)
    interior = (slice(2, -2), slice(2, -2), slice(1, -1))
    np.testing.assert_allclose(out[interior], expected[interior], atol=1e-3)


def test_agrees_with_block_averaging_on_a_smooth_volume() -> None:
    """Tolerance: mean |difference| below 1 % of the intensity range (measured 0.12 %)."""
    x, y, z = np.meshgrid(np.arange(64), np.arange(64), np.arange(48), indexing="ij")
    smooth = (np.sin(x / 7.0) + np.cos(y / 5.0) * np.sin(z / 9.0) + 0.02 * x).astype(np.float32)
    out = simulate_low_resolution_array(smooth, (2, 2, 4))
    block = smooth.reshape(32, 2, 32, 2, 12, 4).mean(axis=(1, 3, 5))
    difference = np.abs(out - block)[1:-1, 1:-1, 1:-1].mean() / np.ptp(smooth)
    assert difference < 0.01


def test_written_copy_lies_on_the_aux_grid_of_its_source(tmp_path: Path, oblique_affine: np.ndarray) -> None:
    """`segfuse resample` output is read by preprocessing without any resampling."""
    rng = np.random.default_rng(0)
    shape = (20, 16, 12)
    src = tmp_path / "t2.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(100, 10, shape).astype(np.float32), oblique_affine), src)
    out = tmp_path / "t2_low.nii.gz"
    assert main(["resample", str(src), "--scale", "2", "2", "4", "--out", str(out)]) == 0
    low = read_image(out)
    expected_affine, expected_shape = aux_grid(oblique_affine, shape, (2, 2, 4))
    assert same_grid(low.affine, low.shape, expected_affine, expected_shape, atol=1e-4)
    header, source_header = nib.load(out).header, nib.load(src).header
    for code in ("sform_code", "qform_code"):  # the copy claims what its source claimed, no more
        assert int(header[code]) == int(source_header[code])
    # through preprocessing (canonical primary grid): equal to the canonical reorientation of the copy
    from segfuse.io.geometry import to_canonical

    primary, primary_affine = to_canonical(np.zeros((1, *shape), np.float32), oblique_affine)
    array = load_aux("t2", ImageRef(out), (2, 2, 4), primary_affine, primary.shape[1:])
    canonical, _ = to_canonical(low.array[None], low.affine)
    np.testing.assert_array_equal(array, canonical)


def test_resample_refuses_bad_scale_and_overwriting_the_input(tmp_path: Path, capsys) -> None:
    src = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), src)
    assert main(["resample", str(src), "--scale", "2", "2", "--out", str(tmp_path / "y.nii.gz")]) == 2
    assert "one factor per spatial axis (3), got (2, 2)" in capsys.readouterr().err
    assert main(["resample", str(src), "--scale", "2", "0", "2", "--out", str(tmp_path / "y.nii.gz")]) == 2
    assert "integers >= 1" in capsys.readouterr().err
    assert main(["resample", str(src), "--scale", "2", "2", "2", "--out", str(src)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert not (tmp_path / "y.nii.gz").exists()


@pytest.mark.realdata
def test_reproduces_the_shipped_brats_low_resolution_flair(shared_data: Path) -> None:
    """The shared 2x2x4 mm FLAIRs were made by this rule: mean |difference| < 0.2 % of the mean."""
    subject = sorted((shared_data / "brats18_t1_flair").iterdir())[0]
    fine = read_image(subject / "flair.nii.gz")
    shipped = read_image(subject / "flair_2x2x4mm.nii.gz")
    low = simulate_low_resolution(fine, (2, 2, 4))
    assert same_grid(low.affine, low.shape, shipped.affine, shipped.shape, atol=1e-4)
    relative = np.abs(low.array - shipped.array).mean() / np.abs(shipped.array).mean()
    assert relative < 0.002
