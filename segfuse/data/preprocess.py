"""From files to network-ready arrays: one code path for training and prediction.

For one case:

1. read the primary (and pick its channel in 4D files);
2. reorient to the canonical RAS frame (array axes flipped/permuted, affine updated);
3. resample the primary to the target spacing (linear) when its spacing differs;
4. bring each auxiliary, by physical coordinates, onto the edge-aligned grid of
   its scale over the primary's field of view (no resampling when it already
   lies there, as the BraTS ``flair_2x2x4mm`` does); never onto the primary grid;
5. bring the label onto the primary grid (nearest neighbour), after checking it
   shares the primary's original grid;
6. note the box of the primary's non-zero voxels *before* normalisation
   (:attr:`PreparedCase.nonzero_box`: the head of a skull-stripped scan; the
   whole volume for most others), which :func:`crop_to_nonzero` crops to for
   training and prediction alike;
7. normalise each input (MR: z-score over its foreground, the voxels above
   5 % of the 99th percentile; CT: clip to the
   plan's percentiles, z-score with the plan's mean and std).

Resampling is MONAI's :class:`~monai.transforms.SpatialResample`, which maps by
affines (physical space), not array indices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from segfuse.auxiliary import ModalityNorm, aux_scales, lcm_of_scales
from segfuse.config import Config
from segfuse.data.cases import Case, ImageRef
from segfuse.data.labels import validate_label_array
from segfuse.io.errors import SegfuseInputError
from segfuse.io.geometry import (
    aux_grid,
    describe_affine,
    overlap_fraction,
    same_grid,
    spacing_from_affine,
    spacing_grid,
    to_canonical,
)
from segfuse.io.image import Volume, read_image

MIN_AUX_OVERLAP = 0.5
FOREGROUND_FRACTION = 0.05


@dataclass
class Preprocessing:
    """Everything that turns a case into arrays; saved inside every checkpoint (via the config)."""

    target_spacing: Sequence[float] | None
    primary_norm: ModalityNorm
    aux_scales: Mapping[str, Sequence[int]] = field(default_factory=dict)
    aux_norms: Mapping[str, ModalityNorm] = field(default_factory=dict)
    labels: Sequence[int] = (0, 1)


@dataclass
class PreparedCase:
    """A case on the network's grid.

    Attributes:
        primary: ``(C, X, Y, Z)`` float32, normalised, canonical RAS, target spacing.
        aux: ``name → (C_a, *ceil((X, Y, Z) / scale))`` float32, or ``None`` when absent.
        label: ``(X, Y, Z)`` uint8 or ``None``.
        affine: voxel → RAS mm of ``primary``'s grid.
        source: the primary as read (its grid is where predictions are written).
        offset: start of ``primary`` inside the canonical, resampled grid (non-zero
            after :func:`crop_to_nonzero`).
        nonzero_box: ``(start, stop)`` per axis of the voxels where some channel of the
            primary is non-zero *before* normalisation (which moves the zero background
            to ``-mean / std``); ``None`` when unknown (a case read back from the store)
            or when the primary is all zero.
    """

    case_id: str
    primary: np.ndarray
    aux: dict[str, np.ndarray | None]
    label: np.ndarray | None
    affine: np.ndarray
    source: Volume | None = None
    offset: tuple[int, ...] = (0, 0, 0)
    nonzero_box: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.primary.shape[1:])


# -- reading, resampling, normalising ---------------------------------------------------


def _channel(volume: Volume, ref: ImageRef) -> np.ndarray:
    """``(C, X, Y, Z)`` float32 of the referenced channel (or all channels)."""
    array = volume.array
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim == 4:
        if ref.channel is not None:
            if not 0 <= ref.channel < array.shape[3]:
                raise SegfuseInputError(
                    f"{ref.path}: channel {ref.channel} requested, the image has {array.shape[3]} channels"
                )
            return np.asarray(array[..., ref.channel], dtype=np.float32)[None]
        return np.moveaxis(np.asarray(array, dtype=np.float32), 3, 0)
    return np.asarray(array, dtype=np.float32)[None]


def resample(
    array: np.ndarray, affine: np.ndarray, dst_affine: np.ndarray, dst_shape: Sequence[int], mode: str
) -> np.ndarray:
    """Resample ``array`` ``(C, *spatial)`` onto ``(dst_affine, dst_shape)`` by physical coordinates."""
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    image = MetaTensor(torch.as_tensor(array), affine=torch.as_tensor(affine, dtype=torch.float64))
    out = SpatialResample(mode=mode, padding_mode="zeros", align_corners=False, dtype=torch.float64)(
        image, dst_affine=torch.as_tensor(dst_affine, dtype=torch.float64), spatial_size=tuple(dst_shape)
    )
    return np.asarray(out.detach().cpu().numpy(), dtype=np.float32)


def normalise(array: np.ndarray, norm: ModalityNorm) -> np.ndarray:
    """Normalise ``(C, *spatial)`` per channel; see the module docstring."""
    out = np.empty_like(array, dtype=np.float32)
    for c, channel in enumerate(array):
        if norm.kind == "ct":
            lo, hi = norm.clip if norm.clip is not None else (channel.min(), channel.max())
            clipped = np.clip(channel, lo, hi)
            mean = norm.mean if norm.mean is not None else float(clipped.mean())
            std = norm.std if norm.std is not None else float(clipped.std())
            out[c] = (clipped - mean) / max(std, 1e-8)
            continue
        # Foreground: clearly above the background. A plain "non-zero" mask would
        # differ between a scan and its low-resolution copy, whose anti-aliasing
        # spreads tiny values into the background.
        positive = channel[channel > 0]
        if positive.size < 2:
            out[c] = 0.0
            continue
        mask = channel > FOREGROUND_FRACTION * np.percentile(positive, 99)
        values = channel[mask].astype(np.float64) if mask.sum() >= 2 else positive.astype(np.float64)
        out[c] = (channel - values.mean()) / max(values.std(), 1e-8)
    return out


# -- the case pipeline -----------------------------------------------------------------


def load_primary(ref: ImageRef, spec: Preprocessing) -> tuple[Volume, np.ndarray, np.ndarray]:
    """Read the primary; return ``(source volume, array (C, *grid), affine)`` on the network grid."""
    source = read_image(ref.path)
    array, affine = to_canonical(_channel(source, ref), source.affine)
    if spec.target_spacing is not None:
        spacing = spacing_from_affine(affine)
        if not np.allclose(spacing, spec.target_spacing, rtol=1e-3):
            dst_affine, dst_shape = spacing_grid(affine, array.shape[1:], spec.target_spacing)
            array = resample(array, affine, dst_affine, dst_shape, mode="bilinear")
            affine = dst_affine
    return source, array, affine


def load_aux(
    name: str, ref: ImageRef, scale: Sequence[int], primary_affine: np.ndarray, primary_shape: Sequence[int]
) -> np.ndarray:
    """Read auxiliary ``name`` onto the edge-aligned grid of ``scale`` over the primary."""
    volume = read_image(ref.path)
    array = _channel(volume, ref)
    dst_affine, dst_shape = aux_grid(primary_affine, primary_shape, scale)
    fraction = overlap_fraction(dst_affine, dst_shape, volume.affine, array.shape[1:])
    if fraction < MIN_AUX_OVERLAP:
        raise SegfuseInputError(
            f"{ref.path}: auxiliary {name!r} covers only {fraction:.0%} of the primary's field of view "
            f"(at least {MIN_AUX_OVERLAP:.0%} needed); auxiliary affine {describe_affine(volume.affine)}, "
            f"expected grid {describe_affine(dst_affine)}"
        )
    canonical, canonical_affine = to_canonical(array, volume.affine)
    if same_grid(canonical_affine, canonical.shape[1:], dst_affine, dst_shape, atol=1e-3):
        return canonical
    return resample(canonical, canonical_affine, dst_affine, dst_shape, mode="bilinear")


def load_label(
    path, source: Volume, labels: Sequence[int], primary_affine: np.ndarray, primary_shape: Sequence[int]
) -> np.ndarray:
    """Read a label map that must share the primary's original grid; nearest-neighbour to the network grid."""
    volume = read_image(path)
    array = volume.array if volume.array.ndim == 3 else volume.array.reshape(volume.array.shape[:3])
    if not same_grid(volume.affine, array.shape, source.affine, source.shape[:3], atol=1e-3):
        raise SegfuseInputError(
            f"{path}: label is not on the grid of its image {source.path}: label shape {array.shape} "
            f"affine {describe_affine(volume.affine)}; image shape {source.shape[:3]} "
            f"affine {describe_affine(source.affine)}"
        )
    label = validate_label_array(array, labels, path)[None].astype(np.float32)
    label, affine = to_canonical(label, volume.affine)
    if label.shape[1:] != tuple(primary_shape) or not np.allclose(affine, primary_affine, atol=1e-3):
        label = resample(label, affine, primary_affine, primary_shape, mode="nearest")
    return label[0].astype(np.uint8)


