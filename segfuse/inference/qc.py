"""Quality-control pictures: a few axial slices with the predicted mask overlaid.

One row per slice; the first column is the primary, then one column per
auxiliary, each shown on its own (coarser) grid, upsampled by nearest neighbour
for display only, with the same mask drawn over it. Rendered with a bare
matplotlib :class:`~matplotlib.figure.Figure` (Agg canvas, no pyplot state) and
written atomically.

When the reference is known (``predict --qc`` on a labelled dataset, ``evaluate
--qc``), every panel also carries the reference's outline (white line) over the
prediction's fill, and a last column shows the errors on the primary: voxels
the prediction **missed** (reference only, cyan), **extra** voxels (prediction
only, magenta) and voxels of the **wrong class** (yellow); its title gives the
slice's foreground Dice. Rows then go through the union of both masks, so a
structure the prediction missed entirely is shown too.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segfuse.io.atomic import atomic_write
from segfuse.io.errors import SegfuseInputError
from segfuse.io.label_tables import label_colour_hex

_MATPLOTLIB = threading.Lock()


def _one_at_a_time(function: Callable) -> Callable:
    """Matplotlib is not thread-safe (shared font caches); batch prediction writes QC pictures in threads."""

    @functools.wraps(function)
    def serialised(*args, **kwargs):
        with _MATPLOTLIB:
            return function(*args, **kwargs)

    return serialised


__all__ = [
    "ERROR_COLOURS",
    "REFERENCE_COLOUR",
    "pick_slices",
    "reference_for_qc",
    "render_qc",
    "save_label_comparison_png",
    "save_qc_png",
]

logger = logging.getLogger(__name__)

#: Outline colour of the reference.
REFERENCE_COLOUR = "#ffffff"
#: Error map colours: missed (reference only), extra (prediction only), wrong class.
ERROR_COLOURS: dict[str, str] = {"missed": "#00e5ff", "extra": "#ff00ff", "wrong class": "#ffff00"}


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


def _dice(pred: np.ndarray, ref: np.ndarray) -> float:
    both = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    return 1.0 if both == 0 else 2.0 * int(np.count_nonzero((pred > 0) & (ref > 0) & (pred == ref))) / both


def render_qc(
    primary: np.ndarray,
    aux: Mapping[str, np.ndarray],
    label: np.ndarray,
    n_slices: int = 3,
    *,
    scales: Mapping[str, Sequence[int]] | None = None,
    reference: np.ndarray | None = None,
    where: str = "QC",
    primary_name: str = "primary",
) -> Any:
    """The QC :class:`~matplotlib.figure.Figure` (see :func:`save_qc_png`; ``where`` names it in errors).

    Contour artists carry a ``gid``: ``"prediction"`` or ``"reference"``; error
    overlays ``"errors"``.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    primary = np.asarray(primary, dtype=np.float32)
    label = np.asarray(label)
    if primary.ndim != 3 or label.shape != primary.shape:
        raise SegfuseInputError(
            f"{where}: QC needs a 3D primary and a label of the same shape; got {primary.shape} and {label.shape}"
        )
    if reference is not None:
        reference = np.asarray(reference)
        if reference.shape != label.shape:
            raise SegfuseInputError(f"{where}: QC reference has shape {reference.shape}, the prediction {label.shape}")
    shown = {primary_name: primary}
    for name, array in aux.items():
        scale = tuple((scales or {}).get(name) or _infer_scale(np.shape(array), primary.shape))
        shown[name] = _upsample_nearest(np.asarray(array, dtype=np.float32), scale, primary.shape)

    both = label if reference is None else (label > 0) | (reference > 0)
    rows = pick_slices(both, n_slices)
    values = sorted(
        {int(v) for v in np.unique(label)}
        | ({int(v) for v in np.unique(reference)} if reference is not None else set())
    )
    n_labels = max([*values, 1])
    colours = ListedColormap([label_colour_hex(v) for v in range(1, n_labels + 1)])  # as in the viewer files
    columns = len(shown) + (reference is not None)
    fig = Figure(figsize=(2.6 * columns, 2.6 * len(rows)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), columns, squeeze=False))
    for r, z in enumerate(rows):
        mask = np.ma.masked_equal(label[..., z].T, 0)
        for c, (name, volume) in enumerate(shown.items()):
            ax = axes[r, c]
            _show_slice(ax, volume, z)
            ax.imshow(
                mask, cmap=colours, origin="lower", alpha=0.45, vmin=1, vmax=n_labels + 1e-6, interpolation="nearest"
            )
            if reference is not None:
                _outline(ax, reference[..., z], REFERENCE_COLOUR, "reference", linewidth=1.2)
            if r == 0:
                ax.set_title(name if reference is None else f"{name}: prediction, reference outline", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"z = {z}", fontsize=8)
        if reference is not None:
            ax = axes[r, -1]
            _show_slice(ax, primary, z)
            _error_overlay(ax, label[..., z], reference[..., z])
            _outline(ax, reference[..., z], REFERENCE_COLOUR, "reference", linewidth=0.8)
            _outline(ax, label[..., z], label_colour_hex(1), "prediction", linewidth=0.8)
            ax.set_title(f"errors, slice Dice {_dice(label[..., z], reference[..., z]):.2f}", fontsize=8)
    if reference is not None:
        fig.suptitle(
            "white line: reference; red line: prediction; errors: missed (cyan), extra (magenta), "
            "wrong class (yellow)",
            fontsize=8,
        )
    for ax in axes.flat:
        # Canonical RAS: anterior up (transpose, origin "lower"); x grows toward the
        # patient's right, which the radiological convention shows on the left.
        ax.invert_xaxis()
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def _show_slice(ax: Any, volume: np.ndarray, z: int) -> None:
    lo, hi = np.percentile(volume, [1, 99]) if volume.size else (0.0, 1.0)
    vmax = hi if hi > lo else lo + 1
    ax.imshow(volume[..., z].T, cmap="gray", origin="lower", vmin=lo, vmax=vmax, interpolation="nearest")


