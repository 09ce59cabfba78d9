"""A lean U-Net decoder built from the (fused) encoder channel list alone.

Each block, as in smp's ``DecoderBlock``, upsamples to the skip's exact size,
concatenates ``[x, skip]`` and applies two conv-norm-ReLU layers. The skip here
is the *fused* skip: encoder features plus whatever auxiliaries entered that
level (see :mod:`segfuse.models.fusion`).

The first convolution of a block runs through
:func:`segfuse.models.convolution.conv_over_parts`, so the parts of a fused
skip are never copied into one unaligned channel block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segfuse.models.convolution import conv_over_parts
from segfuse.models.layers import conv_norm_act


def _parts(feature: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A level's feature as the list of tensors to concatenate along channels."""
    return [feature] if isinstance(feature, torch.Tensor) else list(feature)


class DecoderBlock(nn.Module):
    """Upsample ``x`` to ``skip``'s size, concatenate, two conv-norm-ReLU layers.

    Shapes: ``x`` ``(B, in_channels, *s)``, ``skip`` ``(B, skip_channels, *S)``
    → ``(B, out_channels, *S)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, skip_channels: int, out_channels: int, norm: str):
        super().__init__()
        self.conv1 = conv_norm_act(spatial_dims, in_channels + skip_channels, out_channels, norm)
        self.conv2 = conv_norm_act(spatial_dims, out_channels, out_channels, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """``skip`` may come in parts (``LevelFusion.parts``); they follow ``x`` along channels."""
        parts = _parts(skip)
        x = F.interpolate(x, size=parts[0].shape[2:], mode="nearest")
        conv, norm, act = self.conv1
        return self.conv2(act(norm(conv_over_parts(conv, [x, *parts]))))


class UNetDecoder(nn.Module):
    """Decodes fused features ``[stride 1, stride 2, …, deepest]`` to stride 1.

    Args:
        spatial_dims: 2 or 3.
        skip_channels: channels of each fused feature, ordered by stride (the
            first is stride 1, the last is the bottleneck).
        decoder_channels: output channels of each block, deepest block first;
            one entry per skip level above the bottleneck.
        norm: ``"batch"`` or ``"instance"``.

    Returns from ``forward``: the list of block outputs, finest (stride 1) first.
    """

    def __init__(
        self,
        spatial_dims: int,
        skip_channels: Sequence[int],
        decoder_channels: Sequence[int],
        norm: str = "batch",
    ):
        super().__init__()
        levels = len(skip_channels) - 1
        if len(decoder_channels) != levels:
            raise ValueError(
                f"decoder_channels needs {levels} entries (one per skip level), "
                f"got {len(decoder_channels)}: {list(decoder_channels)}"
            )
        blocks = []
        in_ch = skip_channels[-1]
        for out_ch, skip_ch in zip(decoder_channels, reversed(skip_channels[:-1]), strict=True):
            blocks.append(DecoderBlock(spatial_dims, in_ch, skip_ch, out_ch, norm))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = list(decoder_channels)

    def forward(self, features: Sequence[torch.Tensor | Sequence[torch.Tensor]]) -> list[torch.Tensor]:
        """``features``: one tensor per level, or its parts (concatenated along channels)."""
        deepest = _parts(features[-1])
        x = deepest[0] if len(deepest) == 1 else torch.cat(deepest, dim=1)
        outputs = []
        for block, skip in zip(self.blocks, reversed(features[:-1]), strict=True):
            x = block(x, skip)
            outputs.append(x)
        return outputs[::-1]
