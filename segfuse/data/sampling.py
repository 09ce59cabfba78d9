"""Training patches: foreground oversampling, exact multi-resolution windows, modality dropout.

A patch of the primary starts on a multiple of ``L`` (the per-axis lcm of the
auxiliary scales) and has a size that is a multiple of ``L``, so each
auxiliary's window — start ``p / s``, size ``P / s`` — is exactly the physical
sub-block of the primary's. Windows are cut with an extra margin that the
spatial augmentation turns into real context before cropping to the patch.

Cases are seen through :class:`PaddedCase`: the case zero-padded by the margin
and up to the patch, as a *view*. Padding is done per window
(:class:`PaddedArray` reads the part of a window that lies inside the array
and fills the rest with zeros), so no padded copy of a case is ever made, and
an array may be a memory-mapped ``.npy`` file of the preprocessed store
(:mod:`segfuse.data.store`) that is opened for each read: a process holds only
the windows it samples, never whole cases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segfuse.auxiliary import lcm_of_scales
from segfuse.data.augment import augment_sample
from segfuse.data.aux_slices import aux_slice
from segfuse.data.preprocess import PreparedCase

MAX_FOREGROUND_POINTS = 20_000

ArrayBase = np.ndarray | Path | None


def _open(base: np.ndarray | Path) -> np.ndarray:
    """The array itself, or the ``.npy`` file memory-mapped (read only; the map closes with the array)."""
    return base if isinstance(base, np.ndarray) else np.load(base, mmap_mode="r")


class PaddedArray:
    """A read-only, zero-padded view of an array ``(*base_shape)``: the padded copy is never made.

    Indexing (slices with step 1, integers, one-dimensional integer arrays, as numpy
    does them) behaves as on ``np.pad(base, [(b, shape - base_shape - b)])`` and
    returns a new ``numpy`` array: the part of the request that lies inside the base
    is read (for a ``.npy`` path: from a fresh memory map), the rest is zeros.

    Args:
        base: the array, the path of a ``.npy`` file, or ``None`` (all zeros).
        base_shape: the base's shape.
        dtype: the base's dtype.
        before: padding before each axis (same length as ``base_shape``).
        shape: the padded shape (``>= before + base_shape`` per axis).
    """

    def __init__(
        self, base: ArrayBase, base_shape: Sequence[int], dtype: Any, before: Sequence[int], shape: Sequence[int]
    ) -> None:
        self.base = base
        self.base_shape = tuple(int(n) for n in base_shape)
        self.dtype = np.dtype(dtype)
        self.before = tuple(int(b) for b in before)
        self.shape = tuple(int(n) for n in shape)
        if not len(self.base_shape) == len(self.before) == len(self.shape):
            raise ValueError(f"PaddedArray: base_shape {base_shape}, before {before}, shape {shape} differ in length")
        if any(b < 0 or b + n > m for b, n, m in zip(self.before, self.base_shape, self.shape, strict=True)):
            raise ValueError(f"PaddedArray: base {self.base_shape} at {self.before} does not fit in {self.shape}")

    @classmethod
    def of(cls, array: np.ndarray, before: Sequence[int], shape: Sequence[int]) -> PaddedArray:
        """A padded view of an in-memory ``array``."""
        return cls(array, array.shape, array.dtype, before, shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _read(self, ranges: Sequence[tuple[int, int]]) -> np.ndarray:
        """The padded array's box ``[lo, hi)`` per axis."""
        out_shape = [hi - lo for lo, hi in ranges]
        src, dst = [], []
        for (lo, hi), b, n in zip(ranges, self.before, self.base_shape, strict=True):
            a, z = max(lo, b), min(hi, b + n)
            if z <= a or self.base is None:
                return np.zeros(out_shape, self.dtype)
            src.append(slice(a - b, z - b))
            dst.append(slice(a - lo, z - lo))
        base = _open(self.base)
        if all(d.stop - d.start == o for d, o in zip(dst, out_shape, strict=True)):
            return np.array(base[tuple(src)])  # wholly inside: one copy, no padding
        out = np.zeros(out_shape, self.dtype)
        out[tuple(dst)] = base[tuple(src)]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) > self.ndim:
            raise IndexError(f"PaddedArray: {len(key)} indices for {self.ndim} axes")
        key = key + (slice(None),) * (self.ndim - len(key))
        ranges, relative = [], []
        for k, n in zip(key, self.shape, strict=True):
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step != 1:
                    raise IndexError("PaddedArray: slices with a step are not supported")
                ranges.append((start, max(start, stop)))
                relative.append(slice(None))
            elif isinstance(k, int | np.integer):
                i = int(k) + (n if k < 0 else 0)
                if not 0 <= i < n:
                    raise IndexError(f"PaddedArray: index {int(k)} out of range for an axis of {n}")
                ranges.append((i, i + 1))
                relative.append(0)
            else:
                index = np.asarray(k)
                if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer) or index.size == 0:
                    raise IndexError("PaddedArray: only non-empty 1D integer index arrays are supported")
                index = np.where(index < 0, index + n, index)
                if index.min() < 0 or index.max() >= n:
                    raise IndexError(f"PaddedArray: index array out of range for an axis of {n}")
                lo = int(index.min())
                ranges.append((lo, int(index.max()) + 1))
                relative.append(index - lo)
        return self._read(ranges)[tuple(relative)]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[()]
        return out if dtype is None else out.astype(dtype)


