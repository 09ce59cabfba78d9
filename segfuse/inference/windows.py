"""Multi-resolution sliding-window inference.

The primary scan and every auxiliary scan are windowed together so that each
primary window and each auxiliary window cover the same physical block. The
auxiliary grids are edge-aligned (see ``docs/architecture.md``, "Auxiliary
grids"): aux voxel ``i`` with scale ``s`` covers primary voxels
``[i*s, (i+1)*s)``, so a primary window starting at ``p`` of size ``w`` maps to
the aux window starting at ``p // s`` of size ``w // s`` -- exactly, provided
``p`` and ``w`` are multiples of ``s``.

To guarantee that for every auxiliary at once, windows are laid out on a
coarse grid whose cell is ``L = lcm(all scales)`` primary voxels per axis,
using MONAI's own window placement (``dense_patch_slices`` with MONAI's scan
interval) on that coarse grid. Without auxiliaries ``L = 1`` and the layout is
MONAI's, except that short volumes are padded at the end instead of
symmetrically (end padding keeps the origin, hence the aux alignment, intact).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices
from tqdm.auto import tqdm

from segfuse.auxiliary import lcm_of_scales
from segfuse.io.errors import SegfuseInputError

__all__ = ["sliding_window_multires", "window_starts"]

Predictor = Callable[[torch.Tensor, dict[str, torch.Tensor | None]], torch.Tensor]

_BLEND_MODES = ("gaussian", "constant")
_PADDING_MODES = ("constant", "reflect", "replicate", "circular")


def _as_int_tuple(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    """Broadcast an int or check a sequence to ``ndim`` positive ints."""
    values = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(values) != ndim or not all(isinstance(v, int) and v > 0 for v in values):
        raise SegfuseInputError(f"{name} must be {ndim} positive integers (one per spatial axis), got {value!r}")
    return values


def _scan_interval(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> list[int]:
    """MONAI's scan interval (``monai.inferers.utils._get_scan_interval``).

    Re-stated here, same expression, because the MONAI function is private.
    """
    interval = []
    for image, roi in zip(image_size, roi_size, strict=True):
        if roi == image:
            interval.append(int(roi))
        else:
            step = int(roi * (1 - overlap))
            interval.append(step if step > 0 else 1)
    return interval


def _padded_shape(shape: Sequence[int], roi: Sequence[int], lcm: Sequence[int]) -> tuple[int, ...]:
    """Shape S' = max(roi, ceil(S / L) * L) that the primary is end-padded to."""
    return tuple(max(r, -(-s // m) * m) for s, r, m in zip(shape, roi, lcm, strict=True))


def _check_roi(roi: tuple[int, ...], lcm: tuple[int, ...], scales: Mapping[str, object]) -> None:
    """Raise a SegfuseInputError naming roi_size, the scales and the nearest valid sizes."""
    if all(r % m == 0 for r, m in zip(roi, lcm, strict=True)):
        return
    down = tuple(max(m, (r // m) * m) for r, m in zip(roi, lcm, strict=True))
    up = tuple(-(-r // m) * m for r, m in zip(roi, lcm, strict=True))
    scale_text = ", ".join(f"{k}={tuple(v) if not isinstance(v, int) else v}" for k, v in scales.items())
    raise SegfuseInputError(
        f"roi_size {roi} must be divisible on every axis by {lcm}, the least common multiple "
        f"of the auxiliary scales ({scale_text}), so that every window starts and ends on a "
        f"whole auxiliary voxel; nearest valid roi_size: {down} or {up}"
    )


def window_starts(
    shape: Sequence[int],
    roi_size: Sequence[int],
    overlap: float,
    lcm: int | Sequence[int] = 1,
) -> list[tuple[int, ...]]:
    """Start indices (primary voxels) of every window over a primary of ``shape``.

    ``shape`` is the unpadded primary spatial shape S; windows tile the
    end-padded shape ``S' = max(roi, ceil(S / L) * L)``. Starts are MONAI's
    ``dense_patch_slices`` on the coarse grid ``S' / L`` with window ``roi / L``
    and MONAI's scan interval ``max(1, int(roi / L * (1 - overlap)))``,
    multiplied by ``L``, so every start is a multiple of every aux scale.

    Example:
        >>> window_starts((10,), (4,), 0.5)
        [(0,), (2,), (4,), (6,)]
        >>> window_starts((10,), (4,), 0.5, lcm=4)  # padded to 12; coarse step 1 cell
        [(0,), (4,), (8,)]
    """
    ndim = len(shape)
    roi = _as_int_tuple(tuple(roi_size), ndim, "roi_size")
    lcm_t = _as_int_tuple(lcm, ndim, "lcm")
    if not 0.0 <= overlap < 1.0:
        raise SegfuseInputError(f"overlap must be in [0, 1), got {overlap!r}")
    if any(r % m for r, m in zip(roi, lcm_t, strict=True)):
        raise SegfuseInputError(f"roi_size {roi} is not divisible by lcm {lcm_t} on every axis")
    padded = _padded_shape(shape, roi, lcm_t)
    coarse_shape = [p // m for p, m in zip(padded, lcm_t, strict=True)]
    coarse_roi = [r // m for r, m in zip(roi, lcm_t, strict=True)]
    interval = _scan_interval(coarse_shape, coarse_roi, overlap)
    bounds = dense_patch_slices(coarse_shape, coarse_roi, interval, return_slice=False)
    return [tuple(int(b[0]) * m for b, m in zip(win, lcm_t, strict=True)) for win in bounds]


def _end_pad(x: torch.Tensor, target: Sequence[int], mode: str, value: float) -> torch.Tensor:
    """Pad the spatial axes of ``x`` (1, C, *spatial) at their END up to ``target``."""
    pad: list[int] = []
    for size, want in zip(reversed(x.shape[2:]), reversed(tuple(target)), strict=True):
        pad.extend([0, want - size])  # F.pad lists the last axis first: (before, after)
    if not any(pad):
        return x
    if mode == "constant":
        return F.pad(x, pad, mode="constant", value=value)
    return F.pad(x, pad, mode=mode)


def _validate_inputs(
    primary: torch.Tensor,
    aux: Mapping[str, torch.Tensor | None],
    scales: Mapping[str, int | Sequence[int]],
) -> dict[str, tuple[int, ...]]:
    """Check the tensor layouts against the edge-aligned contract; return scale tuples."""
    if primary.ndim not in (4, 5) or primary.shape[0] != 1:
        raise SegfuseInputError(f"primary must be (1, C, X, Y) or (1, C, X, Y, Z), got shape {tuple(primary.shape)}")
    ndim = primary.ndim - 2
    shape = tuple(primary.shape[2:])
    missing = [name for name in aux if name not in scales]
    if missing:
        raise SegfuseInputError(f"no scale given for auxiliary {missing}; scales has {sorted(scales)}")
    scale_t = {name: _as_int_tuple(scale, ndim, f"scale of auxiliary {name!r}") for name, scale in scales.items()}
    for name, tensor in aux.items():
        if tensor is None:
            continue
        s = scale_t[name]
        expected = tuple(-(-n // k) for n, k in zip(shape, s, strict=True))
        received = tuple(tensor.shape[2:])
        if tensor.ndim != primary.ndim or tensor.shape[0] != 1 or received != expected:
            raise SegfuseInputError(
                f"auxiliary {name!r} has shape {tuple(tensor.shape)}; expected "
                f"(1, C, *{expected}) = ceil({shape} / {s}) for primary spatial shape {shape} "
                f"and scale {s}, received spatial shape {received}"
            )
    return scale_t


def sliding_window_multires(
    primary: torch.Tensor,
    aux: Mapping[str, torch.Tensor | None],
    scales: Mapping[str, int | Sequence[int]],
    predictor: Predictor,
    roi_size: Sequence[int],
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    mirror_axes: Sequence[int] | None = None,
    padding_mode: str = "constant",
    cval: float = 0.0,
    device: torch.device | str | None = None,
    output_device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Sliding-window inference over a primary scan and its coarser auxiliaries.

    Every window of the primary is paired with the auxiliary windows covering
    the same physical block (edge-aligned grids, integer scales), predictions
    are blended with MONAI's importance map and stitched back to the primary
    grid. The tiling is exact: it depends only on shapes, never on rounding.

    Args:
        primary: ``(1, C, *S)`` primary scan, 2D or 3D.
        aux: name -> ``(1, C_a, *ceil(S / s))`` auxiliary on its native grid, or
            ``None`` for a missing modality (passed to ``predictor`` as ``None``).
        scales: name -> integer scale per spatial axis (or one int for all).
            All scales, including those of missing auxiliaries, define the
            window grid ``L = lcm(scales)``, so the tiling does not change when
            a modality is absent. Every name in ``aux`` needs a scale.
        predictor: ``(N, C, *roi)`` primary windows and a dict of
            ``(N, C_a, *(roi / s))`` aux windows (or ``None``) ->
            ``(N, K, *roi)`` logits or probabilities. Called under ``no_grad``.
        roi_size: window size in primary voxels; must be divisible by ``L``.
        overlap: fraction of overlap between neighbouring windows, in [0, 1),
            applied on the coarse grid as MONAI does.
        sw_batch_size: windows per predictor call.
        blend: ``"gaussian"`` or ``"constant"`` importance weighting.
        sigma_scale: gaussian sigma as a fraction of ``roi_size``.
        mirror_axes: spatial axes (0-based) for mirror test-time augmentation;
            all ``2**k`` flip combinations are predicted and averaged.
        padding_mode: ``torch.nn.functional.pad`` mode for the end padding
            (``"constant"``, ``"reflect"``, ``"replicate"``, ``"circular"``).
        cval: fill value for ``padding_mode="constant"``.
        device: where the predictor runs; defaults to ``primary.device``.
        output_device: where the ``(1, K, *S')`` accumulators live.
        progress: show a tqdm bar over the window batches.

    Returns:
        ``(1, K, *S)`` float32 blended predictions on ``output_device``.

    Raises:
        SegfuseInputError: (a ``ValueError``) ``roi_size`` not divisible by the scale lcm, an auxiliary
            whose shape is not ``ceil(S / s)``, or an invalid option.
        ValueError: ``predictor`` returned a shape other than ``(N, K, *roi)``.

    Example:
        >>> t1 = torch.rand(1, 1, 37, 41, 29)
        >>> flair = torch.rand(1, 1, 19, 21, 8)  # ceil((37, 41, 29) / (2, 2, 4))
        >>> out = sliding_window_multires(
        ...     t1, {"flair": flair}, {"flair": (2, 2, 4)},
        ...     lambda x, a: x + a["flair"].repeat_interleave(2, 2)
        ...     .repeat_interleave(2, 3).repeat_interleave(4, 4),
        ...     roi_size=(16, 16, 16))
        >>> out.shape
        torch.Size([1, 1, 37, 41, 29])
    """
    scale_t = _validate_inputs(primary, aux, scales)
    ndim = primary.ndim - 2
    shape = tuple(primary.shape[2:])
    roi = _as_int_tuple(tuple(roi_size), ndim, "roi_size")
    lcm = lcm_of_scales(scale_t, ndim)
    _check_roi(roi, lcm, scales)
    if not 0.0 <= overlap < 1.0:
        raise SegfuseInputError(f"overlap must be in [0, 1), got {overlap!r}")
    if not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise SegfuseInputError(f"sw_batch_size must be a positive integer, got {sw_batch_size!r}")
    if blend not in _BLEND_MODES:
        raise SegfuseInputError(f"blend must be one of {_BLEND_MODES}, got {blend!r}")
    if padding_mode not in _PADDING_MODES:
        raise SegfuseInputError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
    axes = tuple(mirror_axes or ())
    if len(set(axes)) != len(axes) or any(not 0 <= a < ndim for a in axes):
        raise SegfuseInputError(f"mirror_axes must be distinct spatial axes in [0, {ndim}), got {mirror_axes!r}")

    compute_device = torch.device(device) if device is not None else primary.device
    out_device = torch.device(output_device)

    # End padding only: padding the start would shift the origin and break the
    # i*s alignment between the primary and every auxiliary grid.
    padded = _padded_shape(shape, roi, lcm)
    primary_p = _end_pad(primary, padded, padding_mode, cval)
    aux_p: dict[str, torch.Tensor | None] = {}
    for name, tensor in aux.items():
        if tensor is None:
            aux_p[name] = None
            continue
        target = [p // s for p, s in zip(padded, scale_t[name], strict=True)]
        aux_p[name] = _end_pad(tensor, target, padding_mode, cval)

    starts = window_starts(shape, roi, overlap, lcm)
    weight = compute_importance_map(
        roi, mode=blend, sigma_scale=sigma_scale, device=compute_device, dtype=torch.float32
    )[None, None]  # (1, 1, *roi)
    flip_sets = [
        [a + 2 for a in subset]  # spatial axis -> tensor dim of (N, C, *spatial)
        for k in range(len(axes) + 1)
        for subset in itertools.combinations(axes, k)
    ]

    weight_out = weight.to(out_device)
    output: torch.Tensor | None = None
    count = torch.zeros((1, 1, *padded), dtype=torch.float32, device=out_device)
    batches = range(0, len(starts), sw_batch_size)
    for first in tqdm(batches, desc="sliding window", disable=not progress):
        batch_starts = starts[first : first + sw_batch_size]
        x = torch.cat([_take(primary_p, p, roi) for p in batch_starts]).to(compute_device)
        aux_windows: dict[str, torch.Tensor | None] = {}
        for name, tensor in aux_p.items():
            if tensor is None:
                aux_windows[name] = None
                continue
            s = scale_t[name]
            # Starts and roi are multiples of L, hence of s: p // s is exact.
            aux_roi = tuple(r // k for r, k in zip(roi, s, strict=True))
            aux_windows[name] = torch.cat(
                [_take(tensor, [q // k for q, k in zip(p, s, strict=True)], aux_roi) for p in batch_starts]
            ).to(compute_device)

        with torch.no_grad():
            pred = _predict_mirrored(predictor, x, aux_windows, flip_sets, roi)
        pred = (pred * weight).to(out_device)
        if output is None:
            output = torch.zeros((1, pred.shape[1], *padded), dtype=torch.float32, device=out_device)
        for i, p in enumerate(batch_starts):
            region = _window(p, roi)
            output[region] += pred[i : i + 1]
            count[region] += weight_out

    if output is None:  # unreachable: there is always at least one window
        raise RuntimeError("no windows were generated")
    output /= count
    return output[(slice(None), slice(None), *(slice(0, n) for n in shape))]


def _window(start: Sequence[int], size: Sequence[int]) -> tuple[slice, ...]:
    """Index for the (N, C, *spatial) block starting at ``start`` with ``size``."""
    return (slice(None), slice(None), *(slice(p, p + w) for p, w in zip(start, size, strict=True)))


def _take(x: torch.Tensor, start: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """The window of ``x`` (1, C, *spatial) as a (1, C, *size) view."""
    return x[_window(start, size)]


def _predict_mirrored(
    predictor: Predictor,
    x: torch.Tensor,
    aux_windows: dict[str, torch.Tensor | None],
    flip_sets: list[list[int]],
    roi: tuple[int, ...],
) -> torch.Tensor:
    """Average predictions over mirror flips of all inputs; returns (N, K, *roi) float32.

    ``flip_sets`` holds tensor dims to flip; ``[[]]`` means no augmentation.
    Each flip is applied to the primary and every aux window alike (the
    flipped aux window is still the block under the flipped primary window,
    because both cover the same physical extent), then undone on the output.
    """
    total: torch.Tensor | None = None
    for dims in flip_sets:
        xin = torch.flip(x, dims) if dims else x
        ain = {k: (torch.flip(v, dims) if dims and v is not None else v) for k, v in aux_windows.items()}
        pred = predictor(xin, ain)
        if pred.ndim != x.ndim or pred.shape[0] != x.shape[0] or tuple(pred.shape[2:]) != roi:
            raise ValueError(  # a bug in the predictor, not in the user's input
                f"predictor returned shape {tuple(pred.shape)}; expected "
                f"({x.shape[0]}, K, *{roi}) for input {tuple(x.shape)}"
            )
        pred = pred.float()
        if dims:
            pred = torch.flip(pred, dims)
        total = pred if total is None else total + pred
    if total is None:
        raise RuntimeError("flip_sets must contain at least the identity")
    return total / len(flip_sets) if len(flip_sets) > 1 else total
