"""Quality-control pictures: a few axial slices with the predicted mask overlaid.

One row per slice; the first column is the primary, then one column per
auxiliary, each shown on its own (coarser) grid, upsampled by nearest neighbour
for display only, with the same mask drawn over it. Rendered with a bare
matplotlib :class:`~matplotlib.figure.Figure` (Agg canvas, no pyplot state) and
written atomically.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from segfuse.io.atomic import atomic_write
from segfuse.io.errors import SegfuseInputError

_MATPLOTLIB = threading.Lock()


def _one_at_a_time(function: Callable) -> Callable:
    """Matplotlib is not thread-safe (shared font caches); batch prediction writes QC pictures in threads."""

    @functools.wraps(function)
    def serialised(*args, **kwargs):
        with _MATPLOTLIB:
            return function(*args, **kwargs)

    return serialised

__all__ = ["pick_slices", "save_qc_png"]


def pick_slices(label: np.ndarray, n_slices: int = 3) -> list[int]:
    """Axial (last-axis) indices through the mask, or around the centre when it is empty.

    Slices sit at evenly spaced quantiles of the mask's axial extent.

    Example:
        >>> m = np.zeros((4, 4, 10), np.uint8); m[..., 2:7] = 1
        >>> pick_slices(m, 3)
        [3, 4, 5]
    """
    n_z = label.shape[-1]
    n = max(1, min(n_slices, n_z))
    occupied = np.flatnonzero(np.asarray(label).reshape(-1, n_z).any(axis=0))
    lo, hi = (int(occupied[0]), int(occupied[-1])) if occupied.size else (0, n_z - 1)
    picks = np.linspace(lo, hi, n + 2)[1:-1] if hi > lo else np.full(n, lo)
    return sorted({int(np.rint(z)) for z in picks})


def _upsample_nearest(aux: np.ndarray, scale: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Edge-aligned nearest upsampling (aux voxel ``i`` covers ``[i*s, (i+1)*s)``), cropped to ``shape``."""
    out = aux
    for axis, s in enumerate(scale):
        out = np.repeat(out, int(s), axis=axis)
    return out[tuple(slice(0, n) for n in shape)]


def _infer_scale(aux_shape: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(max(1, -(-n // a)) for n, a in zip(shape, aux_shape, strict=True))


@_one_at_a_time
def save_qc_png(
    primary: np.ndarray,
    aux: Mapping[str, np.ndarray],
    label: np.ndarray,
    path: str | Path,
    n_slices: int = 3,
    *,
    scales: Mapping[str, Sequence[int]] | None = None,
) -> Path:
    """Write a PNG of ``n_slices`` axial slices with ``label`` over the primary and each auxiliary.

    Args:
        primary: ``(X, Y, Z)`` primary scan.
        aux: name → ``(ceil(X/sx), ceil(Y/sy), ceil(Z/sz))`` auxiliary on its edge-aligned grid.
        label: ``(X, Y, Z)`` integer label map on the primary's grid.
        path: the PNG file; its folder must exist.
        n_slices: how many slices (rows).
        scales: name → integer scale; default ``ceil(primary shape / aux shape)``.

    Example:
        >>> save_qc_png(t1, {"flair": flair}, seg, "qc/case.png", scales={"flair": (2, 2, 4)})  # doctest: +SKIP
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    primary = np.asarray(primary, dtype=np.float32)
    label = np.asarray(label)
    if primary.ndim != 3 or label.shape != primary.shape:
        raise SegfuseInputError(
            f"{path}: QC needs a 3D primary and a label of the same shape; got {primary.shape} and {label.shape}"
        )
    shown = {"primary": primary}
    for name, array in aux.items():
        scale = tuple((scales or {}).get(name) or _infer_scale(np.shape(array), primary.shape))
        shown[name] = _upsample_nearest(np.asarray(array, dtype=np.float32), scale, primary.shape)

    rows = pick_slices(label, n_slices)
    n_labels = max(int(label.max()), 1)
    colours = ListedColormap(["#e41a1c", "#4daf4a", "#377eb8", "#ff7f00", "#984ea3", "#ffff33"][: max(n_labels, 1)])
    fig = Figure(figsize=(2.6 * len(shown), 2.6 * len(rows)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), len(shown), squeeze=False))
    for r, z in enumerate(rows):
        mask = np.ma.masked_equal(label[..., z].T, 0)
        for c, (name, volume) in enumerate(shown.items()):
            ax = axes[r, c]
            image = volume[..., z].T
            lo, hi = np.percentile(volume, [1, 99]) if volume.size else (0.0, 1.0)
            # Canonical RAS: anterior up (transpose, origin "lower"); x grows toward the
            # patient's right, which the radiological convention shows on the left.
            vmax = hi if hi > lo else lo + 1
            ax.imshow(image, cmap="gray", origin="lower", vmin=lo, vmax=vmax, interpolation="nearest")
            ax.imshow(
                mask, cmap=colours, origin="lower", alpha=0.45, vmin=1, vmax=n_labels + 1e-6, interpolation="nearest"
            )
            ax.invert_xaxis()
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"z = {z}", fontsize=8)
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=80)
    return path
