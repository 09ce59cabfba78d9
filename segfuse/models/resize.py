"""Moving features between edge-aligned grids of different strides.

A tensor on the grid of stride ``a`` (voxel ``i`` covers primary voxels
``[i*a, (i+1)*a)``) is brought to the grid of stride ``b``:

- where ``b`` is a multiple of ``a``, by average pooling with kernel ``b / a``:
  an exact block average, the coarse voxel is the mean of the fine voxels it covers;
- where ``a`` is a multiple of ``b``, by linear interpolation with
  ``align_corners=False``, which treats voxels as cells and so keeps the two
  grids' centres where they belong;
- otherwise (non-nested strides) by area resampling to the target size.

Pooling is done before upsampling so no resolution is invented that pooling
then has to throw away.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def change_stride(
    x: torch.Tensor, source: Sequence[int], target: Sequence[int], size: Sequence[int]
) -> torch.Tensor:
    """Resample ``x`` ``(B, C, *spatial)`` from per-axis stride ``source`` to ``target``.

    Args:
        x: features on the source grid.
        source: stride of ``x``'s grid relative to the primary grid, per axis.
        target: stride of the wanted grid, per axis.
        size: spatial size of the wanted grid (used to check and to handle
            non-nested strides).

    Returns:
        ``(B, C, *size)``.
    """
    ndim = x.ndim - 2
    pool = [t // s if t % s == 0 else 1 for s, t in zip(source, target, strict=True)]
    if any(p > 1 for p in pool):
        pool_fn = F.avg_pool3d if ndim == 3 else F.avg_pool2d
        x = pool_fn(x, kernel_size=pool, stride=pool, ceil_mode=True)
    if tuple(x.shape[2:]) == tuple(size):
        return x
    nested = all(t % s == 0 or s % t == 0 for s, t in zip(source, target, strict=True))
    if nested:
        mode = "trilinear" if ndim == 3 else "bilinear"
        return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)
    return F.interpolate(x, size=tuple(size), mode="area")
