"""Augmentation keeps the primary, the auxiliaries and the label physically aligned (issue 3).

The key test: make the auxiliary as the 2x2x4 block average of a smooth primary,
augment with every spatial transform forced on, and check that the auxiliary is
still the block average of the augmented primary. The same check run with a
deliberately wrong auxiliary transform must fail, so the test can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segfuse.config import AugmentConfig
from segfuse.data import augment

SPACING = (0.8, 0.8, 2.5)
SCALE = (2, 2, 4)
PATCH = (24, 24, 24)
MARGIN = (8, 8, 8)  # multiples of the scale, as training.batches.augmentation_margin makes them
WINDOW = tuple(p + 2 * m for p, m in zip(PATCH, MARGIN, strict=True))

# Tolerance of the alignment check: mean |aux - block_average(primary)| below 5 % of the
# primary's std. Both sides are interpolated (bilinear) on different grids — the primary at
# 1 voxel, the auxiliary at 2x2x4 voxels — and the rotated averaging block is not the axis-
# aligned one, so they differ by a second-order interpolation error (~1 % here, with
# sinusoid periods of 31–50 voxels). A misalignment is first order: the un-conjugated matrix
# or a one-voxel shift gives 10–35 %.
TOLERANCE = 0.05


def smooth_field(shape: tuple[int, ...]) -> np.ndarray:
    """``(1, *shape)`` float32: a sum of low-frequency sinusoids (no symmetry, non-zero mean)."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    if len(shape) == 2:
        x, y = grids
        f = (
            np.sin(2 * np.pi * x / 36 + 0.3)
            + 0.8 * np.cos(2 * np.pi * y / 31 - 0.7)
            + 0.5 * np.sin(2 * np.pi * (x + y) / 50)
        )
    else:
        x, y, z = grids
        f = (
            np.sin(2 * np.pi * x / 36 + 0.3)
            + 0.8 * np.cos(2 * np.pi * y / 31 - 0.7)
            + 0.6 * np.sin(2 * np.pi * z / 44 + 1.1)
            + 0.5 * np.sin(2 * np.pi * (x + y) / 50)
        )
    return (f + 3.0).astype(np.float32)[None]


def block_average(array: np.ndarray, scale: tuple[int, ...]) -> np.ndarray:
    pool = F.avg_pool3d if len(scale) == 3 else F.avg_pool2d
    return pool(torch.as_tensor(np.ascontiguousarray(array))[None], scale)[0].numpy()


def spatial_only(**kwargs) -> AugmentConfig:
    base = {"flip_prob": 0.5, "rotate_prob": 1.0, "scale_prob": 1.0, "intensity_prob": 0.0}
    base.update(kwargs)
    return AugmentConfig(**base)


def alignment_error(primary_out: np.ndarray, aux_out: np.ndarray, scale, reference: np.ndarray) -> float:
    return float(np.abs(aux_out - block_average(primary_out, scale)).mean() / reference.std())


def _wrong_transform(variant: str, monkeypatch, ndim: int) -> None:
    """Break the auxiliary's transform inside augment_sample (the primary's stays right)."""
    original = augment.apply_spatial
    ones = (1,) * ndim

    def broken(array, params, scale, out_size, mode):
        if tuple(scale) == ones:
            return original(array, params, scale, out_size, mode)
        if variant == "unconjugated":  # A instead of S^-1 A S on the auxiliary grid
            return original(array, params, ones, out_size, mode)
        out = original(array, params, scale, out_size, mode)
        return np.roll(out, 1, axis=1)  # "shifted": one auxiliary voxel along x

    monkeypatch.setattr(augment, "apply_spatial", broken)


