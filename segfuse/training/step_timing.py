"""Time training iterations of a config on this machine, in seconds, on random data.

:func:`time_iteration` builds the network a :class:`~segfuse.config.Config`
describes (:func:`~segfuse.factory.build_model`, the real FusionUNet with
the config's auxiliaries), feeds it random tensors of the config's patch and
batch shapes and times what one iteration of :func:`segfuse.training.loop.train`
does: forward, DiceCE loss (with deep supervision when configured), backward,
gradient clipping and an AdamW step (AMP and a ``GradScaler`` on CUDA when
``training.amp``). It also times building a batch with the loop's own batch builder
(:func:`segfuse.training.batches.build_batch`: patch sampling, augmentation, stacking)
from a random case of the dataset's median shape, since on a CPU the loop builds
batches between steps.

The measurement is bounded: one warm-up step (and one warm-up sample for batch
building), then timed steps until
``max_steps`` or ``max_seconds``. A candidate larger than ``probe_voxels`` (voxels
per batch) is run on a smaller *probe* patch and its time and activation memory
scaled by the voxel ratio (convolutions cost time and memory in proportion to
voxels), so even a whole-brain 3D patch costs about a second to judge.

Example:
    >>> cfg = load_config("configs/debug.yaml")                      # doctest: +SKIP
    >>> t = time_iteration(cfg, device="cpu", max_seconds=2.0)      # doctest: +SKIP
    >>> t.seconds_per_iteration                                     # doctest: +SKIP
    0.09
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from segfuse.auxiliary import aux_scales, lcm_of_scales
from segfuse.config import Config
from segfuse.data.sampling import MAX_FOREGROUND_POINTS, PaddedCase
from segfuse.factory import build_model
from segfuse.training.batches import augmentation_margin, build_batch
from segfuse.training.step import TrainingParts, optimisation_step

__all__ = ["IterationTiming", "probe_patch", "time_batches", "time_iteration"]

#: bytes per parameter held in training: weights, gradients and AdamW's two moments (float32)
PARAMETER_STATE_BYTES = 16
#: the augmentation probabilities the warm-up sample sets to 1 (those above 0)
AUGMENT_PROBABILITIES = ("flip_prob", "rotate_prob", "scale_prob", "intensity_prob")
BATCH_WORKERS_GPU = 8  # what resolve_workers gives beside a GPU (batches are built while the GPU steps)


@dataclass
class IterationTiming:
    """One measured candidate.

    Attributes:
        step_seconds: forward + backward + optimiser step (median of the timed
            steps), at the real patch (scaled when measured on a probe).
        batch_seconds: building one batch on the CPU (sampling + augmentation).
        device: ``"cpu"`` or ``"cuda"``.
        steps: timed steps (after one warm-up step).
        measured_patch: the patch actually run (``probe`` when smaller than the real one).
        scale: real voxels / measured voxels (1.0 when measured at the real size).
        memory_bytes: training memory estimate at the real size: parameter state
            (weights, gradients, AdamW moments) plus activations (CPU: the bytes
            autograd saved for backward; CUDA: the peak allocated above the model).
        parameter_bytes: the parameter-state part of ``memory_bytes``.
        wall_seconds: how long the whole measurement took, model building included.
    """

    step_seconds: float
    batch_seconds: float
    device: str
    steps: int
    measured_patch: tuple[int, ...]
    scale: float
    memory_bytes: int
    parameter_bytes: int
    wall_seconds: float

    @property
    def extrapolated(self) -> bool:
        return self.scale > 1.0

    @property
    def seconds_per_iteration(self) -> float:
        """What ``train`` will spend per iteration: on a CPU batches are built between
        steps; beside a GPU worker threads build them during the steps."""
        if self.device == "cuda":
            return max(self.step_seconds, self.batch_seconds / BATCH_WORKERS_GPU)
        return self.step_seconds + self.batch_seconds


def probe_patch(patch: Sequence[int], batch: int, multiples: Sequence[int], probe_voxels: float) -> tuple[int, ...]:
    """``patch`` shrunk (largest axis first, one multiple at a time) until ``batch * voxels <= probe_voxels``.

    Example:
        >>> probe_patch((128, 128, 128), 2, (16, 16, 16), 2 * 64**3)
        (64, 64, 64)
    """
    out = list(patch)
    while batch * math.prod(out) > probe_voxels:
        shrinkable = [d for d in range(len(out)) if out[d] > multiples[d]]
        if not shrinkable:
            break
        axis = max(shrinkable, key=lambda d: (out[d], -d))
        out[axis] -= multiples[axis]
    return tuple(out)


def _multiples(cfg: Config) -> tuple[int, ...]:
    dims = cfg.spatial_dims
    lcm = lcm_of_scales(aux_scales(cfg.data.aux, dims), dims)
    return tuple(math.lcm(2**cfg.model.encoder_depth, m) for m in lcm)


def _loss(cfg: Config) -> torch.nn.Module:
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    return DeepSupervisionLoss(loss, weight_mode="exp") if cfg.model.deep_supervision else loss


def time_iteration(
    cfg: Config,
    *,
    in_channels: int = 1,
    device: str = "cpu",
    max_seconds: float = 3.0,
    max_steps: int = 3,
    probe_voxels: float | None = None,
    case_shape: Sequence[int] | None = None,
    object_extent: Sequence[float] | None = None,
) -> IterationTiming:
    """Time training iterations of ``cfg`` (patch, batch, network) on ``device``.

    Args:
        cfg: the run config; ``training.patch_size``/``batch_size`` and the model
            section are what is timed.
        in_channels: channels of the primary scan (times the 2.5D slices in 2D mode).
        device: ``"cpu"`` or ``"cuda"``.
        max_seconds: stop timing steps once this much step time is spent (at least
            one timed step after the warm-up step).
        max_steps: timed steps at most.
        probe_voxels: run candidates with more voxels per batch than this on a
            probe patch and scale (see the module docstring); ``None``: never.
        case_shape: ``(X, Y, Z)`` of the random case batches are cut from
            (default: the patch, in 2D with ``2 * context + 1`` slices).
        object_extent: extent of the random case's labelled box (default: half the case).

    Returns:
        An :class:`IterationTiming`.
    """
    started = time.perf_counter()
    patch = tuple(int(p) for p in cfg.training.patch_size)
    batch = int(cfg.training.batch_size)
    measured = patch if probe_voxels is None else probe_patch(patch, batch, _multiples(cfg), probe_voxels)
    scale = math.prod(patch) / math.prod(measured)
    run_cfg = copy.deepcopy(cfg)
    run_cfg.training.patch_size = list(measured)
    run_cfg.model.encoder_weights = None  # timing needs no pretrained weights

    dev = torch.device(device)
    times, activations, params = _time_network(run_cfg, in_channels, dev, max_seconds, max_steps)
    step_seconds = statistics.median(times) * scale
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    batch_seconds = time_batches(
        cfg, case_shape=case_shape, object_extent=object_extent, max_seconds=min(1.0, max_seconds)
    )
    return IterationTiming(
        step_seconds=step_seconds,
        batch_seconds=batch_seconds,
        device=dev.type,
        steps=len(times),
        measured_patch=measured,
        scale=scale,
        memory_bytes=int(PARAMETER_STATE_BYTES * params + activations * scale),
        parameter_bytes=PARAMETER_STATE_BYTES * params,
        wall_seconds=time.perf_counter() - started,
    )


def _time_network(
    run_cfg: Config, in_channels: int, dev: torch.device, max_seconds: float, max_steps: int
) -> tuple[list[float], int, int]:
    """``(timed step seconds, activation bytes, parameter count)`` of ``run_cfg``'s network on random data."""
    dims = run_cfg.spatial_dims
    measured = tuple(run_cfg.training.patch_size)
    batch = int(run_cfg.training.batch_size)
    model = build_model(run_cfg, in_channels=in_channels).to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=run_cfg.training.lr)
    parts = TrainingParts.of(model, optimizer, _loss(run_cfg), dev, amp=run_cfg.training.amp,
                             decode_without_aux=run_cfg.training.decode_without_aux,
                             absent_drops=run_cfg.training.decode_without_aux_drops)
    generator = torch.Generator().manual_seed(0)
    channels = in_channels * (2 * run_cfg.model.context_slices + 1) if dims == 2 else in_channels
    num_classes = max(len(run_cfg.data.labels), 2)
    x = torch.randn(batch, channels, *measured, generator=generator).to(dev)
    y = torch.randint(0, num_classes, (batch, 1, *measured), generator=generator).float().to(dev)  # as the loop
    aux = {
        name: torch.randn(batch, 1, *(-(-p // s) for p, s in zip(measured, scale, strict=True)),
                          generator=generator).to(dev)
        for name, scale in aux_scales(run_cfg.data.aux, dims).items()
    }
    present = {name: torch.ones(batch, device=dev) for name in aux}
    params = sum(p.numel() for p in model.parameters())

    def step() -> None:
        optimisation_step(parts, (x, aux, present, y), grad_clip=run_cfg.training.grad_clip)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    # warm-up step: allocations, kernel selection; on CPU it also counts the saved activations
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        step()
        activations = torch.cuda.max_memory_allocated(dev) - base
    else:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step()
        activations = sum(saved.values())

    times: list[float] = []
    while len(times) < max(1, max_steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if sum(times) >= max_seconds:
            break
    return times, activations, params


def time_batches(
    cfg: Config,
    *,
    case_shape: Sequence[int] | None = None,
    object_extent: Sequence[float] | None = None,
    max_seconds: float = 1.0,
    max_batches: int = 3,
) -> float:
    """Seconds to build one training batch of ``cfg`` (median over a few), from a random case.

    Each batch is built by :func:`~segfuse.training.batches.build_batch`, the code the
    training loop runs, with the loop's augmentation margin. The case has shape
    ``case_shape`` (padded to fit the patch and its augmentation margin), random
    intensities, the config's auxiliaries at their scales, and a labelled box of
    ``object_extent`` in its centre. One untimed batch of one sample with every
    enabled augmentation switched on comes first, so that one-time costs (seconds
    in a fresh process) are not reported as the cost of a batch.
    """
    dims = cfg.spatial_dims
    t = cfg.training
    scales = aux_scales(cfg.data.aux)
    lcm = lcm_of_scales(scales)
    margin = augmentation_margin(cfg, lcm)
    if dims == 2:
        patch3 = [*t.patch_size, 2 * cfg.model.context_slices + 1]
        margin3 = [*margin, 0]
    else:
        patch3, margin3 = list(t.patch_size), margin
    shape = list(case_shape) if case_shape is not None else list(patch3)
    shape = [-(-max(n, p + 2 * m) // s) * s for n, p, m, s in zip(shape, patch3, margin3, lcm, strict=True)]
    rng = np.random.default_rng(0)
    primary = rng.standard_normal((1, *shape), dtype=np.float32)
    label = np.zeros(shape, np.uint8)
    extent = [n / 2 for n in shape] if object_extent is None else [min(n, max(1.0, e)) for n, e in
                                                                     zip(shape, object_extent, strict=True)]
    box = tuple(slice(int((n - e) // 2), int((n - e) // 2 + e)) for n, e in zip(shape, extent, strict=True))
    label[box] = 1
    points = np.argwhere(label == 1)
    if len(points) > MAX_FOREGROUND_POINTS:
        points = points[rng.choice(len(points), MAX_FOREGROUND_POINTS, replace=False)]
    aux = {
        name: rng.standard_normal((1, *(n // si for n, si in zip(shape, s, strict=True))), dtype=np.float32)
        for name, s in scales.items()
    }
    cases = [PaddedCase("timing", primary, aux, label, (1.0, 1.0, 1.0), {1: points})]

    # one untimed warm-up sample with every augmentation switched on: the first use of each pays one-time
    # costs (imports, lazily built transforms) that a training run pays once, not per batch
    warm_up = copy.deepcopy(cfg)
    warm_up.training.batch_size = 1
    warm_up.training.augment = dataclasses.replace(
        t.augment, **{k: 1.0 for k in AUGMENT_PROBABILITIES if getattr(t.augment, k) > 0}
    )
    build_batch(cases, warm_up, np.random.default_rng(1), margin)
    times: list[float] = []
    while len(times) < max_batches:
        t0 = time.perf_counter()
        build_batch(cases, cfg, rng, margin)
        times.append(time.perf_counter() - t0)
        if sum(times) >= max_seconds:
            break
    return statistics.median(times)
