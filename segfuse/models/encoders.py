"""ResNet18 encoders for 2D (segmentation-models-pytorch) and 3D (MONAI), one contract.

Every encoder follows the contract of timm's ``features_only`` models and smp's
encoders: ``forward(x)`` returns the list of feature maps ordered by stride, the
first being the input itself (stride 1), and the encoder exposes
``out_channels`` (channels of each feature) and ``strides`` (per-axis stride of
each feature). The decoder is built from these two lists alone.

Example:
    >>> enc = ResNet18Encoder(spatial_dims=3, in_channels=1, depth=4)
    >>> [f.shape[1] for f in enc(torch.zeros(1, 1, 32, 32, 32))] == enc.out_channels
    True
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

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

    def load_backbone(self, source: dict[str, torch.Tensor], origin: str = "weights") -> None:
        """Load ImageNet (2D, torchvision layout) or MedicalNet (3D) ResNet18 weights.

        ``source`` holds torchvision's key names (``conv1.weight``, ``bn1.*``,
        ``layer1.0.conv1.weight``, …), as :func:`segfuse.io.pretrained.backbone_state_from_file`
        reads them from the published files; ``origin`` names them in errors (the file).
        Every encoder tensor must be found.

        Two gaps between the published files and this encoder are bridged exactly:
        BatchNorm's ``num_batches_tracked`` counters (absent from torchvision's
        files) keep their value, and MedicalNet ResNet18's parameter-free type-A
        shortcuts (stride-2 subsampling, zero channels appended; the file has no
        ``downsample`` tensors) become the type-B shortcut convolution that does
        the same: identity 1×1 weights, zero bias, identity normalisation.

        The first convolution is adapted when the input has a different number of
        channels than the file (smp's ``patch_first_conv``): the pretrained
        kernels are reused cyclically and rescaled by ``pretrained_channels / N``
        (summed for a single channel), never re-initialised.

        Raises:
            ValueError: the tensors do not fit this encoder (names and shapes listed).
        """
        own = self._backbone_state_dict()
        first = source.get("conv1.weight")
        if first is not None and first.ndim in (4, 5) and first.ndim != own["conv1.weight"].ndim:
            kind = {4: "2D (ImageNet/torchvision)", 5: "3D (MedicalNet)"}.get(first.ndim, f"{first.ndim - 2}D")
            raise ValueError(
                f"{origin}: the file holds {kind} ResNet18 weights (conv1.weight {tuple(first.shape)}), "
                f"but this encoder is {self.spatial_dims}D; use ImageNet weights for model.mode 2d "
                "and MedicalNet weights for 3d"
            )
        source = self._bridge_shortcuts(source, own)
        loaded: dict[str, torch.Tensor] = {}
        problems: list[str] = []
        for key, target in own.items():
            if key not in source:
                if key.endswith("num_batches_tracked"):
                    loaded[key] = target  # a training counter, absent from torchvision's files
                    continue
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
            loaded[key] = value.to(target.dtype)
        if problems:
            listed = "; ".join(problems[:10])
            more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
            raise ValueError(
                f"{origin}: weights do not fit a {self.spatial_dims}D ResNet18 encoder "
                f"(depth {self.depth}): {listed}{more}"
            )
        self._load_backbone_state_dict(loaded)

    def _bridge_shortcuts(
        self, source: dict[str, torch.Tensor], own: OrderedDict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Fill shortcut tensors that a file leaves out, by the function its network computed.

        * no ``layerN.0.downsample.*`` at all (MedicalNet ResNet18/34, type-A
          shortcut ``cat([x[::2, ::2, ::2], zeros])``): identity 1×1 convolution
          weights (zero for the appended channels), zero bias, identity normalisation
          (running mean 0, running variance ``1 - eps``, weight 1, bias 0);
        * ``downsample.0.weight`` without ``downsample.0.bias`` (a bias-free type-B
          shortcut, MONAI's ``bias_downsample=False``): zero bias.
        """
        out = dict(source)
        for stage in range(2, 5):
            prefix = f"layer{stage}.0.downsample"
            wanted = [k for k in own if k.startswith(prefix + ".")]
            if not wanted or not any(k.startswith(f"layer{stage}.") for k in source):
                continue
            has_any = any(k.startswith(prefix + ".") for k in source)
            conv_w = own[f"{prefix}.0.weight"]
            if not has_any:
                weight = torch.zeros_like(conv_w)
                n_in = conv_w.shape[1]
                weight[torch.arange(n_in), torch.arange(n_in)] = 1.0
                out[f"{prefix}.0.weight"] = weight
                norm = self.stages[stage - 1][0].downsample[1]
                eps = float(getattr(norm, "eps", 1e-5))
                for key, value in own.items():
                    if not key.startswith(f"{prefix}.1."):
                        continue
                    name = key.rsplit(".", 1)[1]
                    fill = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0 - eps}
                    if name in fill:
                        out[key] = torch.full_like(value, fill[name])
            if f"{prefix}.0.bias" in own and f"{prefix}.0.bias" not in out and f"{prefix}.0.weight" in out:
                out[f"{prefix}.0.bias"] = torch.zeros_like(own[f"{prefix}.0.bias"])
        return out

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
