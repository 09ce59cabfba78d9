"""``segfuse plan``: the dataset fingerprint, written as an editable run config.

:func:`plan_dataset` reads every case of a dataset once and decides what a
training run needs to know about it:

* **geometry** from the image headers (nibabel for NIfTI; other formats are read
  whole), in the canonical RAS axis order the preprocessing uses
  (:func:`segfuse.data.preprocess.to_canonical`);
* **target spacing**: the per-axis median of the primary spacings;
* **patch and batch size** for 2D or 3D that fit a memory budget
  (:func:`activation_memory`, :func:`plan_patch`);
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
:class:`~segfuse.io.errors.SegfuseInputError`.

Example:
    >>> cfg, report = plan_dataset("../shared/data/hippocampus", out=Path("plan.yaml"))  # doctest: +SKIP
    >>> cfg.data.target_spacing, cfg.training.patch_size
    ([1.0, 1.0, 1.0], [64, 64, 64])
"""

from __future__ import annotations

import datetime
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml
from tqdm import tqdm

from segfuse.auxiliary import AuxInput
from segfuse.config import (
    Config,
    DataConfig,
    ExperimentConfig,
    InferenceConfig,
    ModalityNorm,
    ModelConfig,
    TrainingConfig,
    config_from_dict,
)
from segfuse.data.labels import validate_label_array
from segfuse.data.layouts import Case, ImageRef, read_dataset
from segfuse.data.preprocess import MIN_AUX_OVERLAP, spacing_grid
from segfuse.io.atomic import atomic_write_text
from segfuse.io.errors import SegfuseInputError
from segfuse.io.geometry import aux_grid, describe_affine, overlap_fraction, same_grid, spacing_from_affine
from segfuse.io.image import read_image

__all__ = ["CaseRow", "PlanReport", "activation_memory", "plan_dataset", "plan_patch"]

logger = logging.getLogger(__name__)

# ResNet18 stage widths (segfuse.models.encoders.RESNET18_WIDTHS; not imported:
# the data layer does not import the model layer).
_RESNET18_WIDTHS = (64, 64, 128, 256, 512)
_DECODER_CHANNELS = (256, 128, 64, 32, 16)
WIDEN_FACTOR = 0.5
STEM_KERNEL = 3
# float32 values kept per feature-map element for the backward pass (conv, norm and
# activation outputs of the two convs per block, concatenations, gradients). Measured
# with torch.autograd.graph.saved_tensors_hooks on a FusionUNet (widen 0.5): 6 to 8.
ACTIVATION_FACTOR = 10
MIN_BATCH = 2
# A batch covers at most this share of all the dataset's voxels (nnU-Net's rule).
MAX_BATCH_DATASET_SHARE = 0.05
SMALL_VOLUME = 64  # median shape below this on an axis -> encoder depth 4
SCALE_ROUNDING_WARN = 0.10
CT_PERCENTILES = (0.5, 99.5)
FOREGROUND_SAMPLES = 10_000  # foreground voxels sampled per case for the CT statistics
_MAX_LISTED = 20


# ----------------------------------------------------------------------- report


@dataclass
class CaseRow:
    """One case as the plan saw it: canonical (RAS) shape and spacing, aux overlaps."""

    case_id: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    aux_overlap: dict[str, float] = field(default_factory=dict)


