"""Choose what trains well in a time budget on this machine, from short measurements.

:func:`plan_for_budget` is ``segfuse plan``: the dataset fingerprint of
:func:`segfuse.training.plan.plan_dataset`, then a few timed training iterations of
candidate settings (:func:`segfuse.training.step_timing.time_iteration`, the real
FusionUNet on random data of the candidate's shapes), then a choice by a fixed
rule, written as an editable config whose comments carry the measurements.

The rule ("progress" in a budget of ``B`` minutes of optimisation time):

1. **Patch** — covers the typical labelled object with context: per axis the
   median object extent times :data:`CONTEXT` (1.5), at least
   :data:`MIN_PATCH_EDGE`, at most the median case shape, rounded up to the
   network's stride (and the auxiliary scales). On the hippocampus (objects
   22 × 39 × 26 voxels in 35 × 50 × 36 crops) that is the hand-tuned 48 × 64 × 48.
2. **Depth** — :func:`encoder_depth_for`: 3 for patches under 32 voxels on some
   axis, 5 from 160, otherwise 4 (the hand-tuned configs).
3. **Mode** — 3D (patch above, batch 2, half-width encoder, as
   ``configs/hippocampus_3d.yaml``) when it fits at least
   :data:`MIN_ITERATIONS` (1,000) iterations in ``B``: the hippocampus 3D
   reference reached within 0.03 of its 30-minute Dice after about 1,000–1,400
   iterations. Otherwise the quarter-width 3D network is tried; if that also falls
   short, **2.5D** (axial slices with one neighbour on each side, as
   ``configs/hippocampus_2d.yaml``), whose iterations are 5–20× cheaper. When
   neither reaches the bar the mode with more iterations wins, with a warning.
4. **2.5D batch** — :data:`SLICE_PIXELS_PER_BATCH` in-plane pixels (16 slices of
   64 × 64; 16 for the hippocampus's 48 × 64, 8 for BraTS-sized planes), between
   8 and 32 slices, halved (not below 8) while it falls short of the bar.
5. **GPU** — the patch first tries twice the object extent (:data:`CONTEXT_GPU`,
   still capped by the case shape) and keeps it when it passes rule 3 and fits in
   memory; the same rule picks the mode; then the batch doubles while samples
   per second still rise by :data:`GPU_BUSY_GAIN` (the device is not yet busy),
   the iterations stay above the bar, and the measured memory fits in
   :data:`GPU_MEMORY_FRACTION` of the free GPU memory (``torch.cuda.mem_get_info``).

Every number printed is a measurement on this machine (or, for candidates larger
than the probe size, a measurement on a smaller patch scaled by the voxel ratio,
said so). ``training.schedule: time`` and ``training.max_minutes: B`` make the
run use the budget; ``segfuse train`` warns when its own speed disagrees.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from segfuse.auxiliary import planned_aux_slice
from segfuse.config import Config, config_from_dict
from segfuse.io.errors import SegfuseInputError
from segfuse.training.plan import PlanReport, plan_dataset, write_plan
from segfuse.training.step_timing import IterationTiming, time_iteration

__all__ = [
    "BudgetPlan",
    "Candidate",
    "Measured",
    "choose_training",
    "encoder_depth_for",
    "plan_for_budget",
    "resolve_device",
]

logger = logging.getLogger(__name__)

DEFAULT_MINUTES = 30.0
MIN_ITERATIONS = 1000
CONTEXT = 1.5
#: on a GPU the patch starts with twice the object extent (more context), if its memory allows
CONTEXT_GPU = 2.0
MIN_PATCH_EDGE = 32
SLICE_PIXELS_PER_BATCH = 16 * 64 * 64
SLICE_BATCH_RANGE = (8, 32)
CONTEXT_SLICES = 1
BATCH_3D = 2
WIDTHS_3D = (0.5, 0.25)
#: total seconds the CPU/GPU measurements may take (soft: a started measurement finishes)
TIMING_SECONDS = 40.0
#: one candidate's timed steps stop after this many seconds
CANDIDATE_SECONDS = 3.0
#: candidates with more voxels per batch are measured on a probe patch and scaled (CPU)
PROBE_VOXELS_CPU = 2 * 64**3
PROBE_VOXELS_GPU = 2 * 256**3
GPU_BUSY_GAIN = 1.15
GPU_MEMORY_FRACTION = 0.8
GPU_MAX_BATCH = 64
DECODER_CHANNELS = (256, 128, 64, 32, 16)


# ------------------------------------------------------------------ candidates


@dataclass(frozen=True)
class Candidate:
    """Training settings to measure: mode ``"3d"`` or ``"2.5d"``, patch, batch, width, depth."""

    mode: str
    patch: tuple[int, ...]
    batch: int
    widen: float
    depth: int

    def describe(self) -> str:
        patch = " x ".join(str(p) for p in self.patch)
        if self.mode == "3d":
            return f"3D {patch}, batch {self.batch}, width {self.widen:g}, depth {self.depth}"
        return f"2.5D {patch} ({2 * CONTEXT_SLICES + 1} slices), batch {self.batch}, depth {self.depth}"

    @property
    def decoder_channels(self) -> list[int]:
        channels = DECODER_CHANNELS[-self.depth :]
        if self.mode == "3d":  # the decoder narrows with the encoder (0.5: the hand-tuned widths)
            return [max(8, round(c * self.widen / 0.5)) for c in channels]
        return list(channels)


@dataclass
class Measured:
    """A candidate, its timing and what it means in the budget."""

    candidate: Candidate
    timing: IterationTiming
    budget_seconds: float
    memory_limit_bytes: float

    @property
    def seconds_per_iteration(self) -> float:
        return self.timing.seconds_per_iteration

    @property
    def iterations(self) -> int:
        return int(self.budget_seconds / max(self.seconds_per_iteration, 1e-9))

    @property
    def fits_memory(self) -> bool:
        return self.timing.memory_bytes <= self.memory_limit_bytes

    @property
    def samples_per_second(self) -> float:
        return self.candidate.batch / max(self.seconds_per_iteration, 1e-9)

    def describe(self) -> str:
        how = (f", scaled from {' x '.join(map(str, self.timing.measured_patch))}" if self.timing.extrapolated
               else "")
        memory = self.timing.memory_bytes / 2**30
        over = "" if self.fits_memory else f" (over the {self.memory_limit_bytes / 2**30:.1f} GiB limit)"
        t = self.timing
        parts = (f" (network {_fmt_seconds(t.step_seconds)}{how}, batch building {_fmt_seconds(t.batch_seconds)})"
                 if t.device == "cpu" else how and f" ({how[2:]})")
        return (f"{self.candidate.describe()}: {_fmt_seconds(self.seconds_per_iteration)}/iteration{parts} "
                f"-> {self.iterations:,} iterations; {memory:.2f} GiB{over}")


def _minutes(minutes: float) -> str:
    return f"{minutes:g} minute" + ("" if minutes == 1 else "s")


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds < 0.1 else f"{seconds:.2f} s"


def encoder_depth_for(patch: Sequence[float]) -> int:
    """Encoder stages for a patch: 3 below 32 voxels on some axis, 5 from 160 on every axis, else 4.

    Example:
        >>> encoder_depth_for((48, 64, 48)), encoder_depth_for((24, 24, 24)), encoder_depth_for((192, 192))
        (4, 3, 5)
    """
    smallest = min(patch)
    if smallest < 32:
        return 3
    return 5 if smallest >= 160 else 4


def _round_up(value: float, multiple: int) -> int:
    return max(multiple, -(-math.ceil(value - 1e-6) // multiple) * multiple)


def patch_for(
    report: PlanReport, axes: Sequence[int], context: float = CONTEXT
) -> tuple[tuple[int, ...], int]:
    """``(patch, depth)`` over canonical ``axes`` that covers the median object with context (rule 1-2)."""
    shape = report.median_shape
    extent = report.object_extent or tuple(float(n) for n in shape)
    desired = [min(float(shape[a]), max(extent[a] * context, float(MIN_PATCH_EDGE))) for a in axes]
    depth = encoder_depth_for(desired)
    multiples = [math.lcm(2**depth, *(scale[a] for scale in report.aux_scales.values())) for a in axes]
    patch = tuple(_round_up(d, m) for d, m in zip(desired, multiples, strict=True))
    return patch, depth


def slice_batch(patch: Sequence[int]) -> int:
    """2.5D slices per batch: :data:`SLICE_PIXELS_PER_BATCH` pixels, a power of two in :data:`SLICE_BATCH_RANGE`.

    Example:
        >>> slice_batch((48, 64)), slice_batch((96, 128)), slice_batch((16, 16))
        (16, 8, 32)
    """
    lo, hi = SLICE_BATCH_RANGE
    raw = max(1, SLICE_PIXELS_PER_BATCH // math.prod(patch))
    return int(min(hi, max(lo, 2 ** int(math.log2(raw)))))


# ---------------------------------------------------------------- the choice


@dataclass
class BudgetPlan:
    """What :func:`choose_training` measured and chose; :meth:`lines` renders it."""

    device: str
    device_name: str
    threads: int
    minutes: float
    min_iterations: int
    measured: list[Measured]
    chosen: Measured
    reason: str
    timing_seconds: float
    warnings: list[str] = field(default_factory=list)

    def best(self, mode: str) -> Measured | None:
        """The measured candidate of ``mode`` with the most iterations (``None`` if none)."""
        runs = [m for m in self.measured if m.candidate.mode == mode]
        return max(runs, key=lambda m: m.iterations) if runs else None

    def lines(self) -> list[tuple[str, str]]:
        """``(key, value)`` rows for the plan's summary table."""
        rows = [
            ("device", f"{self.device_name}" + (f" ({self.threads} threads)" if self.device == "cpu" else "")),
            ("budget", f"{self.minutes:g} min of optimisation time (training.max_minutes)"),
        ]
        for m in self.measured:
            rows.append(("measured" if m is not self.chosen else "chosen", m.describe()))
        rows.append(("why", self.reason))
        rows.append(("expected", f"{_fmt_seconds(self.chosen.seconds_per_iteration)} per iteration, "
                                 f"about {self.chosen.iterations:,} iterations in {self.minutes:g} min"))
        rows.append(("timing took", f"{self.timing_seconds:.1f} s ({len(self.measured)} candidates)"))
        return rows

    def notes(self) -> list[str]:
        """Comment lines for the YAML: the measurements behind the values below."""
        out = [f"measured by `segfuse plan` on {self.device_name}"
               + (f", {self.threads} torch threads" if self.device == "cpu" else "")
               + f", budget {self.minutes:g} min of optimisation time:"]
        out += [f"  {m.describe()}" for m in self.measured]
        out.append(f"chosen: {self.chosen.candidate.describe()} -- {self.reason}")
        out += [f"WARNING: {w}" for w in self.warnings]
        return out


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when torch sees a GPU, else ``"cpu"``; ``"cuda"`` without one is an error."""
    if device not in ("auto", "cpu", "cuda"):
        raise SegfuseInputError(f"--device: expected auto, cpu or cuda, got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        built = torch.version.cuda or "no CUDA support"
        raise SegfuseInputError(
            f"--device cuda: torch {torch.__version__} (built with {built}) sees no CUDA device on this machine; "
            "plan for the CPU with --device cpu, or run `segfuse plan` on the GPU machine"
        )
    return device


def _candidate_config(cfg: Config, cand: Candidate, device: str) -> Config:
    """``cfg`` with ``cand``'s mode, network and batch (the model recipe of the hand-tuned configs)."""
    out = copy.deepcopy(cfg)
    three_d = cand.mode == "3d"
    out.model.mode = "3d" if three_d else "2d"
    out.model.context_slices = 0 if three_d else CONTEXT_SLICES
    out.model.aux_slice = planned_aux_slice(out.model.mode)
    out.model.encoder_depth = cand.depth
    out.model.widen_factor = cand.widen if three_d else 1.0
    out.model.stem_kernel = 3 if three_d else 7
    out.model.norm = "instance" if three_d else "batch"
    out.model.decoder_channels = cand.decoder_channels
    out.model.deep_supervision = True
    out.training.patch_size = list(cand.patch)
    out.training.batch_size = cand.batch
    out.training.device = device
    out.inference.roi_size = None
    out.inference.sw_batch_size = cand.batch
    return out


