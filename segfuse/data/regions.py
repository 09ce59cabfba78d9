"""Label regions: overlapping unions of label values, trained with one sigmoid each.

BraTS is labelled 0 (background), 1 (necrotic / non-enhancing core), 2 (oedema)
and 4 (enhancing tumour), but scored on three nested regions: whole tumour
``(1, 2, 4)``, tumour core ``(1, 4)`` and enhancing tumour ``(4,)``. As in
nnU-Net's region-based training, a network with regions has one output channel
per region, trained with a sigmoid against a multi-hot target (a voxel labelled 4
is 1 in all three channels); stored labels and patch sampling stay label maps,
the targets are built on the fly (:func:`region_targets`).

Regions are an ordered mapping ``name → label values``, broadest first
(``data.regions`` in a run config). To write a label map back
(:func:`labels_from_regions`) the regions are painted in that order, so a voxel
gets the label of the last (most specific) region whose probability is above
0.5; each region paints its *own* label, the one value it holds that no later
region holds (whole tumour paints 2, tumour core 1, enhancing tumour 4), so a
region must own exactly one value (:func:`segfuse.config.check_regions`, which the
config runs on ``data.regions``; :func:`segfuse.config.paint_values` gives the values).

Example:
    >>> regions = {"whole_tumour": [1, 2, 4], "tumour_core": [1, 4], "enhancing_tumour": [4]}
    >>> labels_from_regions(np.array([[0.9], [0.8], [0.1]]), regions).tolist()
    [1]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml

from segfuse.config import Regions, check_regions, paint_values
from segfuse.io.errors import SegfuseInputError

__all__ = [
    "BRATS_REGIONS",
    "labels_from_regions",
    "region_masks",
    "region_targets",
    "regions_from_arguments",
]

#: The BraTS evaluation regions on BraTS's own label values (0, 1, 2, 4).
BRATS_REGIONS: dict[str, list[int]] = {
    "whole_tumour": [1, 2, 4],
    "tumour_core": [1, 4],
    "enhancing_tumour": [4],
}

THRESHOLD = 0.5


def region_targets(label: torch.Tensor, regions: Regions) -> torch.Tensor:
    """Multi-hot targets from a label map.

    Args:
        label: label values ``(B, 1, *spatial)`` (any dtype; floats hold whole numbers).
        regions: region name → label values.

    Returns:
        ``(B, R, *spatial)`` float32: channel ``r`` is 1 where the label is in region ``r``.
    """
    values = label.round().long() if label.is_floating_point() else label.long()
    channels = [torch.isin(values[:, 0], torch.as_tensor(list(v), device=label.device)) for v in regions.values()]
    return torch.stack(channels, dim=1).float()


def region_masks(labelmap: np.ndarray, regions: Regions) -> dict[str, np.ndarray]:
    """``name → bool mask`` of each region in a label map ``(X, Y, Z)`` (or any shape)."""
    return {name: np.isin(labelmap, np.asarray(list(values))) for name, values in regions.items()}


def labels_from_regions(probabilities: np.ndarray, regions: Regions, threshold: float = THRESHOLD) -> np.ndarray:
    """Paint region probabilities back into a label map (nnU-Net's rule).

    Args:
        probabilities: sigmoid outputs ``(R, *spatial)``, one channel per region, in order.
        regions: region name → label values, broadest first.
        threshold: a region is present where its probability is above this.

    Returns:
        The label map ``(*spatial)`` (uint8 for values below 256): 0 where no region is
        above ``threshold``, else the paint value of the last region above it.

    Example:
        >>> p = np.array([[0.9, 0.9, 0.2], [0.1, 0.8, 0.1], [0.0, 0.7, 0.0]])  # (3 regions, 3 voxels)
        >>> labels_from_regions(p, BRATS_REGIONS).tolist()
        [2, 4, 0]
    """
    if probabilities.shape[0] != len(regions):
        raise ValueError(f"probabilities have {probabilities.shape[0]} channels for {len(regions)} regions")
    values = paint_values(regions)
    dtype = np.uint8 if max(values) < 256 else np.uint16
    out = np.zeros(probabilities.shape[1:], dtype=dtype)
    for channel, value in zip(probabilities, values, strict=True):
        out[channel > threshold] = value
    return out


def _regions_from_file(path: Path) -> dict[str, list[int]]:
    """Regions from a checkpoint or run config (``data.regions``), a ``regions:`` file or an nnU-Net dataset.json."""
    if path.suffix == ".pt":
        from segfuse.io.checkpoint import load_checkpoint

        data = {"data": load_checkpoint(path).get("config", {}).get("data", {})}
    else:
        try:
            data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise SegfuseInputError(f"{path}: cannot read regions from it: {exc}") from exc
    if not isinstance(data, dict):
        raise SegfuseInputError(f"{path}: expected a mapping with data.regions, regions or labels")
    if isinstance(data.get("data"), dict) and data["data"].get("regions"):
        raw = data["data"]["regions"]
    elif data.get("regions"):
        raw = data["regions"]
    elif isinstance(data.get("labels"), dict) and any(isinstance(v, list) for v in data["labels"].values()):
        # nnU-Net v2: {"background": 0, "whole_tumour": [1, 2, 3], "enhancing": 3}, in painting order
        raw = {name: value for name, value in data["labels"].items() if value != 0 and value != [0]}
    else:
        raise SegfuseInputError(
            f"{path}: no regions found (looked for data.regions, regions, and nnU-Net list-valued labels)"
        )
    if not isinstance(raw, dict):
        raise SegfuseInputError(f"{path}: regions must be a mapping name → label values, got {raw!r}")
    return {str(k): [int(x) for x in (v if isinstance(v, list) else [v])] for k, v in raw.items()}


def regions_from_arguments(arguments: Sequence[str]) -> dict[str, list[int]]:
    """Regions from command-line words: ``brats``, a file, or ``NAME=V,V,...`` items in order.

    A file may be a checkpoint (``.pt``) or a run's ``config.yaml`` (``data.regions``),
    a YAML/JSON file with a top-level ``regions`` mapping, or an nnU-Net v2
    ``dataset.json`` with list-valued labels.

    Example:
        >>> regions_from_arguments(["wt=1,2,4", "tc=1,4", "et=4"])
        {'wt': [1, 2, 4], 'tc': [1, 4], 'et': [4]}
    """
    if len(arguments) == 1 and arguments[0].lower() == "brats":
        regions = {k: list(v) for k, v in BRATS_REGIONS.items()}
    elif len(arguments) == 1 and "=" not in arguments[0]:
        path = Path(arguments[0])
        if not path.is_file():
            raise SegfuseInputError(
                f"--regions {arguments[0]}: not a file, 'brats', or NAME=VALUES items (e.g. wt=1,2,4 tc=1,4 et=4)"
            )
        regions = _regions_from_file(path)
    else:
        regions = {}
        for item in arguments:
            name, _, values = item.partition("=")
            try:
                parsed = [int(v) for v in values.split(",") if v.strip()]
            except ValueError:
                parsed = []
            if not name or not parsed:
                raise SegfuseInputError(f"--regions: {item!r} must look like NAME=V,V (e.g. tumour_core=1,4)")
            if name in regions:
                raise SegfuseInputError(f"--regions: region {name!r} is given twice")
            regions[name] = parsed
    check_regions(regions, paintable=False)
    return regions