@dataclass
class PlanReport:
    """What :func:`plan_dataset` found; :meth:`table` renders the summary."""

    dataset: str
    rows: list[CaseRow]
    warnings: list[str]
    target_spacing: tuple[float, ...]
    median_shape: tuple[int, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    encoder_depth: int
    memory_gb: float
    memory_budget_gb: float
    aux_scales: dict[str, tuple[int, ...]]
    aux_ratios: dict[str, tuple[float, ...]]
    labels_declared: dict[int, str]
    labels_found: list[int]
    norms: dict[str, str]
    # median per-axis extent (target voxels, canonical x, y, z) of the labelled region
    # over the cases that have one; None when no case has foreground
    object_extent: tuple[float, ...] | None = None
    total_voxels: float = 0.0  # voxels of every case on the target grid

    def min_overlap(self, name: str) -> tuple[float, str] | None:
        """``(smallest overlap fraction, case id)`` of auxiliary ``name``, or ``None``."""
        pairs = [(r.aux_overlap[name], r.case_id) for r in self.rows if name in r.aux_overlap]
        return min(pairs) if pairs else None

    def table(self) -> str:
        """A two-column text summary of the plan."""
        spacings = np.array([r.spacing for r in self.rows])
        spacing_range = ", ".join(
            f"{axis} {lo:.3g}-{hi:.3g}"
            for axis, lo, hi in zip("xyz", spacings.min(axis=0), spacings.max(axis=0), strict=True)
        )
        lines = [
            ("dataset", self.dataset),
            ("cases", str(len(self.rows))),
            ("spacing range (mm)", spacing_range),
            ("target spacing (mm)", _fmt_tuple(self.target_spacing, ".4g")),
            ("median shape (target)", _fmt_tuple(self.median_shape)),
            ("median object extent", "none labelled" if self.object_extent is None
             else _fmt_tuple(self.object_extent, ".0f")),
            ("patch size", _fmt_tuple(self.patch_size)),
            ("batch size", str(self.batch_size)),
            ("encoder depth", str(self.encoder_depth)),
            ("memory estimate", f"{self.memory_gb:.2f} of {self.memory_budget_gb:.2f} GiB"),
        ]
        for name, scale in self.aux_scales.items():
            worst = self.min_overlap(name)
            overlap = "no scans" if worst is None else f"min overlap {worst[0]:.1%} ({worst[1]})"
            lines.append(
                (
                    f"aux {name}",
                    f"scale {_fmt_tuple(scale)} (ratio {_fmt_tuple(self.aux_ratios[name], '.3g')}), {overlap}",
                )
            )
        lines.append(("labels declared", ", ".join(f"{k}={v}" for k, v in self.labels_declared.items())))
        lines.append(("labels found", ", ".join(str(v) for v in self.labels_found)))
        lines.append(("normalisation", ", ".join(f"{k}: {v}" for k, v in self.norms.items())))
        width = max(len(k) for k, _ in lines)
        text = [f"{k.ljust(width)}  {v}" for k, v in lines]
        text += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(text)


def _fmt_tuple(values: Sequence, spec: str = "d") -> str:
    return " x ".join(format(v, spec) for v in values)


# --------------------------------------------------------------------- geometry


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


def canonical_grid(affine: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, tuple[int, ...]]:
    """The grid :func:`~segfuse.data.preprocess.to_canonical` gives, from geometry alone.

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


def _network_grid(
    canonical_affine: np.ndarray, canonical_shape: Sequence[int], target: Sequence[float]
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The primary's grid after resampling to ``target`` (as ``load_primary`` does)."""
    if np.allclose(spacing_from_affine(canonical_affine), target, rtol=1e-3):
        return canonical_affine, tuple(canonical_shape)
    return spacing_grid(canonical_affine, canonical_shape, target)


# ----------------------------------------------------------------- memory model


def _level_channels(spatial_dims: int, encoder_depth: int, in_channels: int) -> tuple[list[int], list[int]]:
    """Channels of the encoder features (levels 0..depth) and decoder outputs (deepest first)."""
    if spatial_dims == 3:
        widths = [int(w * WIDEN_FACTOR) for w in _RESNET18_WIDTHS]
        widths[0] = widths[1]  # MONAI's ResNet stem has the first stage's width
    else:  # the 2D encoder is smp's full-width ResNet18
        widths = list(_RESNET18_WIDTHS)
    return [in_channels, *widths[:encoder_depth]], list(_DECODER_CHANNELS[-encoder_depth:])


def _parameter_estimate(spatial_dims: int, encoder_depth: int, in_channels: int) -> int:
    """Rough parameter count: two 3^d convs of ``w x w`` per encoder block pair, two per decoder block."""
    k = 3**spatial_dims
    enc, dec = _level_channels(spatial_dims, encoder_depth, in_channels)
    params = 7**spatial_dims * enc[0] * enc[1]
    params += sum(4 * k * w * w for w in enc[2:])
    deeper = enc[-1]
    for out, skip in zip(dec, reversed(enc[:-1]), strict=True):
        params += k * (deeper + skip) * out + k * out * out
        deeper = out
    return params


def activation_memory(patch: Sequence[int], batch_size: int, encoder_depth: int, *, in_channels: int = 1) -> int:
    """Estimated training memory in bytes of a lean FusionUNet on ``patch`` (2D or 3D).

    With level ``l`` at stride ``2**l`` holding ``V_l = prod(ceil(p_d / 2**l))`` voxels::

        bytes = 16 * P + B * 4 * K * (sum_l enc_l * V_l + sum_i dec_i * V_(depth-1-i))

    ``enc_l``: encoder feature channels (the input at level 0, then the ResNet18
    widths times 0.5 in 3D — full width in 2D, smp's encoder — at levels
    ``1..depth``); ``dec_i``: decoder block ``i``'s channels (``[256, 128, 64,
    32, 16]``, the last ``depth`` of them), at the stride of its skip. ``K = 10``
    float32 values stored per feature element for the backward pass (measured
    6-8 on FusionUNet with ``saved_tensors_hooks``); ``B`` the batch size;
    ``P`` an estimate of the parameter count, times 16 bytes for weights,
    gradients and AdamW's two moments. Auxiliary branches are small (coarse
    grids, 16 features) and covered by ``K``'s margin.

    Example:
        >>> activation_memory((64, 64, 64), 2, 5) / 2**30 < 1.0
        True
    """
    dims = len(patch)
    enc, dec = _level_channels(dims, encoder_depth, in_channels)

    def voxels(level: int) -> int:
        return math.prod(-(-int(p) // 2**level) for p in patch)

    elements = sum(c * voxels(level) for level, c in enumerate(enc))
    elements += sum(c * voxels(encoder_depth - 1 - i) for i, c in enumerate(dec))
    return 16 * _parameter_estimate(dims, encoder_depth, in_channels) + batch_size * 4 * ACTIVATION_FACTOR * elements


def plan_patch(
    median_shape: Sequence[int],
    multiples: Sequence[int],
    encoder_depth: int,
    memory_budget_gb: float,
    *,
    max_voxels_per_batch: float | None = None,
    in_channels: int = 1,
) -> tuple[tuple[int, ...], int]:
    """``(patch, batch)`` whose :func:`activation_memory` fits ``memory_budget_gb`` GiB.

    The patch starts at ``median_shape`` rounded up to ``multiples`` per axis and
    loses one multiple from its largest axis until a batch of 2 fits; the batch
    is then as large as the budget allows (at least 2), capped so that it spans
    at most ``max_voxels_per_batch`` voxels.

    Raises:
        SegfuseInputError: even the smallest patch (one multiple per axis) does
            not fit with a batch of 2.

    Example:
        >>> plan_patch((36, 50, 35), (16, 16, 16), 4, 4.0)[0]
        (48, 64, 48)
    """
    budget = memory_budget_gb * 2**30
    patch = [max(m, -(-int(n) // m) * m) for n, m in zip(median_shape, multiples, strict=True)]
    while activation_memory(patch, MIN_BATCH, encoder_depth, in_channels=in_channels) > budget:
        shrinkable = [d for d in range(len(patch)) if patch[d] > multiples[d]]
        if not shrinkable:
            need = activation_memory(patch, MIN_BATCH, encoder_depth, in_channels=in_channels) / 2**30
            raise SegfuseInputError(
                f"memory budget {memory_budget_gb:g} GiB is too small: the smallest patch "
                f"{_fmt_tuple(patch)} with batch {MIN_BATCH} needs about {need:.2f} GiB"
            )
        axis = max(shrinkable, key=lambda d: (patch[d], -d))
        patch[axis] -= multiples[axis]
    fixed = activation_memory(patch, 0, encoder_depth, in_channels=in_channels)
    per_sample = activation_memory(patch, 1, encoder_depth, in_channels=in_channels) - fixed
    batch = int((budget - fixed) // per_sample)
    if max_voxels_per_batch is not None:
        batch = min(batch, int(max_voxels_per_batch // math.prod(patch)))
    return tuple(patch), max(MIN_BATCH, batch)


# ------------------------------------------------------------------- the plan


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
    mask = label > 0
    if not mask.any():
        return None
    spacing = spacing_from_affine(affine)
    ornt = nib.orientations.io_orientation(affine)
    extent = [0.0, 0.0, 0.0]
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        extent[int(ornt[axis, 0])] = float(hit[-1] - hit[0] + 1) * float(spacing[axis])
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


def plan_dataset(
    source: Path | str,
    *,
    primary: str | None = None,
    aux: Sequence[str] | None = None,
    mode: str = "3d",
    memory_budget_gb: float = 4.0,
    out: Path | None = None,
    progress: bool = True,
    overlap_error_below: float = MIN_AUX_OVERLAP,
) -> tuple[Config, PlanReport]:
    """Fingerprint a dataset and return (and optionally write) its run config.

    Args:
        source: dataset folder, ``dataset.json`` or CSV/YAML manifest
            (:func:`segfuse.data.layouts.read_dataset`).
        primary, aux: modality selection, as in ``read_dataset``.
        mode: ``"3d"`` (3D patches) or ``"2d"`` (slices along the canonical Z axis;
            patch over X, Y).
        memory_budget_gb: GiB the training step may use (:func:`activation_memory`).
        out: where to write the plan YAML (with a leading comment block); ``None``
            writes nothing.
        progress: show a progress bar.
        overlap_error_below: an auxiliary covering less than this fraction of the
            primary's field of view (on its expected grid) is an error.

    Returns:
        ``(config, report)``; ``config`` is validated and equals what ``out`` loads back to.

    Raises:
        SegfuseInputError: unreadable files, labels off their image's grid (both
            affines given), undeclared label values, auxiliaries below the overlap
            threshold (case, file, fraction) — all failing cases listed at once.
    """
    if mode not in ("2d", "3d"):
        raise SegfuseInputError(f"mode: expected '2d' or '3d', got {mode!r}")
    if memory_budget_gb <= 0:
        raise SegfuseInputError(f"memory_budget_gb: must be positive, got {memory_budget_gb}")
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
                f"auxiliary {name!r}: spacing ratio to the target spacing {_fmt_tuple(ratio, '.3g')} "
                f"rounds to scale {_fmt_tuple(scale)}, moving it by up to {max(moved):.0%}; "
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

    # Network, patch and batch.
    dims = 2 if mode == "2d" else 3
    plane = median_shape[:dims]
    encoder_depth = 4 if min(plane) < SMALL_VOLUME else 5
    multiples = [math.lcm(2**encoder_depth, *(scale[d] for scale in aux_scales.values())) for d in range(dims)]
    total_voxels = float(sum(math.prod(g[1]) for g in grids))
    patch, batch = plan_patch(
        plane, multiples, encoder_depth, memory_budget_gb, max_voxels_per_batch=MAX_BATCH_DATASET_SHARE * total_voxels
    )
    memory = activation_memory(patch, batch, encoder_depth)

    def norm_for(name: str) -> ModalityNorm:
        return _ct_norm(samples[name], name, warnings) if _is_ct(name) else ModalityNorm(kind="mr")

    cfg = Config(
        experiment=ExperimentConfig(name=f"{root.stem}_{mode}"),
        data=DataConfig(
            dataset=str(root),
            primary=dataset.primary_name,
            aux={name: AuxInput(name, scale=aux_scales[name], norm=norm_for(name)) for name in dataset.aux_names},
            labels=dict(declared),
            target_spacing=list(target),
            primary_norm=norm_for(dataset.primary_name),
        ),
        model=ModelConfig(
            mode=mode,
            encoder_depth=encoder_depth,
            widen_factor=WIDEN_FACTOR,
            stem_kernel=STEM_KERNEL,
            decoder_channels=list(_DECODER_CHANNELS[-encoder_depth:]),
        ),
        training=TrainingConfig(patch_size=list(patch), batch_size=batch),
        inference=InferenceConfig(roi_size=list(patch)),
    )
    cfg = config_from_dict(cfg.to_dict())  # validated, and exactly what the YAML loads back to

    report = PlanReport(
        dataset=str(root),
        rows=rows,
        warnings=warnings,
        target_spacing=target,
        median_shape=median_shape,
        patch_size=patch,
        batch_size=batch,
        encoder_depth=encoder_depth,
        memory_gb=memory / 2**30,
        memory_budget_gb=memory_budget_gb,
        aux_scales=aux_scales,
        aux_ratios=aux_ratios,
        labels_declared=dict(declared),
        labels_found=sorted(found),
        norms={
            name: cfg.data.aux[name].norm.kind if name in cfg.data.aux else cfg.data.primary_norm.kind
            for name in [dataset.primary_name, *dataset.aux_names]
        },
        object_extent=object_extent,
        total_voxels=total_voxels,
    )
    if out is not None:
        write_plan(cfg, Path(out), root)
    return cfg, report


def write_plan(
    cfg: Config,
    out: Path,
    dataset: Path | str,
    *,
    notes: Sequence[str] = (),
    key_comments: dict[str, str] | None = None,
) -> Path:
    """Write ``cfg`` as YAML (what :func:`segfuse.config.save_config` writes) after a comment block.

    ``notes``: extra lines for the comment block (the measurements behind the
    choice); ``key_comments``: ``{"training.batch_size": "why"}``, written as a
    comment at the end of that key's line.
    """
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"# segfuse plan for {dataset}, {stamp}; edit freely\n"
        "# written by `segfuse plan`; train with `segfuse train --config <this file>`\n"
        "# data.dataset is absolute; a relative path is read relative to this file\n"
    )
    header += "".join(f"# {line}\n" for line in notes)
    body = yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
    return atomic_write_text(out, header + _comment_keys(body, key_comments or {}))


def _comment_keys(text: str, comments: dict[str, str]) -> str:
    """Append ``# comment`` to the lines of top-level ``section.key`` entries in YAML ``text``."""
    lines, section = [], ""
    for line in text.splitlines():
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        key = stripped.split(":", 1)[0] if ":" in stripped and not stripped.startswith("- ") else None
        if indent == 0 and key is not None:
            section = key
        elif indent == 2 and key is not None and f"{section}.{key}" in comments:
            line = f"{line}  # {comments[f'{section}.{key}']}"
        lines.append(line)
    return "\n".join(lines) + "\n"
