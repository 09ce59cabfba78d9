"""A dataset's fingerprint: what ``segfuse plan`` needs to know about it, read once.

:func:`fingerprint_dataset` reads every case of a dataset and finds:

* **geometry** from the image headers (nibabel for NIfTI; other formats are read
  whole), in the canonical RAS axis order the preprocessing uses
  (:func:`segfuse.io.geometry.to_canonical`);
* **target spacing**: the per-axis median of the primary spacings, and the median
  shape on it;
* **normalisation** per modality: a modality named ``CT`` gets clipping to the
  0.5/99.5 foreground percentiles and the foreground mean/std; anything else is
  MR (z-score per case, no dataset statistics);
* **auxiliary scales**: median auxiliary spacing / target spacing per axis,
  rounded to an integer (a warning when rounding moves it by more than 10 %);
* **labels**: the values found against the declared ones;
* **object extent**: the median extent of the labelled region (target voxels per
  canonical axis), which :mod:`segfuse.training.budget` sizes patches from.

It checks every case (label on its image's grid; every auxiliary covering the
primary's field of view) and reports all failing cases in one
:class:`~segfuse.io.errors.SegfuseInputError`. :func:`segfuse.training.plan.plan_dataset`
turns a fingerprint into a run config.

Example:
    >>> fp = fingerprint_dataset("../shared/data/hippocampus", progress=False)  # doctest: +SKIP
    >>> fp.target_spacing
    (1.0, 1.0, 1.0)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from segfuse.auxiliary import ModalityNorm
from segfuse.data.cases import Case, ImageRef
from segfuse.data.labels import validate_label_array
from segfuse.data.layouts import read_dataset
from segfuse.data.preprocess import MIN_AUX_OVERLAP, nonzero_box
from segfuse.io.errors import SegfuseInputError
from segfuse.io.geometry import (
    aux_grid,
    canonical_grid,
    describe_affine,
    overlap_fraction,
    same_grid,
    spacing_from_affine,
    spacing_grid,
)
from segfuse.io.image import read_image

__all__ = ["CaseRow", "Fingerprint", "fingerprint_dataset", "format_sizes"]

logger = logging.getLogger(__name__)

SCALE_ROUNDING_WARN = 0.10
CT_PERCENTILES = (0.5, 99.5)
FOREGROUND_SAMPLES = 10_000  # foreground voxels sampled per case for the CT statistics
_MAX_LISTED = 20


@dataclass
class CaseRow:
    """One case as the plan saw it: canonical (RAS) shape and spacing, aux overlaps."""

    case_id: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    aux_overlap: dict[str, float] = field(default_factory=dict)


@dataclass
class Fingerprint:
    """What :func:`fingerprint_dataset` found in a dataset."""

    dataset: str
    primary: str
    aux_names: list[str]
    rows: list[CaseRow]
    warnings: list[str]
    target_spacing: tuple[float, ...]
    median_shape: tuple[int, ...]  # on the target spacing, canonical axes
    aux_scales: dict[str, tuple[int, ...]]
    aux_ratios: dict[str, tuple[float, ...]]
    labels_declared: dict[int, str]
    labels_found: list[int]
    norms: dict[str, ModalityNorm]  # modality → its normalisation (CT statistics, or MR), primary first
    # median per-axis extent (target voxels, canonical x, y, z) of the labelled region
    # over the cases that have one; None when no case has foreground
    object_extent: tuple[float, ...] | None = None
    total_voxels: float = 0.0  # voxels of every case on the target grid


def format_sizes(values: Sequence, spec: str = "d") -> str:
    """``48 x 64 x 48``: sizes (or spacings, with ``spec``) as the plan prints them."""
    return " x ".join(format(v, spec) for v in values)


# -- per case ---------------------------------------------------------------------------------


def _read_geometry(ref: ImageRef) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``(affine, spatial shape)`` of a scan: the NIfTI header only, other formats read whole."""
    name = ref.path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        try:
            img = nib.load(str(ref.path))
        except Exception as err:  # nibabel raises many types for unreadable headers
            raise SegfuseInputError(f"{ref.path}: cannot read the NIfTI header: {err}") from err
        affine, shape = np.asarray(img.affine, dtype=np.float64), tuple(int(s) for s in img.shape)
    else:
        volume = read_image(ref.path)
        affine, shape = volume.affine, tuple(volume.array.shape)
    spatial = (*shape[:3], *(1,) * (3 - len(shape[:3])))
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise SegfuseInputError(f"{ref.path}: singular or non-finite affine {describe_affine(affine)}")
    return affine, spatial


