"""ResNet18 encoders for 2D (segmentation-models-pytorch) and 3D (MONAI), one contract.

Every encoder follows the contract of timm's ``features_only`` models and smp's
encoders: ``forward(x)`` returns the list of feature maps ordered by stride, the
first being the input itself (stride 1), and the encoder exposes
``out_channels`` (channels of each feature) and ``strides`` (per-axis stride of
each feature). The decoder is built from these two lists alone.

Example:
    >>> enc = build_encoder(spatial_dims=3, in_channels=1, depth=4)
    >>> [f.shape[1] for f in enc(torch.zeros(1, 1, 32, 32, 32))] == enc.out_channels
    True
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from segfuse.io.errors import SegfuseInputError

RESNET18_WIDTHS = (64, 64, 128, 256, 512)


class ResNet18Encoder(nn.Module):
    """A ResNet18 feature pyramid.

    Args:
        spatial_dims: 2 (smp's ResNet18, ImageNet-compatible) or 3 (MONAI's ResNet18).
        in_channels: channels of the primary input.
        depth: number of down-sampling stages used, 1..5; the deepest feature has
            stride ``2**depth``. Fewer stages suit small volumes (hippocampus crops
            are about 35 × 50 × 35 voxels, so stride 32 leaves a 1-voxel bottleneck).
        widen_factor: 3D only: channel multiplier of MONAI's ResNet (0.5 halves
            every width). 2D keeps the ImageNet widths so pretrained weights fit.
        stem_kernel: 3D only: kernel of the first convolution (7 in the original
            ResNet; 3 is much cheaper on a CPU).
        norm: ``"batch"`` or ``"instance"`` normalisation (3D only; smp uses batch).

    Shapes:
        input ``(B, in_channels, *spatial)`` → list of ``depth + 1`` tensors, the
        ``i``-th of shape ``(B, out_channels[i], *ceil(spatial / strides[i]))``.
    """

    def __init__(
        self,
        *,
        spatial_dims: int,
        in_channels: int,
        depth: int = 5,
        widen_factor: float = 1.0,
        stem_kernel: int = 7,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if not 1 <= depth <= 5:
            raise ValueError(f"encoder depth must be between 1 and 5, got {depth}")
        if norm not in ("batch", "instance"):
            raise ValueError(f"norm must be 'batch' or 'instance', got {norm!r}")
        if spatial_dims == 2 and (widen_factor != 1.0 or norm != "batch"):
            raise ValueError(
                "the 2D encoder is smp's ImageNet ResNet18: widen_factor must be 1.0 and "
                f"norm 'batch' (got widen_factor={widen_factor}, norm={norm!r})"
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.depth = depth
        if spatial_dims == 2:
            import segmentation_models_pytorch as smp

            backbone = smp.encoders.get_encoder(
                "resnet18", in_channels=in_channels, depth=5, weights=None
            )
            widths = list(RESNET18_WIDTHS)
        else:
            from monai.networks.nets.resnet import ResNet, ResNetBlock

            widths = [int(w * widen_factor) for w in RESNET18_WIDTHS]
            backbone = ResNet(
                block=ResNetBlock,
                layers=[2, 2, 2, 2],
                block_inplanes=widths[1:],
                spatial_dims=3,
                n_input_channels=in_channels,
                conv1_t_size=stem_kernel,
                conv1_t_stride=2,
                widen_factor=1.0,
                # MONAI's default InstanceNorm has no affine weights, which its own
                # initialisation cannot handle, so ask for them explicitly.
                norm=("instance", {"affine": True}) if norm == "instance" else norm,
                feed_forward=False,
            )
            # MONAI's ResNet sets in_planes = block_inplanes[0] for the stem.
            widths[0] = widths[1]
        act = backbone.relu if spatial_dims == 2 else backbone.act
        self.stem = nn.Sequential(backbone.conv1, backbone.bn1, act)
        self.pool = backbone.maxpool
        stages = [backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
        self.stages = nn.ModuleList(stages[: max(depth - 1, 0)])
        self.out_channels: list[int] = [in_channels, *widths[:depth]]
        self.strides: list[tuple[int, ...]] = [
            (2**i,) * spatial_dims for i in range(depth + 1)
        ]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the features ``[x, stride 2, stride 4, …]`` of ``x`` ``(B, C, *spatial)``."""
        features = [x]
        y = self.stem(x)
        features.append(y)
        if self.depth >= 2:
            y = self.stages[0](self.pool(y))
            features.append(y)
            for stage in self.stages[1:]:
                y = stage(y)
                features.append(y)
        return features

    def freeze(self) -> None:
        """Freeze every parameter and keep normalisation statistics fixed in ``train()``."""
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> ResNet18Encoder:
        super().train(mode)
        if getattr(self, "_frozen", False):
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.modules.instancenorm._InstanceNorm):
                    m.eval()
        return self

    def load_pretrained(self, path: str | Path) -> None:
        """Load ImageNet (2D, torchvision layout) or MedicalNet-style (3D) ResNet18 weights.

        The first convolution is adapted when the input has a different number of
        channels than the file (smp's ``patch_first_conv``): the pretrained
        kernels are reused cyclically and rescaled by ``pretrained_channels / N``
        (summed for a single channel), never re-initialised.

        Raises:
            SegfuseInputError: the file is missing, unreadable, or its tensors do
                not fit this encoder (names and shapes listed).
        """
        path = Path(path)
        if not path.is_file():
            raise SegfuseInputError(f"{path}: pretrained encoder weights not found")
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a bad pickle
            raise SegfuseInputError(f"{path}: cannot read encoder weights: {exc}") from exc
        if isinstance(raw, dict) and "state_dict" in raw:
            raw = raw["state_dict"]
        if not isinstance(raw, dict):
            raise SegfuseInputError(f"{path}: expected a state_dict, found {type(raw).__name__}")
        source = OrderedDict(
            (k.removeprefix("module.").removeprefix("encoder."), v) for k, v in raw.items()
        )
        own = self._backbone_state_dict()
        loaded: dict[str, torch.Tensor] = {}
        problems: list[str] = []
        for key, target in own.items():
            if key not in source:
                problems.append(f"missing {key}")
                continue
            value = source[key]
            if key == "conv1.weight" and value.ndim == target.ndim and value.shape[1] != target.shape[1]:
                value = adapt_first_conv(value, target.shape[1])
            if value.shape != target.shape:
                problems.append(
                    f"{key}: file has {tuple(value.shape)}, encoder needs {tuple(target.shape)}"
                )
                continue
            loaded[key] = value
        if problems:
            listed = "; ".join(problems[:10])
            more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
            raise SegfuseInputError(
                f"{path}: weights do not fit a {self.spatial_dims}D ResNet18 encoder "
                f"(depth {self.depth}): {listed}{more}"
            )
        self._load_backbone_state_dict(loaded)

    def _named_backbone_modules(self) -> dict[str, nn.Module]:
        names = {"conv1": self.stem[0], "bn1": self.stem[1]}
        for i, stage in enumerate(self.stages):
            names[f"layer{i + 1}"] = stage
        return names

    def _backbone_state_dict(self) -> OrderedDict[str, torch.Tensor]:
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for prefix, module in self._named_backbone_modules().items():
            for k, v in module.state_dict().items():
                out[f"{prefix}.{k}"] = v
        return out

    def _load_backbone_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for prefix, module in self._named_backbone_modules().items():
            sub = {
                k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")
            }
            module.load_state_dict(sub, strict=True)


def adapt_first_conv(weight: torch.Tensor, new_in_channels: int) -> torch.Tensor:
    """Adapt a first-conv kernel ``(O, I, *k)`` to ``new_in_channels`` inputs.

    One channel: the pretrained kernels are summed (a grey image seen as RGB).
    More: kernels are reused cyclically and scaled by ``I / new_in_channels`` so
    the activation scale is preserved.
    """
    in_channels = weight.shape[1]
    if new_in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(new_in_channels) % in_channels
    return weight[:, index] * (in_channels / new_in_channels)


def build_encoder(
    *,
    spatial_dims: int,
    in_channels: int,
    depth: int = 5,
    widen_factor: float = 1.0,
    stem_kernel: int = 7,
    norm: str = "batch",
    weights: str | Path | None = None,
) -> ResNet18Encoder:
    """Build the ResNet18 encoder and load optional local pretrained ``weights``."""
    encoder = ResNet18Encoder(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        depth=depth,
        widen_factor=widen_factor,
        stem_kernel=stem_kernel,
        norm=norm,
    )
    if weights is not None:
        encoder.load_pretrained(weights)
    return encoder

