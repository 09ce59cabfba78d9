"""Fusion of mapped auxiliary features with the encoder's skip features at one level.

Modes, chosen per auxiliary:

- ``concat`` (the original design): ``[skip, aux]`` along channels; the decoder
  block after it sees ``skip_channels + features`` channels.
- ``add``: ``skip + P(aux)``, with ``P`` a 1×1 projection to ``skip_channels``.
- ``gated``: ``skip + sigmoid(G([skip, P(aux)])) * P(aux)``: a learned per-voxel,
  per-channel gate decides how much of the auxiliary to let in.

A missing auxiliary is represented by ``None`` (or a zero row of the
``present`` mask): it contributes exactly nothing — zeros for ``concat``, no
term for ``add`` and ``gated``. A network trained with modality dropout learns
to expect that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from segfuse.auxiliary import FUSION_MODES
from segfuse.models.layers import conv_class


@dataclass(frozen=True)
class AuxAtLevel:
    """How one auxiliary enters one level: its name, channel count and fusion mode."""

    name: str
    channels: int
    mode: str


class LevelFusion(nn.Module):
    """Fuses the auxiliaries that enter one skip level with that level's features.

    Shapes:
        ``skip`` ``(B, skip_channels, *level)``, each ``aux[name]``
        ``(B, channels, *level)`` or ``None`` → ``(B, out_channels, *level)``.
    """

    def __init__(self, skip_channels: int, entries: Sequence[AuxAtLevel], spatial_dims: int):
        super().__init__()
        conv = conv_class(spatial_dims)
        self.entries = list(entries)
        self.skip_channels = skip_channels
        self.projections = nn.ModuleDict()
        self.gates = nn.ModuleDict()
        for e in self.entries:
            if e.mode not in FUSION_MODES:
                raise ValueError(f"fusion for {e.name!r} must be one of {FUSION_MODES}, got {e.mode!r}")
            if e.mode in ("add", "gated"):
                self.projections[e.name] = conv(e.channels, skip_channels, kernel_size=1)
            if e.mode == "gated":
                self.gates[e.name] = conv(2 * skip_channels, skip_channels, kernel_size=1)
        self.out_channels = skip_channels + sum(e.channels for e in self.entries if e.mode == "concat")

    def forward(
        self,
        skip: torch.Tensor,
        aux: Mapping[str, torch.Tensor | None],
        present: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Fuse; ``present[name]`` ``(B,)`` (1 present, 0 dropped) masks single samples."""
        parts = self.parts(skip, aux, present)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def parts(
        self,
        skip: torch.Tensor,
        aux: Mapping[str, torch.Tensor | None],
        present: Mapping[str, torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """The fused level before concatenation: ``[skip (+ added/gated auxiliaries), *concatenated auxiliaries]``.

        ``torch.cat(parts, dim=1)`` is :meth:`forward`'s output; the decoder takes the
        parts and concatenates them once with its upsampled features, so a skip is
        not copied twice.
        """
        out = skip
        concatenated: list[torch.Tensor] = []
        for e in self.entries:
            a = aux.get(e.name)
            mask = None if present is None else present.get(e.name)
            if mask is not None:
                mask = mask.to(skip.dtype).view(-1, *([1] * (skip.ndim - 1)))
            if e.mode == "concat":
                if a is None:
                    a = skip.new_zeros((skip.shape[0], e.channels, *skip.shape[2:]))
                elif mask is not None:
                    a = a * mask
                concatenated.append(a)
            elif a is not None:
                projected = self.projections[e.name](a)
                if e.mode == "gated":
                    gate = torch.sigmoid(self.gates[e.name](torch.cat([skip, projected], dim=1)))
                    projected = gate * projected
                if mask is not None:
                    projected = projected * mask
                out = out + projected
        return [out, *concatenated]
