"""Training losses: per-class softmax (the default) or one sigmoid per label region.

Both take the logits ``(B, K, *patch)`` (or a list of them with deep supervision)
and the sampled label map ``(B, 1, *patch)`` holding the dataset's label values;
targets are built from the label map here, on the fly, so sampling, augmentation
and stored cases never need to know which loss is used.

- **classes** (no ``data.regions``): MONAI's ``DiceCELoss`` with softmax over the
  classes. Label values are first mapped to class indices, so datasets labelled
  ``0, 1, 2, 4`` (BraTS) train with four classes.
- **regions** (``data.regions``): soft Dice with a sigmoid per region (MONAI's
  ``DiceLoss(sigmoid=True)``) plus binary cross-entropy with logits, against the
  multi-hot targets of :func:`segfuse.data.regions.region_targets` — nnU-Net's
  ``DC_and_BCE_loss``. (MONAI's ``DiceCELoss`` would apply a *softmax*
  cross-entropy to a multi-channel input, which is wrong for overlapping regions.)

With ``model.deep_supervision`` MONAI's ``DeepSupervisionLoss`` wraps either; it
resizes the label map (nearest) to each output, and targets are built after that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from segfuse.config import check_regions
from segfuse.data.regions import region_targets

__all__ = ["ClassLoss", "RegionLoss", "build_loss", "class_indices"]


def class_indices(label: torch.Tensor, values: Sequence[int]) -> torch.Tensor:
    """Label values → class indices (``values[i]`` → ``i``), same shape, float like the input.

    Contiguous ``0..K-1`` labels are returned unchanged.
    """
    if list(values) == list(range(len(values))):
        return label
    lookup = torch.as_tensor(sorted(int(v) for v in values), device=label.device)
    index = torch.searchsorted(lookup, label.round().long())
    return index.clamp_(max=len(values) - 1).to(label.dtype)


class ClassLoss(nn.Module):
    """DiceCE with softmax over classes; ``label_values`` maps label values to class indices."""

    def __init__(self, label_values: Sequence[int]) -> None:
        super().__init__()
        from monai.losses import DiceCELoss

        self.label_values = [int(v) for v in label_values]
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(B, K, *S)``, ``label`` ``(B, 1, *S)`` label values → scalar loss."""
        return self.loss(logits, class_indices(label, self.label_values))


class RegionLoss(nn.Module):
    """Soft Dice (sigmoid per region, batch Dice) + BCE with logits against multi-hot region targets."""

    def __init__(self, regions: Mapping[str, Sequence[int]]) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        self.regions = {name: [int(v) for v in values] for name, values in regions.items()}
        self.dice = DiceLoss(sigmoid=True, batch=True)
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(B, R, *S)``, ``label`` ``(B, 1, *S)`` label values → scalar loss."""
        target = region_targets(label, self.regions)
        return self.dice(logits, target) + self.bce(logits, target)


def build_loss(cfg) -> nn.Module:
    """The loss a :class:`segfuse.config.Config` describes (labels must be filled in)."""
    from monai.losses import DeepSupervisionLoss

    if cfg.data.regions:
        # labels are known now (load_cases fills them from the dataset): regions must use them
        check_regions(cfg.data.regions, cfg.data.labels or None)
        loss: nn.Module = RegionLoss(cfg.data.regions)
    else:
        loss = ClassLoss(sorted(cfg.data.labels) if cfg.data.labels else [0, 1])
    return DeepSupervisionLoss(loss, weight_mode="exp") if cfg.model.deep_supervision else loss
