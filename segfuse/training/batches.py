"""Training batches: one batch of patches drawn from the padded training cases.

:func:`build_batch` is what :func:`segfuse.training.loop.train` runs between
optimisation steps (in batch-building processes when ``training.num_workers`` > 0)
and what :func:`segfuse.training.step_timing.time_batches` times, so the plan's
estimate measures the code that training runs. :func:`iteration_batch` seeds it
per iteration, which makes an interrupted run resume with the same batches.

Example:
    >>> margin = augmentation_margin(cfg, lcm_of_scales(aux_scales(cfg.data.aux)))   # doctest: +SKIP
    >>> x, aux, present, y = build_batch(cases, cfg, np.random.default_rng(0), margin)  # doctest: +SKIP
    >>> x.shape                                                                      # doctest: +SKIP
    torch.Size([2, 1, 48, 64, 48])
"""

from __future__ import annotations

import math

import numpy as np
import torch

from segfuse.auxiliary import aux_scales
from segfuse.config import Config
from segfuse.data.sampling import PaddedCase, sample_patch
from segfuse.training.prefetch import iteration_rng
from segfuse.training.step import Batch


def augmentation_margin(cfg: Config, lcm: tuple[int, ...]) -> list[int]:
    """Context (voxels per in-patch axis) cut around each patch so rotations and zooms sample real image.

    An eighth of the patch, rounded up to a multiple of the auxiliaries' common scale
    ``lcm`` (so the auxiliary windows stay on their grids); zeros without rotation or zoom.
    """
    aug = cfg.training.augment
    if aug.rotate_prob <= 0 and aug.scale_prob <= 0:
        return [0] * len(cfg.training.patch_size)
    steps = lcm if cfg.spatial_dims == 3 else lcm[:2]
    return [math.ceil(p * 0.125 / s) * s for p, s in zip(cfg.training.patch_size, steps, strict=True)]


def build_batch(
    cases: list[PaddedCase], cfg: Config, rng: np.random.Generator, margin: list[int], pin: bool = False
) -> Batch:
    """One training batch on the CPU, drawn with ``rng``.

    ``training.batch_size`` patches from cases drawn with replacement; the last
    ``round(batch_size * foreground_fraction)`` (at least one when the fraction is
    above 0) are centred on foreground. Returns ``(primary (B, C, *patch),
    {aux: (B, C_a, *patch / scale)}, {aux: present (B,)}, label (B, 1, *patch))``;
    tensors are in pinned memory when ``pin`` (for asynchronous copies to a GPU).
    """
    t = cfg.training
    scales = aux_scales(cfg.data.aux)
    dropout = {name: spec.dropout for name, spec in cfg.data.aux.items()}
    n_fg = max(1, round(t.batch_size * t.foreground_fraction)) if t.foreground_fraction > 0 else 0
    samples = []
    for i in range(t.batch_size):
        case = cases[rng.integers(len(cases))]
        samples.append(
            sample_patch(
                case, t.patch_size, margin, scales, dropout, rng, foreground=i >= t.batch_size - n_fg,
                augment_cfg=t.augment, slice_axis=2 if cfg.spatial_dims == 2 else None,
                context=cfg.model.context_slices, aux_slice_mode=cfg.model.aux_slice,
            )
        )

    def stack(key: str) -> torch.Tensor:
        tensor = torch.from_numpy(np.stack([s[key] for s in samples]))
        return tensor.pin_memory() if pin else tensor

    aux = {name: stack(f"aux_{name}") for name in scales}
    present = {name: stack(f"present_{name}") for name in scales}
    return stack("primary"), aux, present, stack("label")


def iteration_batch(cases: list[PaddedCase], cfg: Config, margin: list[int], seed: int, rank: int, i: int) -> Batch:
    """The batch of iteration ``i`` of process ``rank`` (module level, so batch-building processes can be handed it)."""
    return build_batch(cases, cfg, iteration_rng(seed, rank, i), margin)
