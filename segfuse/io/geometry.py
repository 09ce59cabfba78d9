"""Voxel-grid geometry: spacing, orientation, the canonical (RAS) frame, auxiliary grids and overlap checks.

All affines are 4x4 voxel index -> RAS millimetre matrices (nibabel's convention).
Shapes are spatial shapes: ``(X, Y, Z)`` or ``(X, Y)`` (a 2D grid uses the first
two columns of its 4x4 affine; its third axis is a unit axis).
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np

__all__ = [
    "aux_grid",
    "axcodes",
    "canonical_grid",
    "describe_affine",
    "from_canonical",
    "overlap_fraction",
    "same_grid",
    "scale_between",
    "spacing_from_affine",
    "spacing_grid",
    "to_canonical",
]

# Samples per axis used by overlap_fraction (at most; fewer for small grids).
_OVERLAP_SAMPLES = 48


def _as_affine(affine: np.ndarray, name: str = "affine") -> np.ndarray:
    arr = np.asarray(affine, dtype=np.float64)
    if arr.shape != (4, 4):
        raise ValueError(f"{name} must be a 4x4 matrix, got shape {arr.shape}")
    return arr


def _as_shape(shape: Sequence[int], name: str = "shape") -> tuple[int, ...]:
    dims = tuple(int(s) for s in shape)
    if not 1 <= len(dims) <= 3 or any(s < 1 for s in dims):
        raise ValueError(f"{name} must be 1 to 3 positive sizes, got {tuple(shape)}")
    return dims


def spacing_from_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel sizes in mm along the three voxel axes (column norms of the 3x3 block).

    Example:
        >>> spacing_from_affine(np.diag([-1.0, 2.0, 4.0, 1.0]))
        array([1., 2., 4.])
    """
    aff = _as_affine(affine)
    return np.sqrt((aff[:3, :3] ** 2).sum(axis=0))


def axcodes(affine: np.ndarray) -> tuple[str, ...]:
    """Orientation codes of the voxel axes, e.g. ``("L", "P", "S")`` (nibabel.aff2axcodes).

    Example:
        >>> axcodes(np.diag([-1.0, -1.0, 1.0, 1.0]))
        ('L', 'P', 'S')
    """
    return tuple(str(code) for code in nib.aff2axcodes(_as_affine(affine)))


# -- the canonical frame: flips and axis permutations to RAS, exact ------------------------


def to_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient ``array`` ``(C, X, Y, Z)`` to RAS by flips and axis permutations only (exact)."""
    ornt = nib.orientations.io_orientation(affine)
    target = nib.orientations.axcodes2ornt(("R", "A", "S"))
    transform = nib.orientations.ornt_transform(ornt, target)
    spatial = array.shape[1:]
    out = np.stack([nib.orientations.apply_orientation(c, transform) for c in array])
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, spatial)
    return np.ascontiguousarray(out), new_affine


def from_canonical(array: np.ndarray, canonical_affine: np.ndarray, source_affine: np.ndarray) -> np.ndarray:
    """Invert :func:`to_canonical`: ``array`` ``(C, *canonical)`` back to the source axes."""
    ornt_source = nib.orientations.io_orientation(source_affine)
    ornt_canon = nib.orientations.io_orientation(canonical_affine)
    transform = nib.orientations.ornt_transform(ornt_canon, ornt_source)
    return np.ascontiguousarray(np.stack([nib.orientations.apply_orientation(c, transform) for c in array]))


def canonical_grid(affine: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, tuple[int, ...]]:
    """The grid :func:`to_canonical` gives, from geometry alone.

    Example:
        >>> canonical_grid(np.diag([-1.0, -1.0, 2.0, 1.0]), (4, 5, 6))[1]
        (4, 5, 6)
    """
    ornt = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(("R", "A", "S")))
    new_shape = [0] * len(shape)
    for axis, (target, _) in enumerate(transform):
        new_shape[int(target)] = int(shape[axis])
    return affine @ nib.orientations.inv_ornt_aff(transform, tuple(shape)), tuple(new_shape)


def spacing_grid(affine: np.ndarray, shape: Sequence[int], spacing: Sequence[float]) -> tuple[np.ndarray, tuple]:
    """The grid with voxel size ``spacing`` covering the same box as ``(affine, shape)``.

    The box's outer edge is kept: the new first voxel's edge sits on the old one's.
    """
    old = spacing_from_affine(affine)
    new = np.asarray(spacing, dtype=float)
    new_shape = tuple(max(1, round(n * o / s)) for n, o, s in zip(shape, old, new, strict=True))
    direction = affine[:3, :3] / old
    out = np.eye(4)
    out[:3, :3] = direction * new
    edge = affine[:3, :3] @ (-0.5 * np.ones(3)) + affine[:3, 3]
    out[:3, 3] = edge + out[:3, :3] @ (0.5 * np.ones(3))
    return out, new_shape


def aux_grid(
    primary_affine: np.ndarray, primary_shape: Sequence[int], scale: Sequence[float]
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The edge-aligned auxiliary grid with integer ``scale`` over a primary grid.

    Aux voxel ``i`` covers primary voxels ``[i*s, (i+1)*s)`` on each axis, so its
    centre sits at primary index ``i*s + (s-1)/2`` (docs/architecture.md)::

        aux_affine = primary_affine @ [[diag(scale), (scale - 1) / 2], [0, 1]]
        aux_shape  = ceil(primary_shape / scale)

    Args:
        primary_affine: 4x4 voxel -> RAS mm affine of the primary grid.
        primary_shape: spatial shape of the primary, ``(X, Y, Z)`` or ``(X, Y)``.
        scale: positive integer factor per spatial axis (same length as the shape).

    Example:
        >>> aff, shape = aux_grid(np.diag([1.0, 1.0, 1.0, 1.0]), (240, 240, 155), (2, 2, 4))
        >>> shape
        (120, 120, 39)
    """
    aff = _as_affine(primary_affine, "primary_affine")
    shape = _as_shape(primary_shape, "primary_shape")
    factors = np.asarray(scale, dtype=np.float64).reshape(-1)
    if factors.shape != (len(shape),):
        raise ValueError(
            f"scale must have one factor per spatial axis ({len(shape)}), got {tuple(scale)}"
        )
    if np.any(factors < 1) or not np.allclose(factors, np.round(factors)):
        raise ValueError(f"scale factors must be integers >= 1, got {tuple(scale)}")
    factors = np.round(factors)
    step = np.eye(4)
    ndim = len(shape)
    step[range(ndim), range(ndim)] = factors
    step[:ndim, 3] = (factors - 1.0) / 2.0
    aux_shape = tuple(int(np.ceil(n / f)) for n, f in zip(shape, factors, strict=True))
    return aff @ step, aux_shape