@pytest.mark.parametrize("variant", ["correct", "unconjugated", "shifted"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_aux_stays_block_average_of_augmented_primary(variant, seed, monkeypatch):
    primary = smooth_field(WINDOW)
    aux = block_average(primary, SCALE)
    label = np.zeros((1, *WINDOW), np.float32)
    if variant != "correct":
        _wrong_transform(variant, monkeypatch, 3)
    rng = np.random.default_rng(seed)
    p, a, lab = augment.augment_sample(
        primary, {"flair": aux}, label, {"flair": SCALE}, PATCH, SPACING, rng, spatial_only()
    )
    assert p.shape == (1, *PATCH)
    assert a["flair"].shape == (1, 12, 12, 6)
    assert lab.shape == (1, *PATCH)
    # the transform really moved the image (rotation + zoom were forced on)
    centre = primary[(slice(None), *[slice(m, m + s) for m, s in zip(MARGIN, PATCH, strict=True)])]
    assert np.abs(p - centre).mean() > 0.1 * primary.std()
    error = alignment_error(p, a["flair"], SCALE, primary)
    if variant == "correct":
        assert error < TOLERANCE, f"seed {seed}: aux off the block average by {error:.3f} x std"
    else:
        assert error > TOLERANCE, f"seed {seed}: the {variant} transform went unnoticed ({error:.3f} x std)"


def test_two_auxiliaries_at_different_scales_stay_aligned():
    primary = smooth_field(WINDOW)
    scales = {"a": (2, 2, 4), "b": (4, 4, 2)}
    aux = {name: block_average(primary, s) for name, s in scales.items()}
    rng = np.random.default_rng(7)
    p, out, _ = augment.augment_sample(
        primary, aux, np.zeros((1, *WINDOW), np.float32), scales, PATCH, SPACING, rng, spatial_only()
    )
    for name, s in scales.items():
        assert out[name].shape == (1, *[n // k for n, k in zip(PATCH, s, strict=True)])
        assert alignment_error(p, out[name], s, primary) < TOLERANCE


@pytest.mark.parametrize("seed", range(4))
def test_flips_alone_are_exact(seed):
    primary = smooth_field(WINDOW)
    aux = block_average(primary, SCALE)
    label = (primary > 3.0).astype(np.float32)
    cfg = AugmentConfig(flip_prob=1.0, rotate_prob=0.0, scale_prob=0.0, intensity_prob=0.0)
    p, a, lab = augment.augment_sample(
        primary, {"flair": aux}, label, {"flair": SCALE}, PATCH, SPACING, np.random.default_rng(seed), cfg
    )
    centre = (slice(None), *[slice(m, m + s) for m, s in zip(MARGIN, PATCH, strict=True)])
    np.testing.assert_allclose(p, np.flip(primary[centre], axis=(1, 2, 3)), atol=1e-6)
    np.testing.assert_array_equal(lab, np.flip(label[centre], axis=(1, 2, 3)))
    np.testing.assert_allclose(a["flair"], block_average(p, SCALE), atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_labels_stay_integer_and_aligned_after_nearest_neighbour(seed):
    primary = smooth_field(WINDOW)
    # three classes from thresholds of the primary: label and image carry the same structure
    label = np.digitize(primary, [2.5, 3.8]).astype(np.float32)
    p, _, lab = augment.augment_sample(
        primary, {}, label, {}, PATCH, SPACING, np.random.default_rng(seed), spatial_only(flip_prob=0.5)
    )
    assert set(np.unique(lab)) <= {0.0, 1.0, 2.0}
    np.testing.assert_array_equal(lab, np.round(lab))
    # nearest-neighbour label vs bilinear image: only boundary voxels may disagree
    agree = (np.digitize(p, [2.5, 3.8]) == lab).mean()
    assert agree > 0.95


def test_missing_auxiliary_passes_through_as_none():
    primary = smooth_field(WINDOW)
    _, out, _ = augment.augment_sample(
        primary,
        {"flair": None},
        np.zeros((1, *WINDOW), np.float32),
        {"flair": SCALE},
        PATCH,
        SPACING,
        np.random.default_rng(0),
        spatial_only(),
    )
    assert out == {"flair": None}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_2d_aux_stays_block_average(seed):
    patch, margin, scale = (32, 32), (8, 8), (2, 2)
    window = tuple(p + 2 * m for p, m in zip(patch, margin, strict=True))
    primary = smooth_field(window)
    aux = block_average(primary, scale)
    # anisotropic in-plane spacing: the rotation is conjugated by the voxel size
    spacing = (0.8, 2.5)
    p, a, lab = augment.augment_sample(
        primary,
        {"flair": aux},
        np.zeros((1, *window), np.float32),
        {"flair": scale},
        patch,
        spacing,
        np.random.default_rng(seed),
        spatial_only(),
    )
    assert p.shape == (1, 32, 32) and a["flair"].shape == (1, 16, 16) and lab.shape == (1, 32, 32)
    assert alignment_error(p, a["flair"], scale, primary) < TOLERANCE


def test_2d_unconjugated_matrix_fails_with_anisotropic_scale(monkeypatch):
    # with an isotropic scale (2, 2), S^-1 A S == A, so the mutant needs an anisotropic one
    patch, margin, scale = (32, 32), (8, 8), (2, 4)
    window = tuple(p + 2 * m for p, m in zip(patch, margin, strict=True))
    primary = smooth_field(window)
    aux = block_average(primary, scale)
    args = ({"flair": aux}, np.zeros((1, *window), np.float32), {"flair": scale}, patch, (0.8, 0.8))
    p, a, _ = augment.augment_sample(primary, *args, np.random.default_rng(1), spatial_only())
    assert alignment_error(p, a["flair"], scale, primary) < TOLERANCE
    _wrong_transform("unconjugated", monkeypatch, 2)
    p, a, _ = augment.augment_sample(primary, *args, np.random.default_rng(1), spatial_only())
    assert alignment_error(p, a["flair"], scale, primary) > TOLERANCE
