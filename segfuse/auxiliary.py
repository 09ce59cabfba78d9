"""The auxiliary description: one frozen record per auxiliary scan, read by every layer.

An auxiliary scan (a FLAIR beside a T1, a PET beside a CT) is described once, by
:class:`AuxInput`: its name, channels, scale relative to the primary grid, how the
network maps and fuses it, which skip levels it enters, its modality-dropout rate
and its intensity normalisation. The run config holds one per entry of
``data.aux`` (the YAML key is the name), and everything downstream reads the same
record: preprocessing (scale, normalisation), the store, patch sampling (scale,
dropout), windowing (scale), the network (scale, mapper, fusion, levels), export
and ablate. :func:`lcm_of_scales` is the one place where the scales' least common
multiple is computed (every window start and size is a multiple of it).

This module sits at the bottom of the package beside :mod:`segfuse.io`: it imports
neither torch nor any other layer.

Example:
    >>> flair = AuxInput("flair", scale=(2, 2, 4), dropout=0.3)
    >>> flair.with_dims(2).scale
    (2, 2)
    >>> lcm_of_scales(aux_scales({"flair": flair, "pet": AuxInput("pet", scale=(3, 3, 3))}))
    (6, 6, 12)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FUSION_MODES",
    "MAPPER_KINDS",
    "AuxInput",
    "ModalityNorm",
    "allows_missing",
    "aux_scales",
    "lcm_of_scales",
]

#: How an auxiliary is mapped at its native resolution (:mod:`segfuse.models.mappers`).
MAPPER_KINDS = ("linear", "mlp", "conv")
#: How mapped features meet the encoder's at a skip level (:mod:`segfuse.models.fusion`).
FUSION_MODES = ("concat", "add", "gated")

# 2.5D: the auxiliary plane beside primary slice z (segfuse.data.aux_slices)
AUX_SLICE_MODES = ("containing", "linear")

#: What ``segfuse plan`` writes for every auxiliary: the fusion study's choice (issue 12,
#: docs/benchmarks.md "Fusion study on 23 subjects"), one conv block per coarser level.
PLANNED_LEVEL_BLOCKS = 1


def planned_aux_slice(mode: str) -> str:
    """``model.aux_slice`` that ``segfuse plan`` writes for ``mode``: the study's ``linear`` in 2D."""
    return "linear" if mode == "2d" else "containing"


