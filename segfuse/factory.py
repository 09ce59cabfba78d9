"""Networks from run configs and files: the bridge between the config and the tensor-only models.

:mod:`segfuse.models` knows tensors only. This module builds the
:class:`~segfuse.models.net.FusionUNet` a :class:`~segfuse.config.Config`
describes, loads pretrained encoder weights from a local file
(``model.encoder_weights``) and rebuilds a trained network from a checkpoint,
refusing weights that do not fit with an error that names the file.

Example:
    >>> net = build_model(load_config("configs/debug.yaml"))  # doctest: +SKIP
    >>> cfg, net = model_from_checkpoint(load_checkpoint("runs/debug/checkpoint_best.pt"))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segfuse.auxiliary import allows_missing
from segfuse.config import Config, config_from_dict
from segfuse.io.errors import SegfuseInputError
from segfuse.io.pretrained import backbone_state_from_file
from segfuse.models.encoders import ResNet18Encoder
from segfuse.models.net import FusionUNet

__all__ = ["build_model", "load_pretrained", "load_weights", "model_from_checkpoint"]


def build_model(cfg: Config, in_channels: int = 1) -> FusionUNet:
    """The network a config describes (with ``model.encoder_weights`` loaded, when set).

    ``in_channels`` is the primary's channel count; in 2.5D mode it is multiplied
    by the ``2 * context_slices + 1`` neighbouring slices. In 2D mode each auxiliary
    keeps the in-plane part ``(sx, sy)`` of its scale. With ``data.regions`` the
    network has one output channel per region (sigmoid), else one per label (softmax).
    """
    dims = cfg.spatial_dims
    channels = in_channels * (2 * cfg.model.context_slices + 1) if dims == 2 else in_channels
    net = FusionUNet(
        spatial_dims=dims,
        in_channels=channels,
        num_classes=len(cfg.data.regions) if cfg.data.regions else max(len(cfg.data.labels), 2),
        aux=[spec.with_dims(dims) for spec in cfg.data.aux.values()],
        allow_missing_aux=allows_missing(cfg.data.aux),
        encoder_depth=cfg.model.encoder_depth,
        widen_factor=cfg.model.widen_factor if dims == 3 else 1.0,
        stem_kernel=cfg.model.stem_kernel,
        norm=cfg.model.norm if dims == 3 else "batch",
        decoder_channels=cfg.model.decoder_channels,
        deep_supervision=cfg.model.deep_supervision,
    )
    if cfg.model.encoder_weights is not None:
        load_pretrained(net.encoder, cfg.model.encoder_weights)
    return net


def load_pretrained(encoder: ResNet18Encoder, path: str | Path) -> None:
    """Load ImageNet (2D) or MedicalNet (3D) ResNet18 weights from a local file into ``encoder``.

    The layouts accepted are those of :func:`segfuse.io.pretrained.backbone_state_from_file`;
    the first convolution is adapted to the input's channels (smp's ``patch_first_conv``)
    and MedicalNet's parameter-free shortcuts are bridged exactly
    (:meth:`~segfuse.models.encoders.ResNet18Encoder.load_backbone`).

    Raises:
        SegfuseInputError: the file is missing, unreadable, of an unknown layout
            (its first keys listed), or its tensors do not fit this encoder
            (names and shapes listed).
    """
    path = Path(path)
    source = backbone_state_from_file(path)
    try:
        encoder.load_backbone(source, origin=str(path))
    except ValueError as exc:
        raise SegfuseInputError(str(exc)) from exc


def model_from_checkpoint(state: dict[str, Any], device: str = "cpu") -> tuple[Config, FusionUNet]:
    """``(Config, FusionUNet in eval mode)`` from a loaded checkpoint dict."""
    cfg = config_from_dict(state["config"])
    cfg.model.encoder_weights = None  # the checkpoint's weights replace any pretrained file
    net = build_model(cfg, in_channels=int(state.get("in_channels", 1)))
    load_weights(net, state["model"], cfg, state.get("path", "checkpoint"))
    return cfg, net.to(device).eval()


def load_weights(net: FusionUNet, weights: dict, cfg: Config, source: str) -> None:
    """``net.load_state_dict(weights)``, or an error naming ``source`` and what does not fit.

    A checkpoint whose weights were trained for other classes or other auxiliaries
    than its config describes (an edited or mixed-up file) is refused with the
    differing tensors listed, instead of torch's multi-line traceback.
    """
    own = net.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(weights[k].shape)} vs network {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(weights))
        if tuple(weights[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{label} {items[:4]}{' …' if len(items) > 4 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
            if items
        ]
        raise SegfuseInputError(
            f"{source}: the weights do not fit the network its config describes "
            f"({max(len(cfg.data.labels), 2)} classes, auxiliaries {list(cfg.data.aux) or 'none'}): "
            + "; ".join(parts)
            + ". Was the checkpoint trained for other classes or auxiliaries?"
        )
    net.load_state_dict(weights)