def _outline(ax: Any, labels: np.ndarray, colour: str, gid: str, linewidth: float) -> None:
    """Draw the boundary of every foreground class of ``labels`` ``(X, Y)`` (one contour set each)."""
    for value in np.unique(labels):
        if value == 0:
            continue
        # no ``origin``: Z[0, 0] sits at (0, 0), the centre of imshow's first pixel
        # ("lower" would put it at (0.5, 0.5), half a voxel off the image)
        contour = ax.contour(
            (labels == value).T.astype(np.float32), levels=[0.5], colors=[colour], linewidths=linewidth
        )
        contour.set_gid(gid)


def _error_overlay(ax: Any, pred: np.ndarray, ref: np.ndarray) -> None:
    from matplotlib.colors import ListedColormap

    kind = np.zeros(pred.shape, dtype=np.int8)
    kind[(ref > 0) & (pred == 0)] = 1  # missed
    kind[(pred > 0) & (ref == 0)] = 2  # extra
    kind[(pred > 0) & (ref > 0) & (pred != ref)] = 3  # wrong class
    image = ax.imshow(
        np.ma.masked_equal(kind.T, 0), cmap=ListedColormap(list(ERROR_COLOURS.values())), vmin=1, vmax=3,
        origin="lower", alpha=0.8, interpolation="nearest",
    )  # fmt: skip
    image.set_gid("errors")


def reference_for_qc(case: Any, prepared: Any, labels: Sequence[int]) -> np.ndarray | None:
    """The case's reference label map on the network grid of ``prepared``, or ``None``.

    ``None`` when the case has no label; a label that cannot be read or does not lie
    on its image's grid is logged and left out of the picture (the prediction goes on).
    """
    if getattr(case, "label", None) is None:
        return None
    from segfuse.data.preprocess import load_label

    try:
        return load_label(case.label, prepared.source, labels, prepared.affine, prepared.shape)
    except SegfuseInputError as exc:
        logger.warning("case %s: QC picture without the reference: %s", case.case_id, exc)
        return None


@_one_at_a_time
def save_qc_png(
    primary: np.ndarray,
    aux: Mapping[str, np.ndarray],
    label: np.ndarray,
    path: str | Path,
    n_slices: int = 3,
    *,
    scales: Mapping[str, Sequence[int]] | None = None,
    reference: np.ndarray | None = None,
) -> Path:
    """Write a PNG of ``n_slices`` axial slices with ``label`` over the primary and each auxiliary.

    Args:
        primary: ``(X, Y, Z)`` primary scan.
        aux: name → ``(ceil(X/sx), ceil(Y/sy), ceil(Z/sz))`` auxiliary on its edge-aligned grid.
        label: ``(X, Y, Z)`` integer label map on the primary's grid.
        path: the PNG file; its folder must exist.
        n_slices: how many slices (rows).
        scales: name → integer scale; default ``ceil(primary shape / aux shape)``.
        reference: ``(X, Y, Z)`` reference label map on the same grid: its outline is
            drawn over every panel and an error column is added (see the module docstring).

    Example:
        >>> save_qc_png(t1, {"flair": flair}, seg, "qc/case.png", scales={"flair": (2, 2, 4)})  # doctest: +SKIP
    """
    fig = render_qc(primary, aux, label, n_slices, scales=scales, reference=reference, where=str(path))
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=80)
    return path


@_one_at_a_time
def save_label_comparison_png(
    pred: np.ndarray,
    ref: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    *,
    image: np.ndarray | None = None,
    n_slices: int = 3,
) -> Path:
    """QC picture of a prediction against its reference, both ``(X, Y[, Z])`` on the grid ``affine``.

    Both are reoriented to canonical RAS for display (as :func:`save_qc_png`
    expects); ``image`` (same grid), when given, is the background, else black.
    Used by ``segfuse evaluate --qc``.
    """
    from segfuse.io.geometry import to_canonical

    def canonical(array: np.ndarray) -> np.ndarray:
        array = np.asarray(array)
        array = array.reshape(*array.shape[:3], *([1] * (3 - array.ndim)))
        return to_canonical(array[None], affine)[0][0]

    pred_c, ref_c = canonical(pred), canonical(ref)
    background = np.zeros(pred_c.shape, np.float32) if image is None else canonical(image).astype(np.float32)
    fig = render_qc(
        background, {}, pred_c, n_slices, reference=ref_c, where=str(path),
        primary_name="scan" if image is not None else "labels",
    )  # fmt: skip
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=80)
    return path
