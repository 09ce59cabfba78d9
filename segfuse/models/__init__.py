"""The fusion network: encoders, mappers, fusion, decoder and :class:`FusionUNet` (tensors only)."""

from segfuse.auxiliary import AuxInput
from segfuse.models.encoders import ResNet18Encoder
from segfuse.models.net import FusionUNet, FusionUNetConfig

__all__ = ["AuxInput", "FusionUNet", "FusionUNetConfig", "ResNet18Encoder"]
