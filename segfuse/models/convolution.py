"""Convolutions computed the fast way on the same weights.

Both functions take an ordinary ``nn.Conv2d``/``nn.Conv3d`` (so state dicts and
checkpoints are those of the plain layer) and return what the layer would
return, through kernels that the benchmark CPU runs faster
(``docs/benchmarks.md`` §3, measured with ``torch.profiler``):

- :func:`conv_over_parts`: a convolution over a channel concatenation is the
  sum of convolutions over the parts with the matching weight slices. oneDNN's
  (and cuDNN's) kernels are tuned for channel counts that are multiples of
  :data:`CHANNEL_ALIGNMENT`; the finest decoder level (32 upsampled channels +
  the 1-channel scan) took 3.9 s as one 33-channel convolution and 2.5 s as a
  32- and a 1-channel one (batch 4, 128³), and no 1.1 GB concatenation is made.
- :func:`pointwise_conv`: a 1×1(×1) convolution is a matrix product over the
  channels; as a batched matmul the 16 → 2 output head took 72 ms instead of
  556 ms at the same size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["CHANNEL_ALIGNMENT", "conv_over_parts", "pointwise_conv"]

CHANNEL_ALIGNMENT = 16
"""Channel counts that are multiples of this take the fast convolution kernels."""


def conv_over_parts(conv: nn.Conv2d | nn.Conv3d, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``conv(torch.cat(parts, dim=1))``, computed without unaligned channel counts.

    If the concatenation has a channel count that is a multiple of
    :data:`CHANNEL_ALIGNMENT`, it is exactly that. Otherwise the aligned parts
    are concatenated and convolved with their slice of the weight, and every
    unaligned part (typically the 1-channel scan at the finest level) is
    convolved with its own slice and added: the same linear map, summed in a
    different order (float32 results agree to rounding, ~1e-6 relative).

    Shapes: ``parts[i]`` ``(B, C_i, *S)`` with ``sum(C_i) == conv.in_channels`` →
    ``(B, conv.out_channels, *S)``.
    """
    channels = [p.shape[1] for p in parts]
    if len(parts) == 1 or sum(channels) % CHANNEL_ALIGNMENT == 0:
        return conv(parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=1))
    bounds = [0]
    for c in channels:
        bounds.append(bounds[-1] + c)
    aligned = [i for i, c in enumerate(channels) if c % CHANNEL_ALIGNMENT == 0]
    groups = ([aligned] if aligned else []) + [[i] for i, c in enumerate(channels) if c % CHANNEL_ALIGNMENT]
    out: torch.Tensor | None = None
    for group in groups:
        weight = torch.cat([conv.weight[:, bounds[i] : bounds[i + 1]] for i in group], dim=1)
        x = parts[group[0]] if len(group) == 1 else torch.cat([parts[i] for i in group], dim=1)
        y = conv._conv_forward(x, weight, conv.bias if out is None else None)
        out = y if out is None else out.add_(y)
    return out


def pointwise_conv(conv: nn.Conv2d | nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a 1×1(×1) convolution (stride 1, no padding, one group), as a batched matmul.

    Shapes: ``x`` ``(B, conv.in_channels, *S)`` → ``(B, conv.out_channels, *S)``.

    Raises:
        ValueError: ``conv`` is not a plain pointwise convolution.
    """
    if any(k != 1 for k in conv.kernel_size) or any(s != 1 for s in conv.stride) or conv.groups != 1:
        raise ValueError(f"pointwise_conv needs a 1x1 convolution with stride 1 and one group, got {conv}")
    unpadded = conv.padding == "valid" or (not isinstance(conv.padding, str) and not any(conv.padding))
    if not unpadded:
        raise ValueError(f"pointwise_conv needs a convolution without padding, got {conv}")
    batch, channels = x.shape[:2]
    weight = conv.weight.reshape(1, conv.out_channels, channels).expand(batch, -1, -1)
    flat = x.reshape(batch, channels, -1)
    if conv.bias is None:
        y = torch.bmm(weight, flat)
    else:
        y = torch.baddbmm(conv.bias.reshape(1, -1, 1).expand(batch, -1, 1), weight, flat)
    return y.reshape(batch, conv.out_channels, *x.shape[2:])
