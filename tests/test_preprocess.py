"""Preprocessing on synthetic NIfTI with non-trivial geometry (LPS, 20° oblique, 0.8x0.8x2.5 mm).

Geometry is checked physically: values are functions of the world (RAS mm) position,
so a result is right when it holds those values at its own voxel centres.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segfuse.auxiliary import ModalityNorm
from segfuse.data import preprocess
from segfuse.data.cases import Case, ImageRef
from segfuse.data.preprocess import (
    PreparedCase,
    Preprocessing,
    crop_to_nonzero,
    normalise,
    prepare_case,
    resample,
)
from segfuse.io.errors import SegfuseInputError
from segfuse.io.geometry import (
    aux_grid,
    axcodes,
    describe_affine,
    from_canonical,
    overlap_fraction,
    spacing_from_affine,
    spacing_grid,
    to_canonical,
)

SCALE = (2, 2, 4)
SHAPE = (20, 16, 12)  # a multiple of SCALE: the flipped aux grid is the aux grid of the flipped primary
IDENTITY = ModalityNorm(kind="ct", clip=None, mean=0.0, std=1.0)  # normalise() as a no-op


def rot_z(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def make_affine(direction: np.ndarray, spacing=(0.8, 0.8, 2.5), origin=(31.5, -12.25, 7.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


LPS_OBLIQUE = make_affine(np.diag([-1.0, -1.0, 1.0]) @ rot_z(20.0))
RAS_OBLIQUE = make_affine(rot_z(20.0))


def centres(affine: np.ndarray, shape) -> np.ndarray:
    """World coordinates (3, *shape) of the voxel centres."""
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    return np.einsum("ij,j...->i...", affine[:3, :3], idx) + affine[:3, 3].reshape(3, 1, 1, 1)


def smooth(world: np.ndarray) -> np.ndarray:
    """A smooth, positive physical function (periods 40–70 mm)."""
    x, y, z = world
    return (
        5.0
        + np.sin(2 * np.pi * x / 47 + 0.4)
        + 0.8 * np.cos(2 * np.pi * y / 41 - 0.3)
        + 0.6 * np.sin(2 * np.pi * z / 67 + 1.0)
    )


def block_average(array: np.ndarray, scale) -> np.ndarray:
    return F.avg_pool3d(torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))[None], tuple(scale))[0].numpy()


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.Nifti1Image(np.asarray(array), affine).to_filename(str(path))
    return path


def flip_affine(affine: np.ndarray, shape, axes) -> np.ndarray:
    """Affine of the array flipped along ``axes`` that shows the same physical image."""
    flip = np.eye(4)
    for a in axes:
        flip[a, a] = -1.0
        flip[a, 3] = shape[a] - 1
    return affine @ flip


# -- to_canonical / from_canonical -----------------------------------------------------

PIR = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # axis 0 → P, 1 → I, 2 → R


@pytest.mark.parametrize(
    "affine, codes",
    [
        (make_affine(np.eye(3)), ("R", "A", "S")),
        (make_affine(np.diag([-1.0, -1.0, 1.0])), ("L", "P", "S")),
        (make_affine(PIR), ("P", "I", "R")),
        (LPS_OBLIQUE, ("L", "P", "S")),
    ],
    ids=["RAS", "LPS", "PIR", "oblique-LPS"],
)
def test_ramp_round_trip_through_canonical(affine, codes):
    assert axcodes(affine) == codes
    shape = (5, 6, 7)
    ramp = np.arange(2 * np.prod(shape), dtype=np.float32).reshape(2, *shape)  # two channels
    canon, canon_affine = to_canonical(ramp, affine)
    assert axcodes(canon_affine) == ("R", "A", "S")
    # physically the same image: each canonical voxel holds the source voxel at its world position
    world = centres(canon_affine, canon.shape[1:]).reshape(3, -1)
    src = np.linalg.inv(affine) @ np.vstack([world, np.ones(world.shape[1])])
    src_idx = np.round(src[:3]).astype(int)
    np.testing.assert_allclose(src[:3], src_idx, atol=1e-9)
    np.testing.assert_array_equal(canon.reshape(2, -1), ramp[:, src_idx[0], src_idx[1], src_idx[2]])
    back = from_canonical(canon, canon_affine, affine)
    np.testing.assert_array_equal(back, ramp)


# -- whole cases -----------------------------------------------------------------------


def write_case(folder: Path, affine: np.ndarray, flip_axes=()) -> Case:
    """A case (primary, 2x2x4 edge-aligned aux, label) on ``affine``'s RAS-ordered data, flipped along ``flip_axes``."""
    folder.mkdir(parents=True, exist_ok=True)
    primary = smooth(centres(affine, SHAPE)).astype(np.float32)
    label = np.zeros(SHAPE, np.uint8)
    label[6:13, 3:9, 4:8] = 1
    label[14:16, 10:12, 2:3] = 2
    aux = block_average(primary[None], SCALE)[0]
    aux_affine, aux_shape = aux_grid(affine, SHAPE, SCALE)
    assert aux.shape == aux_shape
    if flip_axes:
        aux_affine = flip_affine(aux_affine, aux_shape, flip_axes)
        affine = flip_affine(affine, SHAPE, flip_axes)
        primary, label, aux = (np.flip(a, flip_axes).copy() for a in (primary, label, aux))
    return Case(
        case_id=folder.name,
        primary=ImageRef(save(folder / "t1.nii.gz", primary, affine)),
        aux={"flair": ImageRef(save(folder / "flair.nii.gz", aux, aux_affine))},
        label=save(folder / "seg.nii.gz", label, affine),
    )