def scale_between(primary_spacing: Sequence[float], aux_spacing: Sequence[float]) -> np.ndarray:
    """Per-axis ratio ``aux_spacing / primary_spacing`` (e.g. 1 mm vs 2x2x4 mm -> [2, 2, 4]).

    Example:
        >>> scale_between((1.0, 1.0, 1.0), (2.0, 2.0, 4.0))
        array([2., 2., 4.])
    """
    prim = np.asarray(primary_spacing, dtype=np.float64)
    aux = np.asarray(aux_spacing, dtype=np.float64)
    if prim.shape != aux.shape:
        raise ValueError(
            f"spacings differ in length: primary {tuple(prim)} vs auxiliary {tuple(aux)}"
        )
    if np.any(prim <= 0) or np.any(aux <= 0):
        raise ValueError(
            f"spacings must be positive: primary {tuple(prim)}, auxiliary {tuple(aux)}"
        )
    return aux / prim


def same_grid(
    affine_a: np.ndarray,
    shape_a: Sequence[int],
    affine_b: np.ndarray,
    shape_b: Sequence[int],
    atol: float = 1e-4,
) -> bool:
    """True when both grids have the same spatial shape and affines equal within ``atol`` mm.

    Example:
        >>> same_grid(np.eye(4), (4, 4, 4), np.eye(4), (4, 4, 4))
        True
    """
    if tuple(int(s) for s in shape_a) != tuple(int(s) for s in shape_b):
        return False
    return bool(np.allclose(_as_affine(affine_a), _as_affine(affine_b), rtol=0.0, atol=atol))


def _pad3(shape: tuple[int, ...]) -> np.ndarray:
    return np.array(shape + (1,) * (3 - len(shape)), dtype=np.float64)


def overlap_fraction(
    affine_a: np.ndarray,
    shape_a: Sequence[int],
    affine_b: np.ndarray,
    shape_b: Sequence[int],
) -> float:
    """Fraction (0..1) of grid A's field of view that lies inside grid B's field of view.

    The field of view of a grid is the physical box spanned by its voxels,
    ``[-0.5, shape - 0.5]`` in voxel coordinates. A regular grid of sample points
    (cell centres, up to 48 per axis) over A's box is mapped into B's voxel
    coordinates; the result is the share that falls inside B's box. Works for
    oblique and differently oriented affines.

    Example:
        >>> overlap_fraction(np.eye(4), (10, 10, 10), np.eye(4), (10, 10, 10))
        1.0
    """
    aff_a = _as_affine(affine_a, "affine_a")
    aff_b = _as_affine(affine_b, "affine_b")
    dims_a = _pad3(_as_shape(shape_a, "shape_a"))
    dims_b = _pad3(_as_shape(shape_b, "shape_b"))
    if abs(np.linalg.det(aff_b[:3, :3])) < 1e-12:
        raise ValueError(f"affine_b is singular: {describe_affine(aff_b)}")
    axes = []
    for size in dims_a:
        count = int(min(size, _OVERLAP_SAMPLES))
        axes.append((np.arange(count) + 0.5) / count * size - 0.5)
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    a_to_b = np.linalg.inv(aff_b) @ aff_a
    coords = grid @ a_to_b[:3, :3].T + a_to_b[:3, 3]
    eps = 1e-6
    inside = np.all((coords >= -0.5 - eps) & (coords <= dims_b - 0.5 + eps), axis=1)
    return float(inside.mean())


def describe_affine(affine: np.ndarray) -> str:
    """One-line rendering of an affine for error messages: rows, orientation, spacing.

    Example:
        >>> describe_affine(np.diag([-1.0, -1.0, 2.0, 1.0]))
        '[[-1 0 0 0] [0 -1 0 0] [0 0 2 0]] (LPS, spacing 1x1x2 mm)'
    """
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        return f"<not a 4x4 affine: shape {aff.shape}>"
    rows = " ".join("[" + " ".join(f"{v:.6g}" for v in (row + 0.0)) + "]" for row in aff[:3])
    if not np.all(np.isfinite(aff)):
        return f"[{rows}] (non-finite)"
    spacing = "x".join(f"{v:.4g}" for v in spacing_from_affine(aff))
    try:
        codes = "".join(c if c is not None else "?" for c in nib.aff2axcodes(aff))
    except Exception:  # degenerate affines have no orientation
        codes = "no orientation"
    return f"[{rows}] ({codes}, spacing {spacing} mm)"
