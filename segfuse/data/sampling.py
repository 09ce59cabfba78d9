"""Training patches: foreground oversampling, exact multi-resolution windows, modality dropout.

A patch of the primary starts on a multiple of ``L`` (the per-axis lcm of the
auxiliary scales) and has a size that is a multiple of ``L``, so each
auxiliary's window — start ``p / s``, size ``P / s`` — is exactly the physical
sub-block of the primary's. Windows are cut with an extra margin that the
spatial augmentation turns into real context before cropping to the patch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from segfuse.data.augment import augment_sample
from segfuse.data.preprocess import PreparedCase, scales_lcm

MAX_FOREGROUND_POINTS = 20_000


@dataclass
class PaddedCase:
    """A prepared case padded so any window with its margin lies inside the arrays."""

    case_id: str
    primary: np.ndarray
    aux: dict[str, np.ndarray | None]
    label: np.ndarray
    spacing: tuple[float, ...]
    foreground: dict[int, np.ndarray]


def pad_case(case: PreparedCase, scales: Mapping[str, Sequence[int]], patch: Sequence[int], margin: Sequence[int]):
    """Pad ``case`` (zeros) by ``margin`` before and after, and up to ``patch`` — all multiples of the lcm."""
    lcm = scales_lcm(scales)
    before = list(margin)
    after = []
    for n, p, m, step in zip(case.shape, patch, margin, lcm, strict=True):
        total = max(n, p)
        total = -(-total // step) * step
        after.append(total - n + m)
    pad = [(0, 0), *zip(before, after, strict=True)]
    primary = np.pad(case.primary, pad)
    label = np.pad(case.label if case.label is not None else np.zeros(case.shape, np.uint8), pad[1:])
    aux: dict[str, np.ndarray | None] = {}
    for name, array in case.aux.items():
        if array is None:
            aux[name] = None
            continue
        s = scales[name]
        target = [(n + b + a) // si for n, b, a, si in zip(case.shape, before, after, s, strict=True)]
        aux_before = [b // si for b, si in zip(before, s, strict=True)]
        aux_after = [t - n - b for t, n, b in zip(target, array.shape[1:], aux_before, strict=True)]
        aux[name] = np.pad(array, [(0, 0), *zip(aux_before, aux_after, strict=True)])
    spacing = tuple(float(v) for v in np.linalg.norm(case.affine[:3, :3], axis=0))
    foreground: dict[int, np.ndarray] = {}
    rng = np.random.default_rng(0)
    for value in np.unique(label):
        if value == 0:
            continue
        points = np.argwhere(label == value)
        if len(points) > MAX_FOREGROUND_POINTS:
            points = points[rng.choice(len(points), MAX_FOREGROUND_POINTS, replace=False)]
        foreground[int(value)] = points
    return PaddedCase(case.case_id, primary, aux, label, spacing, foreground)


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
) -> dict[str, np.ndarray]:
    """One training sample.

    3D: ``primary`` ``(C, *patch)``, ``aux_<name>`` ``(C_a, *patch / scale)``,
    ``present_<name>`` scalar (0 after modality dropout or when absent), ``label``
    ``(1, *patch)``. 2D (``slice_axis`` set): one slice of the primary with
    ``context`` neighbours on each side as channels, the auxiliary slice that
    contains it, and 2D patches.
    """
    lcm = scales_lcm(scales)
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
            case, patch, margin, scales, lcm, rng, foreground, slice_axis, context
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


def _slice_window(case, patch, margin, scales, lcm, rng, foreground, axis, context):
    """2D window: pick a slice (foreground-biased), cut an in-plane window around it."""
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

    def take(array: np.ndarray, index, box) -> np.ndarray:
        moved = np.moveaxis(array, 1 + axis, 1)
        return moved[(slice(None), index, *box)]

    primary = take(case.primary, indices, in_plane).reshape(-1, *[window3[d] for d in plane])
    label = take(case.label[None], z, in_plane).astype(np.float32)
    aux = {}
    scales2d = {}
    for name, array in case.aux.items():
        s = scales[name]
        scales2d[name] = tuple(s[d] for d in plane)
        if array is None:
            aux[name] = None
            continue
        box = tuple(slice(start[d] // s[d], (start[d] + window3[d]) // s[d]) for d in plane)
        aux[name] = take(array, z // s[axis], box)
    spacing = tuple(case.spacing[d] for d in plane)
    return primary, aux, label, spacing, scales2d
