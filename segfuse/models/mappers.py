"""Mappers: small networks that turn an auxiliary scan into features, at its own resolution.

Three kinds form the original design:

- ``linear``: a per-voxel linear projection (a 1×1(×1) convolution);
- ``mlp``: two per-voxel layers with a ReLU between them (configurable hidden width);
- ``conv``: a small stack of 3×3(×3) convolutions with normalisation and activation.

A mapper never changes the spatial size: ``(B, C_aux, *aux_spatial)`` →
``(B, features, *aux_spatial)``. Bringing the result to each skip level is the
job of :mod:`segfuse.models.resize`.
"""

from __future__ import annotations

from torch import nn

from segfuse.auxiliary import MAPPER_KINDS
from segfuse.models.layers import conv_class, conv_norm_act


def build_mapper(
    kind: str,
    *,
    spatial_dims: int,
    in_channels: int,
    features: int,
    hidden: int = 32,
    layers: int = 2,
    norm: str = "batch",
) -> nn.Module:
    """Build a mapper of ``kind`` (one of :data:`MAPPER_KINDS`).

    Args:
        kind: ``"linear"``, ``"mlp"`` or ``"conv"``.
        spatial_dims: 2 or 3.
        in_channels: channels of the auxiliary scan.
        features: output channels.
        hidden: hidden width of ``mlp``.
        layers: number of 3×3 convolutions of ``conv``.
        norm: normalisation of ``conv``: ``"batch"`` or ``"instance"``.

    Example:
        >>> m = build_mapper("mlp", spatial_dims=3, in_channels=1, features=8)
        >>> m(torch.zeros(2, 1, 4, 4, 2)).shape
        torch.Size([2, 8, 4, 4, 2])
    """
    conv = conv_class(spatial_dims)
    if kind == "linear":
        return conv(in_channels, features, kernel_size=1)
    if kind == "mlp":
        return nn.Sequential(
            conv(in_channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            conv(hidden, features, kernel_size=1),
        )
    if kind == "conv":
        if layers < 1:
            raise ValueError(f"conv mapper needs layers >= 1, got {layers}")
        blocks: list[nn.Module] = []
        channels = in_channels
        for _ in range(layers):
            blocks += conv_norm_act(spatial_dims, channels, features, norm)
            channels = features
        return nn.Sequential(*blocks)
    raise ValueError(f"mapper must be one of {MAPPER_KINDS}, got {kind!r}")