def spec(target_spacing=None, norm=IDENTITY) -> Preprocessing:
    return Preprocessing(
        target_spacing=target_spacing,
        primary_norm=norm,
        aux_scales={"flair": SCALE},
        aux_norms={"flair": norm},
        labels=(0, 1, 2),
    )


@pytest.mark.parametrize("target_spacing", [None, (1.0, 0.7, 2.0)])
def test_lps_case_gives_the_same_arrays_as_the_equivalent_ras_case(tmp_path, target_spacing):
    ras = write_case(tmp_path / "ras", RAS_OBLIQUE)
    lps = write_case(tmp_path / "lps", RAS_OBLIQUE, flip_axes=(0, 1))
    assert axcodes(nib.load(str(lps.primary.path)).affine) == ("L", "P", "S")
    a = prepare_case(ras, spec(target_spacing, ModalityNorm()))
    b = prepare_case(lps, spec(target_spacing, ModalityNorm()))
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)
    np.testing.assert_allclose(a.primary, b.primary, atol=1e-5)
    np.testing.assert_allclose(a.aux["flair"], b.aux["flair"], atol=1e-5)
    np.testing.assert_array_equal(a.label, b.label)
    assert set(np.unique(a.label)) == {0, 1, 2}
    if target_spacing is not None:
        np.testing.assert_allclose(spacing_from_affine(a.affine), target_spacing, atol=1e-9)