def choose_training(
    cfg: Config,
    report: PlanReport,
    *,
    device: str = "cpu",
    minutes: float = DEFAULT_MINUTES,
    mode: str = "auto",
    memory_budget_gb: float | None = 4.0,
    timing_seconds: float = TIMING_SECONDS,
    min_iterations: int = MIN_ITERATIONS,
    in_channels: int = 1,
) -> tuple[Config, BudgetPlan]:
    """Measure candidates on ``device`` and return the config of the chosen one and the :class:`BudgetPlan`.

    Args:
        cfg: the fingerprint's config (:func:`~segfuse.training.plan.plan_dataset`).
        report: its report (median shape, object extent, auxiliary scales).
        device: ``"cpu"`` or ``"cuda"`` (resolved, see :func:`resolve_device`).
        minutes: optimisation-time budget of the run.
        mode: ``"auto"`` (the rule), ``"3d"`` or ``"2d"`` (2.5D) to force one.
        memory_budget_gb: CPU memory limit of a candidate (GiB); on CUDA the
            free GPU memory decides.
        timing_seconds: soft limit on the time all measurements take.
        min_iterations: the bar of rule 3.
        in_channels: the primary scan's channels.
    """
    if minutes <= 0:
        raise SegfuseInputError(f"--minutes: must be positive, got {minutes}")
    if mode not in ("auto", "3d", "2d"):
        raise SegfuseInputError(f"mode: expected auto, 3d or 2d, got {mode!r}")
    started = time.perf_counter()
    budget_s = minutes * 60.0
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        limit = GPU_MEMORY_FRACTION * free
        device_name = torch.cuda.get_device_name()
        probe = PROBE_VOXELS_GPU
    else:
        limit = (memory_budget_gb or float("inf")) * 2**30
        device_name = "cpu"
        probe = PROBE_VOXELS_CPU
    measured: list[Measured] = []
    case_shape = report.median_shape

    def left() -> float:
        return timing_seconds - (time.perf_counter() - started)

    def measure(cand: Candidate) -> Measured:
        run_cfg = _candidate_config(cfg, cand, device)
        extent = report.object_extent or tuple(n / 2 for n in case_shape)
        timing = time_iteration(
            run_cfg, in_channels=in_channels, device=device, max_seconds=min(CANDIDATE_SECONDS, max(left(), 0.5)),
            probe_voxels=probe, case_shape=case_shape, object_extent=extent,
        )
        m = Measured(cand, timing, budget_s, limit)
        measured.append(m)
        logger.info("plan: %s", m.describe())
        return m

    def good(m: Measured | None) -> bool:
        return m is not None and m.fits_memory and m.iterations >= min_iterations

    patch3, depth3 = patch_for(report, (0, 1, 2))
    patch2, depth2 = patch_for(report, (0, 1))
    best3 = best2 = None
    if mode in ("auto", "3d"):
        if device == "cuda":  # rule 5: a larger patch first, when the GPU's memory takes it
            wide, wide_depth = patch_for(report, (0, 1, 2), CONTEXT_GPU)
            if wide != patch3:
                best3 = measure(Candidate("3d", wide, BATCH_3D, WIDTHS_3D[0], wide_depth))
                best3 = best3 if good(best3) else None
        best3 = best3 or measure(Candidate("3d", patch3, BATCH_3D, WIDTHS_3D[0], depth3))
    if mode in ("auto", "2d"):
        best2 = measure(Candidate("2.5d", patch2, slice_batch(patch2), 1.0, depth2))
    if best3 is not None and not good(best3):
        for widen in WIDTHS_3D[1:]:
            if left() <= 0:
                break
            m = measure(Candidate("3d", patch3, BATCH_3D, widen, depth3))
            best3 = m if (m.fits_memory, m.iterations) > (best3.fits_memory, best3.iterations) else best3
            if good(best3):
                break
    if best2 is not None and not good(best2) and not good(best3):
        while best2.candidate.batch > SLICE_BATCH_RANGE[0] and left() > 0 and not good(best2):
            c = best2.candidate
            m = measure(Candidate("2.5d", c.patch, c.batch // 2, c.widen, c.depth))
            best2 = m if m.iterations > best2.iterations else best2

    warnings: list[str] = []
    m3 = f"{best3.iterations:,}" if best3 is not None else "not measured"
    m2 = f"{best2.iterations:,}" if best2 is not None else "not measured"
    bar = f"{min_iterations:,}"
    if best3 is not None and (good(best3) or best2 is None):
        chosen = best3
        reason = (f"3D runs {m3} iterations in {_minutes(minutes)} here (at least {bar} wanted; full 3D context); "
                  f"2.5D would run {m2}" if mode == "auto" else f"3D asked for (--mode 3d): {m3} iterations")
    elif best2 is not None and (good(best2) or best3 is None or best2.iterations >= best3.iterations):
        chosen = best2
        reason = (f"3D would run {m3} iterations in {_minutes(minutes)} here (fewer than {bar}"
                  + ("" if best3 is None or best3.fits_memory else ", or over the memory limit")
                  + f"); 2.5D runs {m2}" if mode == "auto" else f"2.5D asked for (--mode 2d): {m2} iterations")
    else:
        chosen = best3
        reason = f"3D runs {m3} iterations in {_minutes(minutes)} here, more than 2.5D ({m2})"
    if chosen.iterations < min_iterations:
        warnings.append(
            f"only about {chosen.iterations:,} iterations fit in {_minutes(minutes)} on this machine (fewer than "
            f"{bar}); give it more time (--minutes), or a faster machine"
        )
    if not chosen.fits_memory:
        warnings.append(f"the chosen settings need about {chosen.timing.memory_bytes / 2**30:.1f} GiB, more than "
                        f"the {limit / 2**30:.1f} GiB limit")

    if device == "cuda":  # rule 5: grow the batch while the GPU is not yet busy
        while left() > 0 and chosen.candidate.batch * 2 <= GPU_MAX_BATCH:
            c = chosen.candidate
            fixed = chosen.timing.parameter_bytes  # activations double with the batch, parameter state does not
            if fixed + 2 * (chosen.timing.memory_bytes - fixed) > limit:
                break
            m = measure(Candidate(c.mode, c.patch, c.batch * 2, c.widen, c.depth))
            if not (m.fits_memory and m.iterations >= min_iterations
                    and m.samples_per_second >= GPU_BUSY_GAIN * chosen.samples_per_second):
                break
            chosen = m
            reason += f"; batch {m.candidate.batch}: samples per second still rising"

    out = _candidate_config(cfg, chosen.candidate, device)
    _set_schedule(out, chosen, minutes)
    # the fingerprint's table shows the chosen values
    report.patch_size, report.batch_size = tuple(chosen.candidate.patch), chosen.candidate.batch
    report.encoder_depth = chosen.candidate.depth
    report.memory_gb, report.memory_budget_gb = chosen.timing.memory_bytes / 2**30, limit / 2**30
    out = config_from_dict(out.to_dict())
    plan = BudgetPlan(
        device=device, device_name=device_name, threads=torch.get_num_threads(), minutes=minutes,
        min_iterations=min_iterations, measured=measured, chosen=chosen, reason=reason,
        timing_seconds=time.perf_counter() - started, warnings=warnings,
    )
    for w in warnings:
        logger.warning(w)
    return out, plan


def _set_schedule(cfg: Config, chosen: Measured, minutes: float) -> None:
    """Training length from the budget: poly decay over ``minutes``; the iteration cap well above the estimate."""
    expected = max(1, chosen.iterations)
    t = cfg.training
    t.schedule = "time"
    t.max_minutes = float(minutes)
    t.iterations = max(1000, 10 * _round_to(expected, 1000))
    t.iterations_per_epoch = max(10, _round_to(expected / 6, 50 if expected >= 300 else 10))
    t.warmup_iterations = min(50, expected // 10)
    t.lr = 0.003
    t.foreground_fraction = 0.5


def _round_to(value: float, step: int) -> int:
    return max(step, round(value / step) * step)


def key_comments(cfg: Config, plan: BudgetPlan) -> dict[str, str]:
    """Comments for the YAML lines of the values the plan chose."""
    c, m = plan.chosen.candidate, plan.chosen
    per_it = f"{_fmt_seconds(m.seconds_per_iteration)}/iteration measured"
    return {
        "model.mode": "2d with context_slices 1 = 2.5D; chosen by `segfuse plan`: " + plan.reason,
        "model.aux_slice": "2.5D: each auxiliary interpolated to the slice's position (the fusion study's choice)"
        if c.mode != "3d" else "3D: unused",
        "model.encoder_depth": "3 below 32 voxels on a patch axis, 5 from 160, else 4",
        "model.widen_factor": "3D only: 0.5 = half-width ResNet18; 0.25 is ~3x cheaper" if c.mode == "3d"
        else "must be 1.0 in 2D (smp's ResNet18)",
        "training.patch_size": f"covers the median labelled object x {CONTEXT:g} ({per_it})",
        "training.batch_size": f"{per_it} at this batch",
        "training.iterations": "a cap: the time budget ends the run (schedule: time)",
        "training.max_minutes": f"the budget: about {m.iterations:,} iterations at {per_it}",
        "training.schedule": "poly decay over max_minutes",
    }


# ------------------------------------------------------------------ the verb


def _primary_channels(cfg: Config) -> int:
    """Channels of the first case's primary scan (a 4D NIfTI/MHA holds several)."""
    from segfuse.data.layouts import read_dataset
    from segfuse.io.image import read_image

    dataset = read_dataset(cfg.data.dataset, primary=cfg.data.primary, aux=list(cfg.data.aux))
    ref = dataset.cases[0].primary
    if ref.channel is not None:
        return 1
    name = ref.path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        shape = nib.load(str(ref.path)).shape
    else:
        shape = read_image(ref.path).array.shape
    return int(shape[3]) if len(shape) == 4 else 1


def plan_for_budget(
    source: Path | str,
    *,
    primary: str | None = None,
    aux: Sequence[str] | None = None,
    device: str = "auto",
    minutes: float | None = None,
    mode: str = "auto",
    memory_budget_gb: float = 4.0,
    timing_seconds: float = TIMING_SECONDS,
    min_iterations: int = MIN_ITERATIONS,
    out: Path | None = None,
    progress: bool = True,
) -> tuple[Config, PlanReport, BudgetPlan]:
    """``segfuse plan``: fingerprint ``source``, measure candidates on ``device``, choose, write ``out``.

    Returns ``(config, fingerprint report, budget plan)``; ``config`` is what
    ``out`` loads back to. See the module docstring for the rule.

    Raises:
        SegfuseInputError: the fingerprint's input errors; ``device="cuda"`` on a
            machine where torch sees no GPU; a non-positive budget.
    """
    resolved = resolve_device(device)  # before reading any case: a wrong device fails at once
    minutes = DEFAULT_MINUTES if minutes is None else float(minutes)
    if minutes <= 0:
        raise SegfuseInputError(f"--minutes: must be positive, got {minutes}")
    cfg, report = plan_dataset(source, primary=primary, aux=aux, memory_budget_gb=memory_budget_gb,
                               progress=progress)
    cfg, budget = choose_training(
        cfg, report, device=resolved, minutes=minutes, mode=mode,
        memory_budget_gb=memory_budget_gb if resolved == "cpu" else None,
        timing_seconds=timing_seconds, min_iterations=min_iterations, in_channels=_primary_channels(cfg),
    )
    source_path = Path(report.dataset)
    stem = source_path.parent.name if source_path.stem in ("dataset", "manifest") else source_path.stem
    cfg.experiment.name = f"{stem}_{cfg.model.mode}"  # as the README's walk-through names runs
    if out is not None:
        write_plan(cfg, Path(out), report.dataset, notes=budget.notes(), key_comments=key_comments(cfg, budget))
    return cfg, report, budget
