"""Build a :class:`FusionUNet` from a run :class:`segfuse.config.Config`."""

from __future__ import annotations

from segfuse.models.net import AuxInput, FusionUNet


def build_model(cfg, in_channels: int = 1) -> FusionUNet:
    """The network a config describes.

    ``in_channels`` is the primary's channel count; in 2.5D mode it is multiplied
    by the ``2 * context_slices + 1`` neighbouring slices. In 2D mode each auxiliary
    keeps the in-plane part ``(sx, sy)`` of its scale. With ``data.regions`` the
    network has one output channel per region (sigmoid), else one per label (softmax).
    """
    dims = cfg.spatial_dims
    aux = [
        AuxInput(
            name,
            channels=1,
            scale=tuple(spec.scale[:dims]),
            mapper=spec.mapper,
            fusion=spec.fusion,
            features=spec.features,
            hidden=spec.hidden,
            mapper_layers=spec.mapper_layers,
            levels=None if spec.levels is None else tuple(spec.levels),
        )
        for name, spec in cfg.data.aux.items()
    ]
    channels = in_channels * (2 * cfg.model.context_slices + 1) if dims == 2 else in_channels
    return FusionUNet(
        spatial_dims=dims,
        in_channels=channels,
        num_classes=len(cfg.data.regions) if cfg.data.regions else max(len(cfg.data.labels), 2),
        aux=aux,
        allow_missing_aux=any(spec.dropout > 0 for spec in cfg.data.aux.values()),
        encoder_depth=cfg.model.encoder_depth,
        encoder_weights=cfg.model.encoder_weights,
        widen_factor=cfg.model.widen_factor if dims == 3 else 1.0,
        stem_kernel=cfg.model.stem_kernel,
        norm=cfg.model.norm if dims == 3 else "batch",
        decoder_channels=cfg.model.decoder_channels,
        deep_supervision=cfg.model.deep_supervision,
    )


def model_from_checkpoint(state: dict, device: str = "cpu"):
    """``(Config, FusionUNet in eval mode)`` from a loaded checkpoint dict."""
    from segfuse.config import config_from_dict

    cfg = config_from_dict(state["config"])
    cfg.model.encoder_weights = None  # the checkpoint's weights replace any pretrained file
    net = build_model(cfg, in_channels=int(state.get("in_channels", 1)))
    load_weights(net, state["model"], cfg, state.get("path", "checkpoint"))
    return cfg, net.to(device).eval()


def load_weights(net: FusionUNet, weights: dict, cfg, source: str) -> None:
    """``net.load_state_dict(weights)``, or an error naming ``source`` and what does not fit.

    A checkpoint whose weights were trained for other classes or other auxiliaries
    than its config describes (an edited or mixed-up file) is refused with the
    differing tensors listed, instead of torch's multi-line traceback.
    """
    from segfuse.io.errors import SegfuseInputError

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