def test_lps_aux_already_on_the_edge_aligned_grid_is_not_resampled(tmp_path, monkeypatch):
    case = write_case(tmp_path / "lps", RAS_OBLIQUE, flip_axes=(0, 1))
    calls = []
    real = preprocess.resample
    monkeypatch.setattr(preprocess, "resample", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    prepared = prepare_case(case, spec())
    assert calls == []  # nothing resampled: primary at its spacing, label and aux on their grids
    stored = nib.load(str(case.aux["flair"].path))
    canon, _ = to_canonical(np.asarray(stored.dataobj, dtype=np.float32)[None], stored.affine)
    np.testing.assert_array_equal(prepared.aux["flair"], canon)  # exactly the stored values
    # and it is the block average of the prepared primary, voxel for voxel
    np.testing.assert_allclose(prepared.aux["flair"], block_average(prepared.primary, SCALE), atol=1e-5)
    # after MR normalisation the same data give the same values as normalising the stored array
    mr = prepare_case(case, spec(norm=ModalityNorm()))
    np.testing.assert_array_equal(mr.aux["flair"], normalise(canon, ModalityNorm()))


def test_aux_on_another_grid_is_resampled_by_physical_coordinates(tmp_path):
    folder = tmp_path / "case"
    folder.mkdir()
    primary_affine = LPS_OBLIQUE
    primary = smooth(centres(primary_affine, SHAPE)).astype(np.float32)
    # the auxiliary: a plain RAS grid, 1.9 x 2.1 x 5 mm, shifted, covering the primary's box with room
    box = centres(primary_affine, SHAPE).reshape(3, -1)
    lo, hi = box.min(axis=1) - 8.0, box.max(axis=1) + 8.0
    aux_spacing = np.array([1.9, 2.1, 5.0])
    aux_affine = np.diag([*aux_spacing, 1.0])
    aux_affine[:3, 3] = lo + 0.37
    aux_shape = tuple(int(n) for n in np.ceil((hi - lo) / aux_spacing) + 1)
    aux = smooth(centres(aux_affine, aux_shape)).astype(np.float32)
    case = Case(
        "c",
        primary=ImageRef(save(folder / "t1.nii.gz", primary, primary_affine)),
        aux={"flair": ImageRef(save(folder / "flair.nii.gz", aux, aux_affine))},
    )
    prepared = prepare_case(case, spec())
    grid_affine, grid_shape = aux_grid(prepared.affine, prepared.shape, SCALE)
    assert prepared.aux["flair"].shape == (1, *grid_shape)
    expected = smooth(centres(grid_affine, grid_shape))
    error = np.abs(prepared.aux["flair"][0] - expected)
    # linear interpolation of the smooth function on a ~2x2x5 mm grid: error ~ h^2/8 * |f''| ≈ 0.02
    assert error.max() < 0.05, error.max()
    assert error.mean() < 0.02
    # an array-index (not physical) alignment would be far off
    naive = aux[: grid_shape[0], : grid_shape[1], : grid_shape[2]]
    assert np.abs(naive - expected).mean() > 0.2


def test_resampling_to_a_target_spacing_keeps_the_box_and_a_linear_ramp(tmp_path):
    target = (1.6, 0.4, 1.25)  # divides the 16 x 12.8 x 30 mm box exactly
    canon_affine = to_canonical(np.zeros((1, *SHAPE), np.float32), LPS_OBLIQUE)[1]
    new_affine, new_shape = spacing_grid(canon_affine, SHAPE, target)
    assert new_shape == (10, 32, 24)

    def corners(affine, shape):
        c = np.array(
            [[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5) for k in (-0.5, shape[2] - 0.5)]
        )
        return c @ affine[:3, :3].T + affine[:3, 3]

    np.testing.assert_allclose(corners(new_affine, new_shape), corners(canon_affine, SHAPE), atol=1e-9)

    def ramp(world):
        return 0.5 * world[0] - 0.25 * world[1] + 0.125 * world[2] + 100.0

    folder = tmp_path / "ramp"
    folder.mkdir()
    data = ramp(centres(LPS_OBLIQUE, SHAPE)).astype(np.float32)
    case = Case("r", primary=ImageRef(save(folder / "t1.nii.gz", data, LPS_OBLIQUE)))
    prepared = prepare_case(case, Preprocessing(target_spacing=target, primary_norm=IDENTITY))
    assert prepared.shape == new_shape
    np.testing.assert_allclose(prepared.affine, new_affine, atol=1e-9)
    # interior: new voxel centres inside the hull of the old voxel centres (no zero padding)
    world = centres(prepared.affine, new_shape)
    old_idx = np.einsum("ij,j...->i...", np.linalg.inv(canon_affine)[:3, :3], world) + np.linalg.inv(canon_affine)[
        :3, 3
    ].reshape(3, 1, 1, 1)
    inside = np.all((old_idx >= 0) & (old_idx <= np.reshape(SHAPE, (3, 1, 1, 1)) - 1), axis=0)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(prepared.primary[0][inside], ramp(world)[inside], atol=1e-3)


def test_resample_maps_by_physical_coordinates():
    # the same grid shifted by exactly one voxel along axis 0: a pure index shift
    src_affine = LPS_OBLIQUE
    data = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(1, *SHAPE)
    dst_affine = src_affine.copy()
    dst_affine[:3, 3] = src_affine[:3, :3] @ [1.0, 0.0, 0.0] + src_affine[:3, 3]
    out = resample(data, src_affine, dst_affine, SHAPE, mode="bilinear")
    np.testing.assert_allclose(out[0, :-1], data[0, 1:], atol=1e-3)


def test_label_on_another_grid_is_an_error_naming_both_affines(tmp_path):
    case = write_case(tmp_path / "c", RAS_OBLIQUE)
    label = np.asarray(nib.load(str(case.label)).dataobj)
    wrong = RAS_OBLIQUE.copy()
    wrong[:3, 3] += [0.0, 0.0, 2.5]
    save(case.label, label, wrong)
    with pytest.raises(SegfuseInputError) as info:
        prepare_case(case, spec())
    message = str(info.value)
    assert str(case.label) in message
    assert describe_affine(wrong) in message
    assert describe_affine(RAS_OBLIQUE) in message


def test_aux_covering_less_than_half_the_field_of_view_is_an_error(tmp_path):
    case = write_case(tmp_path / "c", RAS_OBLIQUE)
    aux_path = case.aux["flair"].path
    stored = nib.load(str(aux_path))
    data = np.asarray(stored.dataobj)
    for shift, fails in ((0.3, False), (0.7, True)):
        moved = stored.affine.copy()
        moved[:3, 3] += stored.affine[:3, 0] * data.shape[0] * shift  # slide along its own x axis
        save(aux_path, data, moved)
        if not fails:
            prepare_case(case, spec())
            continue
        dst_affine, dst_shape = aux_grid(RAS_OBLIQUE, SHAPE, SCALE)
        fraction = overlap_fraction(dst_affine, dst_shape, moved, data.shape)
        assert 0.2 < fraction < 0.4
        with pytest.raises(SegfuseInputError) as info:
            prepare_case(case, spec())
        assert f"{fraction:.0%}" in str(info.value)
        assert str(aux_path) in str(info.value)


# -- normalisation ---------------------------------------------------------------------


def test_mr_normalisation_is_a_z_score_over_the_foreground():
    rng = np.random.default_rng(0)
    array = np.zeros((2, 20, 20, 10), np.float32)
    array[0, 4:16, 5:15, 2:8] = rng.normal(300.0, 40.0, (12, 10, 6))
    array[1, 2:10, 2:10, 1:5] = rng.gamma(4.0, 50.0, (8, 8, 4))
    out = normalise(array, ModalityNorm(kind="mr"))
    for c in range(2):
        positive = array[c][array[c] > 0]
        mask = array[c] > preprocess.FOREGROUND_FRACTION * np.percentile(positive, 99)
        assert mask.sum() > 0.9 * positive.size
        assert abs(out[c][mask].mean()) < 1e-4
        assert out[c][mask].std() == pytest.approx(1.0, abs=1e-4)
        # background maps to one value below the foreground's mean
        assert np.all(out[c][array[c] == 0] < -1.0)


def test_ct_normalisation_clips_and_uses_the_dataset_statistics():
    values = np.array([-1000.0, -100.0, 0.0, 40.0, 120.0, 300.0, 2000.0], np.float32)
    array = values.reshape(1, 7, 1, 1)
    out = normalise(array, ModalityNorm(kind="ct", clip=[-100.0, 300.0], mean=40.0, std=80.0))
    np.testing.assert_allclose(out.ravel(), (np.clip(values, -100, 300) - 40.0) / 80.0, rtol=1e-6)


# -- crop_to_nonzero -------------------------------------------------------------------


def test_crop_to_nonzero_keeps_every_auxiliary_exactly_aligned():
    scales = {"flair": (2, 2, 4), "t2": (4, 2, 1)}
    shape = (32, 28, 24)
    rng = np.random.default_rng(0)
    primary = np.zeros((1, *shape), np.float32)
    primary[0, 5:19, 7:21, 6:15] = rng.random((14, 14, 9)) + 0.5
    label = np.zeros(shape, np.uint8)
    label[9:12, 8:10, 7:9] = 1
    affine = RAS_OBLIQUE
    case = PreparedCase(
        "c", primary, {k: block_average(primary, s) for k, s in scales.items()} | {"none": None}, label, affine
    )
    cropped = crop_to_nonzero(case, {**scales, "none": (2, 2, 2)})
    assert cropped.offset == (4, 6, 4)  # multiples of the lcm (4, 2, 4) below the non-zero box
    assert all(o % m == 0 for o, m in zip(cropped.offset, (4, 2, 4), strict=True))
    assert cropped.shape == (16, 16, 12)
    assert cropped.aux["none"] is None
    # nothing non-zero was cut away
    assert np.abs(cropped.primary).sum() == pytest.approx(np.abs(primary).sum())
    np.testing.assert_array_equal(cropped.label.sum(), label.sum())
    for name, s in scales.items():
        np.testing.assert_allclose(cropped.aux[name], block_average(cropped.primary, s), atol=1e-6, err_msg=name)
    # the cropped grid is the old one moved by the offset, physically
    np.testing.assert_allclose(cropped.affine[:3, :3], affine[:3, :3])
    np.testing.assert_allclose(cropped.affine[:3, 3], affine[:3, :3] @ cropped.offset + affine[:3, 3])