def _network_grid(
    canonical_affine: np.ndarray, canonical_shape: Sequence[int], target: Sequence[float]
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The primary's grid after resampling to ``target`` (as ``load_primary`` does)."""
    if np.allclose(spacing_from_affine(canonical_affine), target, rtol=1e-3):
        return canonical_affine, tuple(canonical_shape)
    return spacing_grid(canonical_affine, canonical_shape, target)


@dataclass
class _Seen:
    """What the first pass keeps of one case."""

    case: Case
    affine: np.ndarray  # primary, as stored
    shape: tuple[int, int, int]
    canonical_affine: np.ndarray
    canonical_shape: tuple[int, ...]
    aux: dict[str, tuple[np.ndarray, tuple[int, int, int]]]
    extent_mm: tuple[float, ...] | None = None  # labelled region's extent, canonical axes


def _foreground_extent_mm(label: np.ndarray, affine: np.ndarray) -> tuple[float, ...] | None:
    """Extent in mm of ``label > 0``'s bounding box along canonical (RAS) axes, or ``None``.

    Each voxel axis's box length times its spacing is assigned to the canonical
    axis it maps to (:func:`canonical_grid`'s permutation); exact for axis-aligned
    grids, an approximation for oblique ones.
    """
    box = nonzero_box((label > 0)[None])
    if box is None:
        return None
    spacing = spacing_from_affine(affine)
    ornt = nib.orientations.io_orientation(affine)
    extent = [0.0, 0.0, 0.0]
    for axis, (start, stop) in enumerate(zip(*box, strict=True)):
        extent[int(ornt[axis, 0])] = float(stop - start) * float(spacing[axis])
    return tuple(extent)


def _is_ct(name: str) -> bool:
    return name.strip().lower() == "ct"


def _foreground_sample(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to :data:`FOREGROUND_SAMPLES` voxel indices ``(N, 3)`` of ``label > 0``."""
    idx = np.argwhere(label > 0)
    if len(idx) > FOREGROUND_SAMPLES:
        idx = idx[rng.choice(len(idx), FOREGROUND_SAMPLES, replace=False)]
    return idx


def _sample_at(ref: ImageRef, label_affine: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Intensities of scan ``ref`` at label voxels ``idx`` (nearest voxel, by physical position)."""
    volume = read_image(ref.path)
    array = volume.array
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim == 4:
        array = array[..., ref.channel if ref.channel is not None else 0]
    world = idx @ label_affine[:3, :3].T + label_affine[:3, 3]
    inv = np.linalg.inv(volume.affine)
    vox = np.rint(world @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    inside = np.all((vox >= 0) & (vox < np.array(array.shape[:3])), axis=1)
    vox = vox[inside]
    return np.asarray(array[vox[:, 0], vox[:, 1], vox[:, 2]], dtype=np.float64)


def _ct_norm(samples: list[np.ndarray], name: str, warnings: list[str]) -> ModalityNorm:
    values = np.concatenate(samples) if samples else np.empty(0)
    if values.size < 2:
        message = f"modality {name!r} is CT but no foreground voxels were found; normalising with per-case statistics"
        logger.warning(message)
        warnings.append(message)
        return ModalityNorm(kind="ct")
    lo, hi = (float(v) for v in np.percentile(values, CT_PERCENTILES))
    return ModalityNorm(kind="ct", clip=[lo, hi], mean=float(values.mean()), std=float(values.std()))


def _listing(items: Sequence[str]) -> str:
    shown = "".join(f"\n  {item}" for item in items[:_MAX_LISTED])
    more = f"\n  … and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return shown + more


# -- the dataset ------------------------------------------------------------------------------


def fingerprint_dataset(
    source: Path | str,
    *,
    primary: str | None = None,
    aux: Sequence[str] | None = None,
    progress: bool = True,
    overlap_error_below: float = MIN_AUX_OVERLAP,
) -> Fingerprint:
    """Read every case of a dataset once and return its :class:`Fingerprint`.

    Args:
        source: dataset folder, ``dataset.json`` or CSV/YAML manifest
            (:func:`segfuse.data.layouts.read_dataset`).
        primary, aux: modality selection, as in ``read_dataset``.
        progress: show a progress bar.
        overlap_error_below: an auxiliary covering less than this fraction of the
            primary's field of view (on its expected grid) is an error.

    Raises:
        SegfuseInputError: unreadable files, labels off their image's grid (both
            affines given), undeclared label values, auxiliaries below the overlap
            threshold (case, file, fraction) — all failing cases listed at once.
    """
    root = Path(source).expanduser().resolve()
    dataset = read_dataset(root, primary=primary, aux=aux)
    declared = dataset.labels
    ct_names = [n for n in [dataset.primary_name, *dataset.aux_names] if _is_ct(n)]
    samples: dict[str, list[np.ndarray]] = {n: [] for n in ct_names}
    rng = np.random.default_rng(0)
    problems: list[str] = []
    warnings: list[str] = []
    found: set[int] = set()
    seen: list[_Seen] = []

    # Pass 1: headers, labels (values, grid) and CT foreground samples.
    for case in tqdm(dataset.cases, desc="plan: reading cases", unit="case", disable=not progress):
        try:
            affine, shape = _read_geometry(case.primary)
            aux_geometry = {name: _read_geometry(ref) for name, ref in case.aux.items()}
            label_volume = read_image(case.label)
            label = label_volume.array
            label = label.reshape(label.shape[:3]) if label.ndim == 4 and label.shape[3] == 1 else label
            if label.ndim == 2:
                label = label[:, :, None]
            if not same_grid(label_volume.affine, label.shape, affine, shape, atol=1e-3):
                problems.append(
                    f"{case.case_id}: label {case.label} is not on the grid of its image {case.primary.path}: "
                    f"label shape {tuple(label.shape)} affine {describe_affine(label_volume.affine)}; "
                    f"image shape {shape} affine {describe_affine(affine)}"
                )
                continue
            compact = validate_label_array(label, declared, case.label)
            found.update(int(v) for v in np.flatnonzero(np.bincount(compact.ravel())))
            if ct_names:
                idx = _foreground_sample(compact, rng)
                refs = {dataset.primary_name: case.primary, **case.aux}
                for name in ct_names:
                    if name in refs and len(idx):
                        samples[name].append(_sample_at(refs[name], label_volume.affine, idx))
        except SegfuseInputError as err:
            problems.append(f"{case.case_id}: {err}")
            continue
        canonical_affine, canonical_shape = canonical_grid(affine, shape)
        extent = _foreground_extent_mm(compact, affine)
        seen.append(_Seen(case, affine, shape, canonical_affine, canonical_shape, aux_geometry, extent))
    if problems:
        raise SegfuseInputError(f"{root}: {len(problems)} cases failed the plan's checks:" + _listing(problems))

    # Target spacing and the median shape on it.
    spacings = np.array([spacing_from_affine(s.canonical_affine) for s in seen])
    target = tuple(float(v) for v in np.median(spacings, axis=0))
    grids = [_network_grid(s.canonical_affine, s.canonical_shape, target) for s in seen]
    median_shape = tuple(int(v) for v in np.median(np.array([g[1] for g in grids]), axis=0))
    extents = [np.asarray(s.extent_mm) / np.asarray(target) for s in seen if s.extent_mm is not None]
    object_extent = tuple(float(v) for v in np.median(extents, axis=0)) if extents else None

    # Auxiliary scales from the median auxiliary spacing.
    aux_scales: dict[str, tuple[int, ...]] = {}
    aux_ratios: dict[str, tuple[float, ...]] = {}
    for name in dataset.aux_names:
        aux_spacings = [spacing_from_affine(canonical_grid(*s.aux[name])[0]) for s in seen if name in s.aux]
        if not aux_spacings:
            raise SegfuseInputError(f"{root}: auxiliary {name!r} has no scan in any case")
        ratio = tuple(float(v) for v in np.median(aux_spacings, axis=0) / np.asarray(target))
        scale = tuple(max(1, round(r)) for r in ratio)
        aux_ratios[name], aux_scales[name] = ratio, scale
        moved = [abs(s - r) / r for s, r in zip(scale, ratio, strict=True)]
        if max(moved) > SCALE_ROUNDING_WARN:
            message = (
                f"auxiliary {name!r}: spacing ratio to the target spacing {format_sizes(ratio, '.3g')} "
                f"rounds to scale {format_sizes(scale)}, moving it by up to {max(moved):.0%}; "
                f"it will be resampled to that scale"
            )
            logger.warning(message)
            warnings.append(message)

    # Pass 2: every auxiliary's overlap with its expected grid over the primary.
    rows: list[CaseRow] = []
    for s, (net_affine, net_shape) in zip(seen, grids, strict=True):
        overlaps: dict[str, float] = {}
        for name, (aux_affine, aux_shape) in s.aux.items():
            dst_affine, dst_shape = aux_grid(net_affine, net_shape, aux_scales[name])
            fraction = overlap_fraction(dst_affine, dst_shape, aux_affine, aux_shape)
            overlaps[name] = fraction
            if fraction < overlap_error_below:
                problems.append(
                    f"{s.case.case_id}: auxiliary {name!r} {s.case.aux[name].path} covers {fraction:.1%} of "
                    f"the primary's field of view (at least {overlap_error_below:.0%} needed); auxiliary "
                    f"affine {describe_affine(aux_affine)}, expected grid {describe_affine(dst_affine)}"
                )
        rows.append(
            CaseRow(
                s.case.case_id,
                tuple(s.canonical_shape),
                tuple(float(v) for v in spacing_from_affine(s.canonical_affine)),
                overlaps,
            )
        )
    if problems:
        raise SegfuseInputError(f"{root}: {len(problems)} auxiliary scans fail the overlap check:" + _listing(problems))

    # Labels.
    unused = sorted(set(declared) - found)
    if unused:
        message = f"declared labels {unused} occur in no case"
        logger.warning(message)
        warnings.append(message)

    # Normalisation per modality (CT statistics from the foreground samples).
    norms = {
        name: _ct_norm(samples[name], name, warnings) if _is_ct(name) else ModalityNorm(kind="mr")
        for name in [*dataset.aux_names, dataset.primary_name]
    }
    norms = {name: norms[name] for name in [dataset.primary_name, *dataset.aux_names]}
    return Fingerprint(
        dataset=str(root), primary=dataset.primary_name, aux_names=list(dataset.aux_names), rows=rows,
        warnings=warnings, target_spacing=target, median_shape=median_shape, aux_scales=aux_scales,
        aux_ratios=aux_ratios, labels_declared=dict(declared), labels_found=sorted(found), norms=norms,
        object_extent=object_extent, total_voxels=float(sum(math.prod(g[1]) for g in grids)),
    )
