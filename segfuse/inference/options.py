"""Sliding-window options chosen at prediction time (``segfuse predict --overlap --roi --batch-size``).

A checkpoint carries its ``inference`` section (roi size, overlap, windows per
forward pass, mirror axes); :func:`set_inference_options` overrides it on a
loaded model — on every member of an ensemble — after checking the values, so a
bad option is one clear error before any case is read. Mirroring is chosen per
call (``predict(..., mirror=True/False)``, ``--mirror`` / ``--no-mirror``).

Example:
    >>> model = set_inference_options(load_model("ckpt.pt"), overlap=0.25, roi=[64, 64, 32])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

from segfuse.auxiliary import aux_scales, lcm_of_scales
from segfuse.inference.model import LoadedModel
from segfuse.io.errors import SegfuseInputError

__all__ = ["set_inference_options"]


def _members(model: LoadedModel) -> list[LoadedModel]:
    return list(getattr(model, "members", None) or [model])


def _check_roi(model: LoadedModel, roi: list[int]) -> None:
    dims = model.cfg.spatial_dims
    where = model.checkpoint or "the model"
    if len(roi) != dims or any(r < 1 for r in roi):
        raise SegfuseInputError(
            f"--roi {roi}: {where} is a {model.cfg.model.mode} model and needs {dims} positive sizes"
        )
    scales = aux_scales(model.cfg.data.aux, dims)
    lcm = lcm_of_scales(scales, dims)
    if any(r % m for r, m in zip(roi, lcm, strict=True)):
        raise SegfuseInputError(
            f"--roi {roi}: every size must be a multiple of {list(lcm)}, the auxiliary scales' least common "
            f"multiple ({scales}) of {where}"
        )


def set_inference_options(
    model: LoadedModel,
    *,
    overlap: float | None = None,
    roi: Sequence[int] | None = None,
    batch_size: int | None = None,
) -> LoadedModel:
    """Override the sliding-window options of ``model`` (each member of an ensemble); ``None`` keeps the checkpoint's.

    Args:
        model: a loaded model or ensemble (changed in place and returned).
        overlap: fraction of a window shared with its neighbour, in ``[0, 1)``.
        roi: window size, one entry per spatial axis of the network (2 for a 2D
            model), each a multiple of the auxiliary scales' least common multiple.
        batch_size: windows per forward pass (``inference.sw_batch_size``), ``>= 1``.

    Raises:
        SegfuseInputError: a value out of range, naming the option and the checkpoint.
    """
    if overlap is not None and not 0.0 <= overlap < 1.0:
        raise SegfuseInputError(f"--overlap must be in [0, 1), got {overlap}")
    if batch_size is not None and batch_size < 1:
        raise SegfuseInputError(f"--batch-size must be a positive integer, got {batch_size}")
    for member in _members(model):
        if roi is not None:
            _check_roi(member, [int(r) for r in roi])
    for member in [*_members(model), model]:
        section = member.cfg.inference
        if overlap is not None:
            section.overlap = float(overlap)
        if roi is not None:
            section.roi_size = [int(r) for r in roi]
        if batch_size is not None:
            section.sw_batch_size = int(batch_size)
    return model
