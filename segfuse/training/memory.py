"""Training memory of the network a plan chooses, asked of the network itself.

:func:`activation_memory` builds the plan's lean FusionUNet (ResNet18 at half width
in 3D, full width in 2D — smp's encoder —, a 3-voxel stem, the default decoder) on
PyTorch's ``meta`` device, where no memory is allocated and no weights are drawn,
and reads from it the channels of every encoder feature and decoder block;
:func:`plan_patch` sizes a patch and a batch to a memory budget
with it. :mod:`segfuse.training.budget` measures real steps instead.

Example:
    >>> activation_memory((64, 64, 64), 2, 5) / 2**30 < 1.0
    True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from segfuse.data.fingerprint import format_sizes
from segfuse.io.errors import SegfuseInputError
from segfuse.models.net import FusionUNet

__all__ = [
    "MIN_BATCH",
    "STEM_KERNEL",
    "WIDEN_FACTOR",
    "activation_memory",
    "lean_network",
    "parameter_estimate",
    "plan_patch",
]

#: The planned network: ResNet18 at this width in 3D (2D keeps smp's full width), this stem kernel.
WIDEN_FACTOR = 0.5
STEM_KERNEL = 3
# float32 values kept per feature-map element for the backward pass (conv, norm and
# activation outputs of the two convs per block, concatenations, gradients). Measured
# with torch.autograd.graph.saved_tensors_hooks on a FusionUNet (widen 0.5): 6 to 8.
ACTIVATION_FACTOR = 10
MIN_BATCH = 2


@functools.cache
def lean_network(
    spatial_dims: int, encoder_depth: int, in_channels: int = 1
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(encoder channels per level 0..depth, decoder channels deepest first)`` of the planned network.

    Read from the network itself, built on the ``meta`` device (shapes without storage).
    """
    with torch.device("meta"):
        net = FusionUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            num_classes=2,
            encoder_depth=encoder_depth,
            widen_factor=WIDEN_FACTOR if spatial_dims == 3 else 1.0,
            stem_kernel=STEM_KERNEL,
        )
    return tuple(net.encoder.out_channels), tuple(net.cfg.decoder_channels)


def parameter_estimate(spatial_dims: int, encoder_depth: int, in_channels: int = 1) -> int:
    """Parameters of the planned network, estimated from its channels: a 7^d stem, four 3^d convolutions of
    ``w x w`` per encoder stage, two 3^d convolutions per decoder block.

    An over-estimate by 7-10 % (the stem is 3^d, the first stage keeps its width) that
    the plans are sized with; counting the meta network's parameters instead would
    change some planned batch sizes by one.
    """
    k = 3**spatial_dims
    enc, dec = lean_network(spatial_dims, encoder_depth, in_channels)
    params = 7**spatial_dims * enc[0] * enc[1]
    params += sum(4 * k * w * w for w in enc[2:])
    deeper = enc[-1]
    for out, skip in zip(dec, reversed(enc[:-1]), strict=True):
        params += k * (deeper + skip) * out + k * out * out
        deeper = out
    return params


def activation_memory(patch: Sequence[int], batch_size: int, encoder_depth: int, *, in_channels: int = 1) -> int:
    """Estimated training memory in bytes of the planned FusionUNet on ``patch`` (2D or 3D).

    With level ``l`` at stride ``2**l`` holding ``V_l = prod(ceil(p_d / 2**l))`` voxels::

        bytes = 16 * P + B * 4 * K * (sum_l enc_l * V_l + sum_i dec_i * V_(depth-1-i))

    ``enc_l``: the encoder's feature channels at level ``l`` (the input at level 0) and
    ``dec_i``: decoder block ``i``'s channels, at the stride of its skip — both read
    from the network (:func:`lean_network`); ``P``: :func:`parameter_estimate`, times
    16 bytes for weights, gradients and AdamW's two moments. ``K = 10`` float32 values
    stored per feature element for the backward pass (measured 6-8 on FusionUNet
    with ``saved_tensors_hooks``); ``B`` the batch size. Auxiliary branches are small
    (coarse grids, 16 features) and covered by ``K``'s margin.

    Example:
        >>> activation_memory((64, 64, 64), 2, 5) / 2**30 < 1.0
        True
    """
    enc, dec = lean_network(len(patch), encoder_depth, in_channels)
    parameters = parameter_estimate(len(patch), encoder_depth, in_channels)

    def voxels(level: int) -> int:
        return math.prod(-(-int(p) // 2**level) for p in patch)

    elements = sum(c * voxels(level) for level, c in enumerate(enc))
    elements += sum(c * voxels(encoder_depth - 1 - i) for i, c in enumerate(dec))
    return 16 * parameters + batch_size * 4 * ACTIVATION_FACTOR * elements


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
                f"{format_sizes(patch)} with batch {MIN_BATCH} needs about {need:.2f} GiB"
            )
        axis = max(shrinkable, key=lambda d: (patch[d], -d))
        patch[axis] -= multiples[axis]
    fixed = activation_memory(patch, 0, encoder_depth, in_channels=in_channels)
    per_sample = activation_memory(patch, 1, encoder_depth, in_channels=in_channels) - fixed
    batch = int((budget - fixed) // per_sample)
    if max_voxels_per_batch is not None:
        batch = min(batch, int(max_voxels_per_batch // math.prod(patch)))
    return tuple(patch), max(MIN_BATCH, batch)