class ForegroundPoints:
    """Voxel indices ``(N, 3)`` of one label value, read lazily and shifted by ``offset``.

    ``points[i]`` is the ``i``-th point plus ``offset`` (int64): the coordinates in
    a :class:`PaddedCase` whose padding before is ``offset``.
    """

    def __init__(self, base: np.ndarray | Path, count: int, offset: Sequence[int]) -> None:
        self.base = base
        self.count = int(count)
        self.offset = np.asarray(offset, dtype=np.int64)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(_open(self.base)[i], dtype=np.int64) + self.offset


@dataclass
class PaddedCase:
    """A case seen padded so any window with its margin lies inside the arrays (a view: see the module docstring).

    ``primary`` ``(C, *padded)``, ``aux[name]`` ``(C_a, *padded / scale)`` or ``None``,
    ``label`` ``(*padded)`` (zeros when the case has none), ``foreground``: label value →
    its voxels in padded coordinates.
    """

    case_id: str
    primary: PaddedArray
    aux: dict[str, PaddedArray | None]
    label: PaddedArray
    spacing: tuple[float, ...]
    foreground: dict[int, ForegroundPoints]


def foreground_points(label: np.ndarray) -> dict[int, np.ndarray]:
    """Voxel indices ``(N, 3)`` (int64) of each non-zero value of ``label`` ``(X, Y, Z)``.

    At most :data:`MAX_FOREGROUND_POINTS` per value, drawn by a generator seeded with 0
    (values in ascending order), so the points are a function of the label alone.
    """
    foreground: dict[int, np.ndarray] = {}
    rng = np.random.default_rng(0)
    for value in np.unique(label):
        if value == 0:
            continue
        points = np.argwhere(label == value)
        if len(points) > MAX_FOREGROUND_POINTS:
            points = points[rng.choice(len(points), MAX_FOREGROUND_POINTS, replace=False)]
        foreground[int(value)] = points
    return foreground


