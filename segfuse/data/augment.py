"""Augmentation that keeps the primary, every auxiliary and the label physically aligned.

Spatial transforms are drawn once per sample as a matrix ``A`` acting on centred
primary voxel coordinates and applied to each input through MONAI's
:class:`~monai.transforms.Affine`. An auxiliary at per-axis scale ``s`` has voxel
coordinates ``u = x / s`` around the same centre (edge-aligned windows share
their centre), so it receives ``S⁻¹ A S`` with ``S = diag(s)``: the same physical
rotation and zoom, sampled on its own coarser grid. Flips are exact on every
grid because windows are multiples of every scale. Intensity transforms act on
each input separately, as a scanner would. All randomness comes from one
``numpy.random.Generator`` so a resumed run replays the same samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SpatialParams:
    """A drawn spatial transform: matrix on centred primary voxel coordinates and flips."""

    matrix: np.ndarray | None
    flips: tuple[int, ...]


def rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """Rotation by ``angles`` (radians) about x, y, z (3D) or a single angle (2D)."""
    if len(angles) == 1:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def draw_spatial(rng: np.random.Generator, cfg, spacing: Sequence[float]) -> SpatialParams:
    """Draw rotation/zoom/flips from :class:`segfuse.config.AugmentConfig` ``cfg``.

    The rotation is physical: with anisotropic ``spacing`` it is conjugated by the
    voxel size, so a 10° rotation stays a 10° rotation in millimetres.
    """
    ndim = len(spacing)
    matrix = None
    rotate = rng.random() < cfg.rotate_prob
    zoom = rng.random() < cfg.scale_prob
    if rotate or zoom:
        n_angles = 1 if ndim == 2 else 3
        limit = math.radians(cfg.rotate_degrees)
        angles = rng.uniform(-limit, limit, n_angles) if rotate else np.zeros(n_angles)
        factor = rng.uniform(*cfg.scale_range) if zoom else 1.0
        d = np.diag(np.asarray(spacing, dtype=float))
        # maps output (patch) coordinates to input coordinates: zoom > 1 magnifies
        matrix = np.linalg.inv(d) @ rotation_matrix(angles) @ d / factor
    flips = tuple(axis for axis in range(ndim) if rng.random() < cfg.flip_prob)
    return SpatialParams(matrix=matrix, flips=flips)


def apply_spatial(
    array: np.ndarray, params: SpatialParams, scale: Sequence[int], out_size: Sequence[int], mode: str
) -> np.ndarray:
    """Transform ``array`` ``(C, *window)`` on a grid of ``scale`` and crop its centre to ``out_size``.

    ``window`` is larger than ``out_size`` by a margin so rotated corners are filled
    with real image instead of padding.
    """
    if params.matrix is None:
        start = [(w - o) // 2 for w, o in zip(array.shape[1:], out_size, strict=True)]
        out = array[(slice(None), *[slice(a, a + o) for a, o in zip(start, out_size, strict=True)])]
    else:
        from monai.transforms import Affine

        s = np.diag(np.asarray(scale, dtype=float))
        ndim = len(scale)
        homogeneous = np.eye(ndim + 1)
        homogeneous[:ndim, :ndim] = np.linalg.inv(s) @ params.matrix @ s
        transform = Affine(
            affine=torch.as_tensor(homogeneous, dtype=torch.float32),
            spatial_size=tuple(out_size),
            mode=mode,
            padding_mode="border" if mode != "nearest" else "zeros",
            image_only=True,
        )
        out = transform(torch.as_tensor(np.ascontiguousarray(array))).numpy()
    for axis in params.flips:
        out = np.flip(out, axis=axis + 1)
    return np.ascontiguousarray(out, dtype=array.dtype)


def augment_intensity_2d(array: np.ndarray, rng: np.random.Generator, cfg) -> np.ndarray:
    """albumentations' brightness/contrast and Gaussian noise on a 2D input ``(C, H, W)``.

    Seeded from ``rng`` on every call, so a resumed run replays the same draws.
    Intensity-only on purpose: albumentations' spatial transforms cannot keep an
    auxiliary on a coarser grid aligned, so the spatial part stays in
    :func:`apply_spatial`.
    """
    import albumentations as A

    pipeline = A.Compose(
        [
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, brightness_by_max=False,
                                       p=cfg.intensity_prob),
            A.GaussNoise(std_range=(0.0, cfg.noise_std), p=cfg.intensity_prob),
        ],
        seed=int(rng.integers(2**31)),
    )
    image = np.ascontiguousarray(np.moveaxis(array, 0, -1), dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(pipeline(image=image)["image"], -1, 0), dtype=np.float32)


def augment_intensity(array: np.ndarray, rng: np.random.Generator, cfg) -> np.ndarray:
    """Noise, brightness and gamma on one normalised input ``(C, *spatial)``, each with ``cfg.intensity_prob``.

    2D inputs go through albumentations (:func:`augment_intensity_2d`) for noise and
    brightness/contrast; gamma is applied here for both.
    """
    if array.ndim == 3:
        out = augment_intensity_2d(array, rng, cfg)
    else:
        out = array
        if rng.random() < cfg.intensity_prob:
            sigma = rng.uniform(0, cfg.noise_std)
            out = out + rng.normal(0.0, sigma, size=out.shape).astype(np.float32)
        if rng.random() < cfg.intensity_prob:
            out = out * np.float32(rng.uniform(0.75, 1.25))
    if rng.random() < cfg.intensity_prob:
        gamma = rng.uniform(*cfg.gamma_range)
        lo, hi = float(out.min()), float(out.max())
        if hi > lo:
            out = ((out - lo) / (hi - lo)) ** gamma * (hi - lo) + lo
    return out.astype(np.float32, copy=False)


def augment_sample(
    primary: np.ndarray,
    aux: Mapping[str, np.ndarray | None],
    label: np.ndarray,
    scales: Mapping[str, Sequence[int]],
    out_size: Sequence[int],
    spacing: Sequence[float],
    rng: np.random.Generator,
    cfg,
) -> tuple[np.ndarray, dict[str, np.ndarray | None], np.ndarray]:
    """Apply one drawn spatial transform to all inputs, then intensity augmentation per input.

    Shapes: ``primary`` ``(C, *window)``, ``aux[name]`` ``(C_a, *window / scale)``,
    ``label`` ``(1, *window)`` → the same with ``out_size`` in place of ``window``.
    """
    ndim = len(out_size)
    params = draw_spatial(rng, cfg, spacing)
    ones = (1,) * ndim
    primary = augment_intensity(apply_spatial(primary, params, ones, out_size, "bilinear"), rng, cfg)
    label = apply_spatial(label, params, ones, out_size, "nearest")
    out_aux: dict[str, np.ndarray | None] = {}
    for name, array in aux.items():  # in order: the intensity draws come from one generator
        s = scales[name]
        size = [o // si for o, si in zip(out_size, s, strict=True)]
        out_aux[name] = None if array is None else augment_intensity(
            apply_spatial(array, params, s, size, "bilinear"), rng, cfg
        )
    return primary, out_aux, label