def prepare_case(case: Case, spec: Preprocessing, *, with_label: bool = True) -> PreparedCase:
    """Run the whole pipeline on ``case`` (see the module docstring)."""
    source, primary, affine = load_primary(case.primary, spec)
    shape = primary.shape[1:]
    aux: dict[str, np.ndarray | None] = {}
    for name, scale in spec.aux_scales.items():
        ref = case.aux.get(name)
        if ref is None:
            aux[name] = None
            continue
        array = load_aux(name, ref, scale, affine, shape)
        aux[name] = normalise(array, spec.aux_norms.get(name, ModalityNorm()))
    label = None
    if with_label and case.label is not None:
        label = load_label(case.label, source, spec.labels, affine, shape)
    return PreparedCase(
        case_id=case.case_id,
        primary=normalise(primary, spec.primary_norm),
        aux=aux,
        label=label,
        affine=affine,
        source=source,
        nonzero_box=nonzero_box(primary),
    )


def nonzero_box(array: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """``(start, stop)`` per spatial axis of the voxels where some channel of ``array`` ``(C, *S)`` is non-zero.

    ``None`` when every voxel is zero.
    """
    mask = np.any(array != 0, axis=0)
    if not mask.any():
        return None
    start, stop = [], []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        start.append(int(hit[0]))
        stop.append(int(hit[-1]) + 1)
    return tuple(start), tuple(stop)


def crop_to_nonzero(case: PreparedCase, scales: Mapping[str, Sequence[int]], margin: int = 0) -> PreparedCase:
    """Crop to the primary's non-zero box (and the label's), start and end on multiples of the scales' lcm.

    The box is :attr:`PreparedCase.nonzero_box` — found before normalisation, since
    after it the background is no longer zero — or, for a case without one, the
    non-zero voxels of ``case.primary`` as it is. Voxels of the label above 0 are kept
    whatever the box. Keeps every auxiliary exactly aligned: the auxiliary is cropped
    at ``start / scale``. Returns ``case`` itself when there is nothing to crop.
    """
    lcm = lcm_of_scales(scales)
    box = case.nonzero_box if case.nonzero_box is not None else nonzero_box(case.primary)
    if case.label is not None and case.label.any():
        label_box = nonzero_box(case.label[None])
        box = label_box if box is None else (
            tuple(min(a, b) for a, b in zip(box[0], label_box[0], strict=True)),
            tuple(max(a, b) for a, b in zip(box[1], label_box[1], strict=True)),
        )
    if box is None:
        return case
    start = [max(0, (a - margin) // m * m) for a, m in zip(box[0], lcm, strict=True)]
    stop = [min(n, -(-(b + margin) // m) * m) for b, m, n in zip(box[1], lcm, case.shape, strict=True)]
    if start == [0] * len(start) and stop == list(case.shape):
        return case
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    aux: dict[str, np.ndarray | None] = {}
    for name, array in case.aux.items():
        if array is None:
            aux[name] = None
            continue
        s = scales[name]
        window = [slice(a // si, -(-b // si)) for a, b, si in zip(start, stop, s, strict=True)]
        aux[name] = array[(slice(None), *window)]
    affine = case.affine.copy()
    affine[:3, 3] = case.affine[:3, :3] @ np.asarray(start, dtype=float) + case.affine[:3, 3]
    return PreparedCase(
        case_id=case.case_id,
        primary=np.ascontiguousarray(case.primary[(slice(None), *box)]),
        aux={k: None if v is None else np.ascontiguousarray(v) for k, v in aux.items()},
        label=None if case.label is None else np.ascontiguousarray(case.label[box]),
        affine=affine,
        source=case.source,
        offset=tuple(int(o) + a for o, a in zip(case.offset, start, strict=True)),
        nonzero_box=None if case.nonzero_box is None else (
            tuple(max(0, a - s) for a, s in zip(case.nonzero_box[0], start, strict=True)),
            tuple(min(b, e) - s for b, e, s in zip(case.nonzero_box[1], stop, start, strict=True)),
        ),
    )


def preprocessing_from_config(cfg: Config) -> Preprocessing:
    """The :class:`Preprocessing` a :class:`segfuse.config.Config` describes (its auxiliaries' scales and norms)."""
    return Preprocessing(
        target_spacing=cfg.data.target_spacing,
        primary_norm=cfg.data.primary_norm,
        aux_scales=aux_scales(cfg.data.aux),
        aux_norms={name: spec.norm for name, spec in cfg.data.aux.items()},
        labels=sorted(cfg.data.labels) if cfg.data.labels else (0, 1),
    )