def padding(
    shape: Sequence[int], scales: Mapping[str, Sequence[int]], patch: Sequence[int], margin: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Zeros ``(before, after)`` per axis: ``margin`` before; after, up to ``patch`` and a multiple of the lcm,
    plus ``margin``."""
    lcm = lcm_of_scales(scales)
    before = [int(m) for m in margin]
    after = []
    for n, p, m, step in zip(shape, patch, margin, lcm, strict=True):
        total = max(n, p)
        total = -(-total // step) * step
        after.append(int(total - n + m))
    return before, after


def padded_view(
    case_id: str,
    shape: Sequence[int],
    affine: np.ndarray,
    primary: tuple[ArrayBase, Sequence[int], Any],
    aux: Mapping[str, tuple[ArrayBase, Sequence[int], Any] | None],
    label: tuple[ArrayBase, Sequence[int], Any] | None,
    foreground: Mapping[int, tuple[np.ndarray | Path, int]],
    scales: Mapping[str, Sequence[int]],
    patch: Sequence[int],
    margin: Sequence[int],
) -> PaddedCase:
    """A :class:`PaddedCase` over arrays given as ``(base, base_shape, dtype)`` (see :class:`PaddedArray`).

    ``shape``: the primary's spatial shape; ``foreground``: value → ``(points (N, 3) or
    their ``.npy`` path, N)`` in the case's own (unpadded) coordinates.
    """
    before, after = padding(shape, scales, patch, margin)
    total = [n + b + a for n, b, a in zip(shape, before, after, strict=True)]
    base, base_shape, dtype = primary
    primary_view = PaddedArray(base, base_shape, dtype, [0, *before], [base_shape[0], *total])
    if label is None:
        label_view = PaddedArray(None, shape, np.uint8, before, total)
    else:
        label_view = PaddedArray(label[0], label[1], label[2], before, total)
    aux_views: dict[str, PaddedArray | None] = {}
    for name, entry in aux.items():
        if entry is None:
            aux_views[name] = None
            continue
        s = scales[name]
        base, base_shape, dtype = entry
        target = [t // si for t, si in zip(total, s, strict=True)]
        aux_before = [b // si for b, si in zip(before, s, strict=True)]
        aux_views[name] = PaddedArray(base, base_shape, dtype, [0, *aux_before], [base_shape[0], *target])
    spacing = tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    points = {int(v): ForegroundPoints(p, n, before) for v, (p, n) in foreground.items()}
    return PaddedCase(case_id, primary_view, aux_views, label_view, spacing, points)


def pad_case(case: PreparedCase, scales: Mapping[str, Sequence[int]], patch: Sequence[int], margin: Sequence[int]):
    """``case`` padded (zeros) by ``margin`` before and after, and up to ``patch`` — all multiples of the lcm.

    A view over the case's arrays (:class:`PaddedCase`); nothing is copied.
    """
    label = case.label
    foreground = {v: (p, len(p)) for v, p in foreground_points(label).items()} if label is not None else {}
    return padded_view(
        case.case_id,
        case.shape,
        case.affine,
        (case.primary, case.primary.shape, case.primary.dtype),
        {k: None if v is None else (v, v.shape, v.dtype) for k, v in case.aux.items()},
        None if label is None else (label, label.shape, label.dtype),
        foreground,
        scales,
        patch,
        margin,
    )


def _foreground_point(case: PaddedCase, rng: np.random.Generator) -> np.ndarray:
    """A random foreground voxel: a random label value first, then a voxel of it."""
    value = list(case.foreground)[rng.integers(len(case.foreground))]
    points = case.foreground[value]
    return points[rng.integers(len(points))]


def window_start(
    case: PaddedCase,
    window: Sequence[int],
    lcm: Sequence[int],
    rng: np.random.Generator,
    foreground: bool,
    centre: np.ndarray | None = None,
) -> list[int]:
    """Start of a ``window`` (multiples of ``lcm``), centred on a random foreground voxel if asked.

    ``centre``: the foreground voxel to centre on (drawn here when ``None``).
    """
    shape = case.primary.shape[1:]
    highest = [(n - w) // step for n, w, step in zip(shape, window, lcm, strict=True)]
    if foreground and case.foreground:
        if centre is None:
            centre = _foreground_point(case, rng)
        return [
            int(np.clip((c - w // 2) // step, 0, h)) * step
            for c, w, step, h in zip(centre, window, lcm, highest, strict=True)
        ]
    return [int(rng.integers(0, h + 1)) * step for h, step in zip(highest, lcm, strict=True)]


def sample_patch(
    case: PaddedCase,
    patch: Sequence[int],
    margin: Sequence[int],
    scales: Mapping[str, Sequence[int]],
    dropout: Mapping[str, float],
    rng: np.random.Generator,
    foreground: bool,
    augment_cfg,
    slice_axis: int | None = None,
    context: int = 0,
    aux_slice_mode: str = "containing",
) -> dict[str, np.ndarray]:
    """One training sample.

    3D: ``primary`` ``(C, *patch)``, ``aux_<name>`` ``(C_a, *patch / scale)``,
    ``present_<name>`` scalar (0 after modality dropout or when absent), ``label``
    ``(1, *patch)``. 2D (``slice_axis`` set): one slice of the primary with
    ``context`` neighbours on each side as channels, each auxiliary's plane for that
    slice (``aux_slice_mode``, :mod:`segfuse.data.aux_slices`), and 2D patches.
    """
    lcm = lcm_of_scales(scales)
    if slice_axis is None:
        window = [p + 2 * m for p, m in zip(patch, margin, strict=True)]
        start = window_start(case, window, lcm, rng, foreground)
        box = tuple(slice(a, a + w) for a, w in zip(start, window, strict=True))
        primary = case.primary[(slice(None), *box)]
        label = case.label[box][None].astype(np.float32)
        aux = {}
        for name, array in case.aux.items():
            if array is None:
                aux[name] = None
                continue
            s = scales[name]
            block = [slice(a // si, (a + w) // si) for a, w, si in zip(start, window, s, strict=True)]
            aux[name] = array[(slice(None), *block)]
        spacing = case.spacing
        out_size = list(patch)
        used_scales = scales
    else:
        primary, aux, label, spacing, used_scales = _slice_window(
            case, patch, margin, scales, lcm, rng, foreground, slice_axis, context, aux_slice_mode
        )
        out_size = list(patch)
    primary, aux, label = augment_sample(primary, aux, label, used_scales, out_size, spacing, rng, augment_cfg)
    sample = {"primary": primary, "label": label}
    for name, array in aux.items():
        keep = array is not None and rng.random() >= dropout.get(name, 0.0)
        if array is None:
            s = used_scales[name]
            array = np.zeros((1, *[o // si for o, si in zip(out_size, s, strict=True)]), np.float32)
        sample[f"aux_{name}"] = array if keep else np.zeros_like(array)
        sample[f"present_{name}"] = np.float32(keep)
    return sample


def _slice_window(case, patch, margin, scales, lcm, rng, foreground, axis, context, aux_mode="containing"):
    """2D window: pick a slice (foreground-biased), cut an in-plane window around it.

    Each auxiliary gives the plane :func:`segfuse.data.aux_slices.aux_slice` picks for
    slice ``z`` (``aux_mode``: ``"containing"`` or ``"linear"``).
    """
    plane = [d for d in range(3) if d != axis]
    window3 = [0, 0, 0]
    for d, p, m in zip(plane, patch, margin, strict=True):
        window3[d] = p + 2 * m
    window3[axis] = lcm[axis]
    # one foreground voxel gives both the in-plane window and the slice, so the slice
    # shows foreground inside the window (two separate draws could miss each other)
    centre = _foreground_point(case, rng) if foreground and case.foreground else None
    start = window_start(case, window3, lcm, rng, foreground, centre=centre)
    z = start[axis] + (int(rng.integers(lcm[axis])) if not foreground else 0)
    if centre is not None:
        z = int(centre[axis])
    n_slices = case.primary.shape[1 + axis]
    indices = np.clip(np.arange(z - context, z + context + 1), 0, n_slices - 1)
    in_plane = tuple(slice(start[d], start[d] + window3[d]) for d in plane)

    def key(index, box) -> tuple:
        """``index`` on the slice axis, ``box`` on the in-plane axes (spatial axes only)."""
        parts = list(box)
        parts.insert(axis, index)
        return tuple(parts)

    def take(array: PaddedArray, index, box) -> np.ndarray:
        """``(C, [K,] *box)``: the slice axis (kept when ``index`` is an array) moved next to the channels."""
        out = array[(slice(None), *key(index, box))]
        return out if np.isscalar(index) or np.ndim(index) == 0 else np.moveaxis(out, 1 + axis, 1)

    primary = take(case.primary, indices, in_plane).reshape(-1, *[window3[d] for d in plane])
    label = case.label[key(z, in_plane)][None].astype(np.float32)
    aux = {}
    scales2d = {}
    for name, array in case.aux.items():
        s = scales[name]
        scales2d[name] = tuple(s[d] for d in plane)
        if array is None:
            aux[name] = None
            continue
        box = tuple(slice(start[d] // s[d], (start[d] + window3[d]) // s[d]) for d in plane)
        aux[name] = aux_slice(
            lambda k, array=array, box=box: take(array, k, box), z, s[axis], array.shape[1 + axis], aux_mode
        )
    spacing = tuple(case.spacing[d] for d in plane)
    return primary, aux, label, spacing, scales2d
