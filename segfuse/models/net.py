"""FusionUNet: a ResNet18 U-Net whose skip connections also receive auxiliary scans.

Example:
    >>> net = FusionUNet(
    ...     spatial_dims=3, in_channels=1, num_classes=3,
    ...     aux=[AuxInput("flair", channels=1, scale=(2, 2, 4), mapper="conv", fusion="concat")],
    ...     allow_missing_aux=True,
    ... )
    >>> t1 = torch.randn(1, 1, 64, 64, 32)
    >>> flair = torch.randn(1, 1, 32, 32, 8)      # the same field of view at 2 × 2 × 4 voxels
    >>> net(t1, aux={"flair": flair}).shape
    torch.Size([1, 3, 64, 64, 32])

The auxiliaries are described by :class:`segfuse.auxiliary.AuxInput` (the network
reads their name, channels, scale, mapper, fusion and levels). Each auxiliary is
mapped at its native resolution by its mapper, brought to the skip levels it
enters (pooling where the level is coarser, edge-aligned interpolation where it
is finer), and fused with the encoder features there. With ``level_blocks > 0``
each level after the first also runs conv blocks on the features brought from
the previous level, so the auxiliary's receptive field grows with the stride.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segfuse.auxiliary import AuxInput
from segfuse.models.convolution import pointwise_conv
from segfuse.models.decoder import UNetDecoder
from segfuse.models.encoders import ResNet18Encoder
from segfuse.models.fusion import AuxAtLevel, LevelFusion
from segfuse.models.layers import conv_class, conv_norm_act
from segfuse.models.mappers import build_mapper
from segfuse.models.resize import change_stride

DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)


@dataclass
class FusionUNetConfig:
    """Everything needed to rebuild a :class:`FusionUNet` (weights aside)."""

    spatial_dims: int
    in_channels: int
    num_classes: int
    aux: list[AuxInput] = field(default_factory=list)
    allow_missing_aux: bool = False
    encoder_depth: int = 5
    widen_factor: float = 1.0
    stem_kernel: int = 7
    norm: str = "batch"
    decoder_channels: tuple[int, ...] | None = None
    deep_supervision: bool = False


class FusionUNet(nn.Module):
    """ResNet18 U-Net with auxiliary scans fused at the skip connections.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the primary scan.
        num_classes: output channels (background included).
        aux: the auxiliary inputs.
        allow_missing_aux: accept ``aux`` dicts that omit an input or give ``None``;
            the absent input then contributes exactly nothing (zero features).
        encoder_depth: down-sampling stages of the ResNet18 (1..5).
        widen_factor, stem_kernel, norm: 3D encoder options (see
            :class:`segfuse.models.encoders.ResNet18Encoder`); ``norm`` also applies
            to the decoder and ``conv`` mappers.
        decoder_channels: output channels of each decoder block, deepest first.
        deep_supervision: in training mode, ``forward`` also returns logits at
            strides 2 and 4 (a list, full resolution first).

    Shapes:
        ``forward(x, aux)``: ``x`` ``(B, in_channels, *S)`` with any ``S``;
        ``aux[name]`` ``(B, channels, *ceil(S / scale))`` → ``(B, num_classes, *S)``.
    """

    def __init__(
        self,
        *,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        aux: Sequence[AuxInput | Mapping[str, Any]] = (),
        allow_missing_aux: bool = False,
        encoder_depth: int = 5,
        widen_factor: float = 1.0,
        stem_kernel: int = 7,
        norm: str = "batch",
        decoder_channels: Sequence[int] | None = None,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        aux_inputs = [a if isinstance(a, AuxInput) else AuxInput(**a) for a in aux]
        names = [a.name for a in aux_inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"auxiliary names must be unique, got {names}")
        for a in aux_inputs:
            if not a.name or not a.name.isidentifier():
                raise ValueError(f"AuxInput name must be a non-empty identifier, got {a.name!r}")
            if len(a.scale) != spatial_dims:
                raise ValueError(
                    f"AuxInput {a.name!r}: scale {a.scale} needs {spatial_dims} entries "
                    f"for spatial_dims={spatial_dims}"
                )
        if decoder_channels is None:
            decoder_channels = DEFAULT_DECODER_CHANNELS[len(DEFAULT_DECODER_CHANNELS) - encoder_depth :]
        self.cfg = FusionUNetConfig(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            num_classes=num_classes,
            aux=aux_inputs,
            allow_missing_aux=allow_missing_aux,
            encoder_depth=encoder_depth,
            widen_factor=widen_factor,
            stem_kernel=stem_kernel,
            norm=norm,
            decoder_channels=tuple(int(c) for c in decoder_channels),
            deep_supervision=deep_supervision,
        )
        self.encoder = ResNet18Encoder(
            spatial_dims=spatial_dims, in_channels=in_channels, depth=encoder_depth, widen_factor=widen_factor,
            stem_kernel=stem_kernel, norm=norm,
        )
        strides = self.encoder.strides
        self.aux_levels: dict[str, list[int]] = {a.name: self.entry_levels(a, strides) for a in aux_inputs}
        self.mappers = nn.ModuleDict(
            {
                a.name: build_mapper(
                    a.mapper,
                    spatial_dims=spatial_dims,
                    in_channels=a.channels,
                    features=a.features,
                    hidden=a.hidden,
                    layers=a.mapper_layers,
                    norm=norm,
                )
                for a in aux_inputs
            }
        )
        # per auxiliary, per level it enters after the first: level_blocks conv blocks on the
        # features brought from the previous level (keys are level indices as strings)
        self.level_blocks = nn.ModuleDict(
            {
                a.name: nn.ModuleDict(
                    {
                        str(level): nn.Sequential(
                            *[m for _ in range(a.level_blocks) for m in conv_norm_act(spatial_dims, a.features,
                                                                                        a.features, norm)]
                        )
                        for level in self.aux_levels[a.name][1:]
                    }
                )
                for a in aux_inputs
                if a.level_blocks > 0
            }
        )
        self.fusions = nn.ModuleList(
            LevelFusion(
                channels,
                [AuxAtLevel(a.name, a.features, a.fusion) for a in aux_inputs if level in self.aux_levels[a.name]],
                spatial_dims,
            )
            for level, channels in enumerate(self.encoder.out_channels)
        )
        self.decoder = UNetDecoder(
            spatial_dims, [f.out_channels for f in self.fusions], self.cfg.decoder_channels, norm
        )
        conv = conv_class(spatial_dims)
        self.head = conv(self.cfg.decoder_channels[-1], num_classes, kernel_size=1)
        self.deep_heads = nn.ModuleList(
            conv(c, num_classes, kernel_size=1) for c in list(self.cfg.decoder_channels)[-3:-1][::-1]
        ) if deep_supervision else nn.ModuleList()
        # Inputs are padded to a multiple of this, so every stride and every scale divides the size.
        self.size_multiple = tuple(
            math.lcm(strides[-1][d], *[a.scale[d] for a in aux_inputs]) for d in range(spatial_dims)
        )

    @staticmethod
    def entry_levels(a: AuxInput, strides: Sequence[tuple[int, ...]]) -> list[int]:
        """Indices into ``strides`` of the skip levels ``a`` enters: its ``levels``, else every
        level from the first whose stride is at least its scale on every axis."""
        available = {s[0]: i for i, s in enumerate(strides)}
        if a.levels is not None:
            unknown = [v for v in a.levels if v not in available]
            if unknown:
                raise ValueError(
                    f"AuxInput {a.name!r}: levels {list(a.levels)} include strides {unknown} that the "
                    f"encoder does not have; available strides: {sorted(available)}"
                )
            return sorted(available[v] for v in a.levels)
        for i, s in enumerate(strides):
            if all(si >= ai for si, ai in zip(s, a.scale, strict=True)):
                return list(range(i, len(strides)))
        return [len(strides) - 1]

    # -- configuration --------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """Plain-data configuration: ``FusionUNet.from_config(net.config)`` rebuilds the net."""
        cfg = asdict(self.cfg)
        cfg["aux"] = [
            {**a, "scale": list(a["scale"]), "levels": None if a["levels"] is None else list(a["levels"]),
             "norm": aux.norm.to_dict()}
            for a, aux in zip(cfg["aux"], self.cfg.aux, strict=True)
        ]
        cfg["decoder_channels"] = list(cfg["decoder_channels"])
        return cfg

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FusionUNet:
        """Build a network from :attr:`config` (unknown keys are errors naming the key)."""
        known = set(FusionUNetConfig.__dataclass_fields__)
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        return cls(**dict(config))

    @property
    def aux_inputs(self) -> list[AuxInput]:
        return list(self.cfg.aux)

    def freeze_encoder(self) -> None:
        """Freeze the encoder's weights and normalisation statistics (also through ``train()``)."""
        self.encoder.freeze()

    # -- forward --------------------------------------------------------------------

    def _checked_aux(
        self, x: torch.Tensor, aux: Mapping[str, torch.Tensor | None] | None
    ) -> dict[str, torch.Tensor | None]:
        aux = dict(aux or {})
        expected_names = [a.name for a in self.cfg.aux]
        unknown = sorted(set(aux) - set(expected_names))
        if unknown:
            raise ValueError(f"unknown auxiliary inputs {unknown}; this network takes {expected_names}")
        spatial = x.shape[2:]
        checked: dict[str, torch.Tensor | None] = {}
        for a in self.cfg.aux:
            t = aux.get(a.name)
            if t is None:
                if not self.cfg.allow_missing_aux:
                    raise ValueError(
                        f"auxiliary input {a.name!r} is missing; this network was built with "
                        "allow_missing_aux=False (pass it, or build with allow_missing_aux=True "
                        "and train with modality dropout)"
                    )
                checked[a.name] = None
                continue
            expected = (x.shape[0], a.channels, *[math.ceil(n / s) for n, s in zip(spatial, a.scale, strict=True)])
            if tuple(t.shape) != expected:
                raise ValueError(
                    f"auxiliary input {a.name!r} has shape {tuple(t.shape)}, expected {expected}: "
                    f"primary spatial shape {tuple(spatial)} at scale {a.scale} "
                    f"(ceil(primary / scale), batch and channels included)"
                )
            checked[a.name] = t
        return checked

    def _pad(self, t: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        pad: list[int] = []
        for have, want in zip(reversed(t.shape[2:]), reversed(size), strict=True):
            pad += [0, want - have]
        return F.pad(t, pad) if any(pad) else t

    def auxiliary_features(
        self, padded_size: Sequence[int], aux: Mapping[str, torch.Tensor | None]
    ) -> list[dict[str, torch.Tensor | None]]:
        """Map each auxiliary at its native resolution and bring it to the levels it enters.

        Args:
            padded_size: spatial size of the (padded) primary, a multiple of ``size_multiple``.
            aux: checked auxiliary tensors ``(B, C_a, *ceil(S / scale))`` or ``None``.

        Returns:
            One dict per encoder level: ``name → (B, features, *padded_size / stride)``
            (``None`` for a missing auxiliary). With ``level_blocks``, the features of
            each level after the first are the previous level's brought to this stride
            and passed through that level's blocks (a chain, like an encoder).
        """
        per_level: list[dict[str, torch.Tensor | None]] = [{} for _ in self.encoder.strides]
        for a in self.cfg.aux:
            t = aux.get(a.name)
            mapped = None
            if t is not None:
                native = [n // s for n, s in zip(padded_size, a.scale, strict=True)]
                mapped = self.mappers[a.name](self._pad(t, native))
            source, source_stride = mapped, a.scale
            blocks = self.level_blocks[a.name] if a.name in self.level_blocks else None  # noqa: SIM401 (ModuleDict has no get)
            for level in self.aux_levels[a.name]:
                stride = self.encoder.strides[level]
                if mapped is None:
                    per_level[level][a.name] = None
                    continue
                size = [n // s for n, s in zip(padded_size, stride, strict=True)]
                features = change_stride(source, source_stride, stride, size)
                if blocks is not None and str(level) in blocks:
                    features = blocks[str(level)](features)
                    # the next level starts from these features: a chain, like an encoder
                    source, source_stride = features, stride
                per_level[level][a.name] = features
        return per_level

    def forward(
        self,
        x: torch.Tensor,
        aux: Mapping[str, torch.Tensor | None] | None = None,
        present: Mapping[str, torch.Tensor] | None = None,
        *,
        with_absent: bool = False,
        second_present: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x`` ``(B, in_channels, *S)`` with auxiliaries ``aux``.

        Args:
            x: the primary scan.
            aux: ``name → (B, channels, *ceil(S / scale))`` or ``None``.
            present: optional ``name → (B,)`` mask, 0 where a sample's auxiliary was
                dropped (modality dropout); such samples get the missing-input path.
            with_absent: also decode every sample with all its auxiliaries absent
                (``training.decode_without_aux``). The encoder and the mappers run
                once; the decoder runs on a doubled batch, so its normalisation sees
                both halves together.
            second_present: with ``with_absent``, the second decode's ``name → (B,)``
                masks instead of every auxiliary absent (0: absent for that sample;
                ``training.decode_without_aux_drops: subset``).

        Returns:
            Logits ``(B, num_classes, *S)``; with deep supervision in training mode, a
            list ``[full, stride 2, stride 4]`` of logits. With ``with_absent`` every
            output has batch ``2B``: the first ``B`` samples with ``aux`` (and
            ``present``), the last ``B`` the same samples without any auxiliary (or
            with ``second_present``).
        """
        checked = self._checked_aux(x, aux)
        spatial = x.shape[2:]
        padded = [math.ceil(n / m) * m for n, m in zip(spatial, self.size_multiple, strict=True)]
        features = self.encoder(self._pad(x, padded))
        aux_levels = self.auxiliary_features(padded, checked)
        # each level in parts: the decoder concatenates them with its upsampled features in one copy
        fused = [
            fusion.parts(f, aux_at, present)
            for fusion, f, aux_at in zip(self.fusions, features, aux_levels, strict=True)
        ]
        if with_absent:
            absent = {a.name: None for a in self.cfg.aux}
            second = [
                fusion.parts(f, absent) if second_present is None else fusion.parts(f, aux_at, second_present)
                for fusion, f, aux_at in zip(self.fusions, features, aux_levels, strict=True)
            ]
            fused = [[torch.cat(pair) for pair in zip(a, b, strict=True)] for a, b in zip(fused, second, strict=True)]
        decoded = self.decoder(fused)
        crop = tuple(slice(0, n) for n in spatial)
        logits = pointwise_conv(self.head, decoded[0])[(..., *crop)]
        if not (self.cfg.deep_supervision and self.training):
            return logits
        outputs = [logits]
        for k, head in enumerate(self.deep_heads, start=1):
            stride = self.encoder.strides[k]
            crop_k = tuple(slice(0, math.ceil(n / s)) for n, s in zip(spatial, stride, strict=True))
            outputs.append(pointwise_conv(head, decoded[k])[(..., *crop_k)])
        return outputs
