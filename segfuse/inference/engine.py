"""Run a network over a whole prepared case (2D slice by slice, or 3D), windowing every input.

Used by validation during training and by ``segfuse predict``: one code path.

With ``data.crop_to_nonzero`` (the default) the network sees only the box of the
primary's non-zero voxels (:func:`segfuse.data.preprocess.crop_to_nonzero`, the crop
training samples from) and every voxel outside it is background — as nnU-Net does
for skull-stripped scans. A scan without a zero background (most CT, most unstripped
MR) has the whole volume as its box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from segfuse.auxiliary import aux_scales
from segfuse.data.aux_slices import aux_slice
from segfuse.data.preprocess import PreparedCase, crop_to_nonzero
from segfuse.inference.windows import Predictor, sliding_window_multires


def window_predictor(model: torch.nn.Module, amp: bool, sigmoid: bool = False) -> Predictor:
    """``predict(x, aux)``: probabilities of one batch of windows, softmax over classes or a sigmoid per region.

    AMP (autocast) on CUDA only when ``amp``; the logits are taken to float32 first.
    """

    def run(x: torch.Tensor, aux: dict[str, torch.Tensor | None]) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=amp and x.device.type == "cuda"):
            logits = model(x, aux=aux).float()
            return torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=1)

    return run


@torch.no_grad()
def predict_prepared(
    model: torch.nn.Module,
    cfg,
    case: PreparedCase,
    *,
    device: str | torch.device = "cpu",
    mirror_axes: Sequence[int] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Class probabilities ``(K, *case.shape)`` (float32, CPU) for a prepared case.

    With ``cfg.data.regions`` the ``K`` channels are the regions' sigmoid
    probabilities (they overlap and need not sum to 1).

    Args:
        model: a FusionUNet (in eval mode).
        cfg: the run :class:`segfuse.config.Config` (mode, roi, overlap, …).
        case: primary ``(C, X, Y, Z)`` and auxiliaries on their edge-aligned grids.
        mirror_axes: spatial axes for mirror test-time augmentation (``None``: config's).
        progress: a progress bar over the sliding-window batches (3D) or over the slices (2D).
    """
    if cfg.data.crop_to_nonzero and case.nonzero_box is not None:
        cropped = crop_to_nonzero(case, aux_scales(cfg.data.aux))
        if cropped is not case:
            inside = _predict_whole(model, cfg, cropped, device, mirror_axes, progress)
            out = torch.zeros((inside.shape[0], *case.shape), dtype=inside.dtype)
            if not cfg.data.regions:
                out[0] = 1.0  # background: class 0 (the regions' sigmoids stay 0)
            start = [c - o for c, o in zip(cropped.offset, case.offset, strict=True)]
            out[(slice(None), *(slice(a, a + n) for a, n in zip(start, cropped.shape, strict=True)))] = inside
            return out
    return _predict_whole(model, cfg, case, device, mirror_axes, progress)


def _predict_whole(model, cfg, case: PreparedCase, device, mirror_axes, progress) -> torch.Tensor:
    """:func:`predict_prepared` over the whole of ``case``: ``(K, *case.shape)``."""
    device = torch.device(device)
    axes = [a for a in (cfg.inference.mirror_axes if mirror_axes is None else mirror_axes) if a < cfg.spatial_dims]
    scales = aux_scales(cfg.data.aux)
    aux_arrays = {name: case.aux.get(name) for name in scales}
    predictor = window_predictor(model, cfg.training.amp, sigmoid=bool(cfg.data.regions))
    options = dict(
        overlap=cfg.inference.overlap,
        sw_batch_size=cfg.inference.sw_batch_size,
        blend=cfg.inference.blend,
        device=device,
        output_device="cpu",
    )
    if cfg.spatial_dims == 3:
        primary = torch.from_numpy(np.ascontiguousarray(case.primary))[None]
        aux = {k: None if v is None else torch.from_numpy(np.ascontiguousarray(v))[None] for k, v in aux_arrays.items()}
        out = sliding_window_multires(
            primary, aux, scales, predictor, cfg.roi_size, mirror_axes=axes or None, progress=progress, **options
        )
        return out[0]
    # 2D: slices along the last axis; k neighbours on each side as channels (clamped);
    # each auxiliary's plane for slice z as in training (segfuse.data.aux_slices).
    k = cfg.model.context_slices
    n = case.shape[2]
    scales2d = {name: s[:2] for name, s in scales.items()}
    slices = []
    for z in tqdm(range(n), desc="slices", unit="slice", disable=not progress):
        index = np.clip(np.arange(z - k, z + k + 1), 0, n - 1)
        primary = torch.from_numpy(np.ascontiguousarray(case.primary[:, :, :, index]))
        primary = primary.permute(0, 3, 1, 2).reshape(1, -1, *case.shape[:2])
        aux = {
            name: None
            if v is None
            else torch.from_numpy(
                np.ascontiguousarray(
                    aux_slice(lambda j, v=v: v[:, :, :, j], z, scales[name][2], v.shape[3], cfg.model.aux_slice)
                )
            )[None]
            for name, v in aux_arrays.items()
        }
        roi = cfg.roi_size[:2]
        slices.append(
            sliding_window_multires(primary, aux, scales2d, predictor, roi, mirror_axes=axes or None, **options)[0]
        )
    return torch.stack(slices, dim=-1)
