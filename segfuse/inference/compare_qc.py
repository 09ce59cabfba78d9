"""A picture comparing label maps of one case: the scans, then each mask over the primary.

Columns: the primary, each auxiliary on its own (coarser) grid — placed on the
primary by physical coordinates (:func:`segfuse.data.preprocess.load_aux`) and
upsampled by nearest neighbour for display only, so its thick voxels show as
blocks — then one column per label map (e.g. reference, prediction with the
auxiliary, prediction without it) drawn over the primary. Rows: axial slices
through the first label map. Used by ``segfuse demo``; written atomically with a
bare matplotlib :class:`~matplotlib.figure.Figure`, like :mod:`segfuse.inference.qc`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from segfuse.data.cases import Case
from segfuse.data.preprocess import load_aux
from segfuse.inference.qc import pick_slices
from segfuse.io.atomic import atomic_write
from segfuse.io.errors import SegfuseInputError
from segfuse.io.geometry import describe_affine, same_grid, to_canonical
from segfuse.io.image import read_image

__all__ = ["save_comparison_png"]


def _upsample_nearest(array: np.ndarray, scale: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Edge-aligned nearest upsampling of ``(x, y, z)`` by ``scale``, cropped to ``shape``."""
    for axis, s in enumerate(scale):
        array = np.repeat(array, int(s), axis=axis)
    return array[tuple(slice(0, n) for n in shape)]


def save_comparison_png(
    case: Case,
    masks: Mapping[str, str | Path],
    path: str | Path,
    *,
    aux: Mapping[str, Sequence[int]] | None = None,
    primary_name: str = "primary",
    n_slices: int = 3,
) -> Path:
    """Write a PNG: primary | each auxiliary | each label map over the primary, ``n_slices`` rows.

    Args:
        case: the case (its primary and, for ``aux``, its auxiliary scans are read).
        masks: column title → label file on the primary's grid; the first one picks the slices.
        path: the PNG file; its folder is created.
        aux: auxiliary name → its integer scale over the primary (e.g. ``{"flair": (2, 2, 4)}``).
        primary_name: the primary's column title (its voxel size is added).
        n_slices: rows (axial slices at evenly spaced quantiles of the first mask).

    Raises:
        SegfuseInputError: a label file not on the primary's grid, an auxiliary the case lacks.

    Example:
        >>> save_comparison_png(case, {"reference": case.label, "prediction": "pred.nii.gz"},
        ...                     "cmp.png", aux={"flair": (2, 2, 4)})  # doctest: +SKIP
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    source = read_image(case.primary.path)
    data = source.array if case.primary.channel is None else source.array[..., case.primary.channel]
    primary, affine = to_canonical(np.asarray(data, dtype=np.float32)[None], source.affine)
    shape = primary.shape[1:]
    spacing = "×".join(f"{s:g}" for s in source.spacing[:3])
    shown: dict[str, np.ndarray] = {f"{primary_name} ({spacing} mm)": primary[0]}
    for name, scale in (aux or {}).items():
        if name not in case.aux:
            raise SegfuseInputError(
                f"case {case.case_id!r} has no auxiliary {name!r} to show; it has {sorted(case.aux)}"
            )
        ref = case.aux[name]
        coarse = load_aux(name, ref, scale, affine, shape)[0]
        spacing = "×".join(f"{s:g}" for s in read_image(ref.path).spacing[:3])
        shown[f"{name} ({spacing} mm)"] = _upsample_nearest(coarse, scale, shape)
    labels: dict[str, np.ndarray] = {}
    for title, file in masks.items():
        volume = read_image(file)
        if not same_grid(volume.affine, volume.shape[:3], source.affine, source.shape[:3], atol=1e-3):
            raise SegfuseInputError(
                f"{file}: label map {title!r} is not on the grid of {case.primary.path}: shape {volume.shape} "
                f"affine {describe_affine(volume.affine)}; primary shape {source.shape[:3]} "
                f"affine {describe_affine(source.affine)}"
            )
        labels[title] = to_canonical(np.asarray(volume.array).reshape(volume.shape[:3])[None], volume.affine)[0][0]

    first = next(iter(labels.values()), np.zeros(shape, np.uint8))
    rows = pick_slices(first, n_slices)
    n_labels = max([int(m.max()) for m in labels.values()] + [1])
    colours = ListedColormap(["#e41a1c", "#4daf4a", "#377eb8", "#ff7f00", "#984ea3", "#ffff33"][:n_labels])
    columns = [(title, image, None) for title, image in shown.items()]
    columns += [(title, primary[0], mask) for title, mask in labels.items()]
    fig = Figure(figsize=(2.4 * len(columns), 2.4 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    for r, z in enumerate(rows):
        for c, (title, volume, mask) in enumerate(columns):
            ax = axes[r, c]
            lo, hi = np.percentile(volume, [1, 99])
            # canonical RAS, radiological view: anterior up, patient's right on the left (as qc.py)
            ax.imshow(volume[..., z].T, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1,
                      interpolation="nearest")
            if mask is not None:
                ax.imshow(np.ma.masked_equal(mask[..., z].T, 0), cmap=colours, origin="lower", alpha=0.5, vmin=1,
                          vmax=n_labels + 1e-6, interpolation="nearest")
            ax.invert_xaxis()
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"z = {z}", fontsize=8)
    fig.suptitle(case.case_id, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=80)
    return path