@dataclass(frozen=True)
class ModalityNorm:
    """Intensity normalisation of one input (written by ``segfuse plan``).

    ``kind``: ``"mr"`` (z-score over the foreground of each case) or ``"ct"``
    (clip to ``clip``, then z-score with the dataset ``mean``/``std``).
    """

    kind: str = "mr"
    clip: tuple[float, ...] | None = None
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if self.clip is not None:
            object.__setattr__(self, "clip", tuple(float(c) for c in self.clip))

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as the run config writes it (``clip`` a list)."""
        return {"kind": self.kind, "clip": None if self.clip is None else list(self.clip),
                "mean": self.mean, "std": self.std}


@dataclass(frozen=True)
class AuxInput:
    """One auxiliary scan: what it is, how preprocessing treats it and how the network takes it.

    Args:
        name: the modality's name in the dataset, and the key of the auxiliary in
            ``FusionUNet.forward(aux={name: tensor})``.
        channels: channels of the auxiliary tensor.
        scale: auxiliary voxel size over primary voxel size per axis (integers;
            anisotropic allowed, e.g. ``(2, 2, 4)``). The auxiliary covers the
            primary's field of view on the edge-aligned grid of that spacing: its
            spatial shape is ``ceil(primary_shape / scale)``. A run config gives 3
            entries; a 2D network takes the in-plane two (:meth:`with_dims`).
        mapper: ``"linear"``, ``"mlp"`` or ``"conv"`` (see :mod:`segfuse.models.mappers`).
        fusion: ``"concat"``, ``"add"`` or ``"gated"`` (see :mod:`segfuse.models.fusion`).
        features: channels the mapper produces (for ``concat``, what each level receives).
        hidden: hidden width of the ``mlp`` mapper.
        mapper_layers: number of convolutions of the ``conv`` mapper.
        level_blocks: 3×3 convolution blocks (conv, norm, ReLU) applied at every
            level the auxiliary enters after the first, each on the features
            brought from the previous level: the auxiliary gets a small encoder of
            its own whose receptive field grows with the stride, as the primary's
            does. ``0`` (default): the mapped features are only pooled (or
            interpolated) to each level.
        levels: strides of the skip levels it enters, e.g. ``(4, 8, 16)``. Default
            (``None``): the finest level whose stride is at least ``scale`` on every
            axis — the closest level at which the auxiliary needs no upsampling —
            and every deeper level.
        dropout: probability that training drops the auxiliary from a sample
            (modality dropout); a model trained with some dropout may predict without it.
        norm: its intensity normalisation (:class:`ModalityNorm`).
    """

    name: str
    channels: int = 1
    scale: tuple[int, ...] = (1, 1, 1)
    mapper: str = "conv"
    fusion: str = "concat"
    features: int = 16
    hidden: int = 32
    mapper_layers: int = 2
    level_blocks: int = 0
    levels: tuple[int, ...] | None = None
    dropout: float = 0.0
    norm: ModalityNorm = field(default_factory=ModalityNorm)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(int(s) for s in self.scale))
        if self.levels is not None:
            object.__setattr__(self, "levels", tuple(int(v) for v in self.levels))
        if isinstance(self.norm, Mapping):
            object.__setattr__(self, "norm", ModalityNorm(**self.norm))
        if any(s < 1 for s in self.scale):
            raise ValueError(f"AuxInput {self.name!r}: scale must be positive integers, got {self.scale}")
        if self.mapper not in MAPPER_KINDS:
            raise ValueError(f"AuxInput {self.name!r}: mapper must be one of {MAPPER_KINDS}, got {self.mapper!r}")
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"AuxInput {self.name!r}: fusion must be one of {FUSION_MODES}, got {self.fusion!r}")
        if self.channels < 1 or self.features < 1:
            raise ValueError(
                f"AuxInput {self.name!r}: channels and features must be >= 1, "
                f"got channels={self.channels}, features={self.features}"
            )
        if self.level_blocks < 0:
            raise ValueError(f"AuxInput {self.name!r}: level_blocks must be >= 0, got {self.level_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"AuxInput {self.name!r}: dropout must be in [0, 1), got {self.dropout}")

    def with_dims(self, spatial_dims: int) -> AuxInput:
        """The description for a network of ``spatial_dims`` axes: a 2D network takes the in-plane ``(sx, sy)``."""
        if len(self.scale) == spatial_dims:
            return self
        return dataclasses.replace(self, scale=self.scale[:spatial_dims])


def aux_scales(aux: Mapping[str, AuxInput], ndim: int = 3) -> dict[str, tuple[int, ...]]:
    """``name → scale`` (its first ``ndim`` entries) of every auxiliary, in order."""
    return {name: a.scale[:ndim] for name, a in aux.items()}


def allows_missing(aux: Mapping[str, AuxInput]) -> bool:
    """Some auxiliary was trained with modality dropout, so a network may run without auxiliaries."""
    return any(a.dropout > 0 for a in aux.values())


def lcm_of_scales(scales: Mapping[str, int | Sequence[int]], ndim: int = 3) -> tuple[int, ...]:
    """Per-axis least common multiple of all auxiliary scales (an int stands for every axis).

    Every window start and size that is a multiple of this lands on a whole
    voxel of every auxiliary grid. Without auxiliaries it is ``(1,) * ndim``.

    Example:
        >>> lcm_of_scales({"flair": (2, 2, 4), "pet": (3, 3, 3)}, 3)
        (6, 6, 12)
    """
    lcm = [1] * ndim
    for scale in scales.values():
        per_axis = (scale,) * ndim if isinstance(scale, int) else tuple(scale)
        lcm = [math.lcm(a, int(b)) for a, b in zip(lcm, per_axis, strict=True)]
    return tuple(lcm)
