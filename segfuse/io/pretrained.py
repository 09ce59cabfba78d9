"""Pretrained ResNet18 weights from a local file, as ``key → tensor`` with torchvision's key names.

Accepted layouts: torchvision's ``resnet18-*.pth`` (``conv1.weight``, ``bn1.*``,
``layer1.0.conv1.weight``, …, ``fc.*``), MedicalNet's ``resnet_18*.pth``
(``{"state_dict": {"module.conv1.weight", …, "module.conv_seg.*"}}``), and the same
keys under ``encoder.``/``module.`` prefixes or a ``model`` wrapper. The encoder
takes the result with :meth:`segfuse.models.encoders.ResNet18Encoder.load_backbone`
(:func:`segfuse.factory.load_pretrained` does both).
"""

from __future__ import annotations

from pathlib import Path

import torch

from segfuse.io.errors import SegfuseInputError

__all__ = ["HEAD_PREFIXES", "WRAPPER_KEYS", "backbone_state_from_file"]

#: Key prefixes of the published files' heads, which an encoder does not use.
HEAD_PREFIXES = ("fc.", "conv_seg.")

#: Wrapper keys around a state dict (MedicalNet: ``state_dict``; many training scripts: ``model``).
WRAPPER_KEYS = ("state_dict", "model")


def backbone_state_from_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local ResNet18 weights file into ``key → tensor`` with torchvision's key names.

    Unwraps ``{"state_dict": ...}`` or ``{"model": ...}``, removes ``module.``
    (DataParallel, as in MedicalNet's files) and ``encoder.`` prefixes, and drops
    the heads (``fc.*``, ``conv_seg.*``). Read with ``weights_only=True``.

    Raises:
        SegfuseInputError: missing or unreadable file, or a layout without ResNet
            keys (``conv1.weight``, ``layer1.*``): the message lists the file's first keys
            and the layouts accepted.

    Example:
        >>> state = backbone_state_from_file("resnet18-f37072fd.pth")  # doctest: +SKIP
        >>> state["conv1.weight"].shape  # doctest: +SKIP
        torch.Size([64, 3, 7, 7])
    """
    path = Path(path)
    if not path.is_file():
        raise SegfuseInputError(f"{path}: pretrained encoder weights not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad pickle
        raise SegfuseInputError(f"{path}: cannot read encoder weights: {exc}") from exc
    for key in WRAPPER_KEYS:
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict):
        raise SegfuseInputError(f"{path}: expected a state_dict, found {type(raw).__name__}")
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = str(key)
        for prefix in ("module.", "encoder.", "module."):
            name = name.removeprefix(prefix)
        if not name.startswith(HEAD_PREFIXES):
            state[name] = value
    if "conv1.weight" not in state and not any(k.startswith("layer1.") for k in state):
        sample = ", ".join(list(map(str, raw))[:6]) or "none"
        raise SegfuseInputError(
            f"{path}: unknown weights layout: no ResNet keys (conv1.weight, layer1.*) after removing "
            f"'module.'/'encoder.' prefixes; the file's first keys are: {sample}. Expected torchvision's "
            "ImageNet resnet18 file (conv1.weight, bn1.*, layer1.0.conv1.weight, …, fc.*) or MedicalNet's "
            "resnet_18.pth ({'state_dict': {'module.conv1.weight', …}})"
        )
    return state
