"""The fusion network: encoders, mappers, fusion, decoder and :class:`FusionUNet`."""

from segfuse.models.encoders import ResNet18Encoder, build_encoder
from segfuse.models.net import AuxInput, FusionUNet, FusionUNetConfig

__all__ = ["AuxInput", "FusionUNet", "FusionUNetConfig", "ResNet18Encoder", "build_encoder"]
