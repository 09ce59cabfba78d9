"""The small building blocks the mappers, the fusion and the decoder share, for 2D and 3D.

Example:
    >>> conv_norm_act(3, 1, 8, "instance")(torch.zeros(1, 1, 4, 4, 4)).shape
    torch.Size([1, 8, 4, 4, 4])
"""

from __future__ import annotations

from torch import nn

__all__ = ["conv_class", "conv_norm_act", "norm_layer"]


def conv_class(spatial_dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    """``nn.Conv3d`` for 3 spatial axes, else ``nn.Conv2d``."""
    return nn.Conv3d if spatial_dims == 3 else nn.Conv2d


def norm_layer(spatial_dims: int, norm: str, channels: int) -> nn.Module:
    """``"instance"`` (with affine weights) or ``"batch"`` normalisation over ``channels``."""
    if norm == "instance":
        cls = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
        return cls(channels, affine=True)
    cls = nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d
    return cls(channels)


def conv_norm_act(spatial_dims: int, cin: int, cout: int, norm: str) -> nn.Sequential:
    """3×3(×3) convolution without bias, normalisation, ReLU: ``(B, cin, *S)`` → ``(B, cout, *S)``."""
    return nn.Sequential(
        conv_class(spatial_dims)(cin, cout, kernel_size=3, padding=1, bias=False),
        norm_layer(spatial_dims, norm, cout),
        nn.ReLU(inplace=True),
    )
