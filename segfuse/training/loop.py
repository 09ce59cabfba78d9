"""``segfuse train``: the training loop, validation, checkpoints and resume.

Behaviour is set by the config (no subclassing): DiceCE loss (MONAI; Dice + BCE
with a sigmoid per region when ``data.regions`` is set), optional
deep supervision, AdamW or SGD with warm-up and poly decay, gradient clipping,
AMP on CUDA, validation with sliding-window inference and MONAI's DiceMetric,
``checkpoint_best.pt`` and ``checkpoint_last.pt``, and a run folder with the
resolved config, ``metrics.csv``, TensorBoard events and ``training_curve.png``.

Cases come from the preprocessed store (:mod:`segfuse.data.store`), built or
updated on the first call and shared by every DDP rank; patches are read from its
memory-mapped files, so no process holds the dataset.
Checkpoints hold weights, config, optimizer, scheduler, scaler and torch's RNG
states; each iteration's batch is drawn from its own generator, seeded by
(seed, rank, iteration), so ``train(..., resume=True)`` continues an interrupted
run with the batches the uninterrupted run would have drawn; on CPU with
``experiment.deterministic`` the result is bit-identical. Batches are built
``training.num_workers`` processes ahead of the optimiser (:mod:`segfuse.training.prefetch`);
the count changes speed, never the batches.
Ctrl-C or SIGTERM saves a checkpoint and returns cleanly. Under ``torchrun``
each process trains on its own samples with DistributedDataParallel (NCCL on
GPU, gloo on CPU); rank 0 alone validates, logs and writes.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from segfuse.auxiliary import aux_scales, lcm_of_scales
from segfuse.config import Config, config_from_dict, save_config
from segfuse.data.layouts import read_dataset, split_cases
from segfuse.data.preprocess import PreparedCase
from segfuse.data.sampling import PaddedCase
from segfuse.data.splits import fold_cases, write_dataset_splits
from segfuse.data.store import StoredCase
from segfuse.factory import build_model
from segfuse.inference.engine import predict_prepared
from segfuse.io.atomic import remove_stale_temporaries
from segfuse.io.checkpoint import load_checkpoint, save_checkpoint
from segfuse.io.errors import SegfuseInputError
from segfuse.machine import machine_line
from segfuse.training.batches import augmentation_margin, iteration_batch
from segfuse.training.logging import RunLogger
from segfuse.training.losses import build_loss
from segfuse.training.prefetch import BatchPrefetcher, resolve_workers
from segfuse.training.shared_store import shared_store
from segfuse.training.speed_check import SpeedCheck
from segfuse.training.step import Batch, TrainingParts, optimisation_step

log = logging.getLogger("segfuse.train")


@dataclass
class TrainResult:
    """Where the run lives and how it ended."""

    run_dir: Path
    iteration: int
    best_metric: float
    interrupted: bool
    history: list[dict[str, Any]]


# -- set-up -------------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SegfuseInputError(f"config key training.device: {name!r} requested but no CUDA device is available")
    return torch.device(name)


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _lr_lambda(cfg: Config):
    total, warmup, power = cfg.training.iterations, cfg.training.warmup_iterations, cfg.training.poly_power

    def factor(it: int) -> float:
        if warmup and it < warmup:
            return (it + 1) / warmup
        return max(0.0, 1.0 - (it - warmup) / max(1, total - warmup)) ** power

    return factor


def _time_factor(cfg: Config, iteration: int, train_seconds: float) -> float:
    """Warm-up in iterations, then poly decay over the fraction of the time budget spent."""
    warmup, power = cfg.training.warmup_iterations, cfg.training.poly_power
    if warmup and iteration < warmup:
        return (iteration + 1) / warmup
    return max(0.0, 1.0 - train_seconds / (cfg.training.max_minutes * 60)) ** power


def make_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum (``training.optimizer``), at ``training.lr``."""
    t = cfg.training
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, nesterov=True, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def load_cases(cfg: Config, progress: bool, rank: int = 0) -> tuple[list[StoredCase], list[StoredCase], Config]:
    """Read the dataset, fill in labels, split, and have every case in the preprocessed store (built when missing)."""
    dataset = read_dataset(cfg.data.dataset, primary=cfg.data.primary, aux=list(cfg.data.aux))
    if not cfg.data.labels:
        cfg.data.labels = dict(dataset.labels)
    if cfg.data.primary is None:
        cfg.data.primary = dataset.primary_name
    if cfg.data.modalities is None:
        cfg.data.modalities = list(dataset.modalities)
    cases = dataset.cases
    if cfg.data.val_cases is not None:
        chosen = set(cfg.data.val_cases)
        unknown = sorted(chosen - {c.case_id for c in cases})
        if unknown:
            raise SegfuseInputError(f"config key data.val_cases: unknown case ids {unknown}")
        train_cases = [c for c in cases if c.case_id not in chosen]
        val_cases = [c for c in cases if c.case_id in chosen]
    elif cfg.data.fold is not None:
        train_cases, val_cases = fold_cases(cases, cfg.data.folds, cfg.data.fold, cfg.data.split_seed)
    else:
        train_cases, val_cases = split_cases(cases, cfg.data.val_fraction, cfg.data.split_seed)
    if cfg.training.val_every == 0:
        val_cases = []  # held out of training and never validated (the store still holds them)
    store = shared_store(cfg, dataset.cases, progress, rank)  # the whole dataset: one store for every split
    return [store.cases[c.case_id] for c in train_cases], [store.cases[c.case_id] for c in val_cases], cfg


def training_views(cfg: Config, cases: list[StoredCase]) -> tuple[list[PaddedCase], list[int]]:
    """The training cases as padded views over the store's memory-mapped files (no copies), and the margin."""
    scales = aux_scales(cfg.data.aux)
    lcm = lcm_of_scales(scales)
    margin = augmentation_margin(cfg, lcm)
    if cfg.spatial_dims == 3:
        return [c.padded(scales, cfg.training.patch_size, margin) for c in cases], margin
    plane_patch = [*cfg.training.patch_size, lcm[2]]
    return [c.padded(scales, plane_patch, [*margin, 0]) for c in cases], margin


def _to_device(batch: Batch, device: torch.device) -> Batch:
    """``batch`` on ``device``; copies to a GPU are asynchronous (from pinned memory)."""
    x, aux, present, y = batch
    non_blocking = device.type == "cuda"

    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(device, non_blocking=non_blocking)

    return move(x), {k: move(v) for k, v in aux.items()}, {k: move(v) for k, v in present.items()}, move(y)


def validate(
    model: torch.nn.Module, cfg: Config, cases: list[PreparedCase | StoredCase], device: torch.device
) -> dict[str, float]:
    """Mean Dice per foreground class (or per region) over ``cases`` (sliding-window inference, MONAI Dice).

    A stored case is read from the store when its turn comes, so one case at a time is in memory.
    """
    # MONAI's functional Dice: its DiceMetric class would all-gather across ranks,
    # and only rank 0 validates.
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    from segfuse.training.losses import class_indices

    num_classes = max(len(cfg.data.labels), 2)
    regions = cfg.data.regions
    model.eval()
    scores = []
    for case in cases:
        if isinstance(case, StoredCase):
            case = case.load()
        probabilities = predict_prepared(model, cfg, case, device=device, mirror_axes=[])
        ref = torch.from_numpy(case.label.astype(np.int64))[None, None]
        if regions:  # one sigmoid per region: Dice of each thresholded region against its multi-hot target
            from segfuse.data.regions import THRESHOLD, region_targets

            pred_regions = (probabilities[None] > THRESHOLD).float()
            scores.append(compute_dice(pred_regions, region_targets(ref, regions), include_background=True,
                                       ignore_empty=True)[0])
            continue
        pred = probabilities.argmax(0)[None, None]
        ref = class_indices(ref, sorted(cfg.data.labels) if cfg.data.labels else [0, 1])
        scores.append(compute_dice(one_hot(pred, num_classes), one_hot(ref, num_classes), include_background=False,
                                   ignore_empty=True)[0])
    per_class = torch.nanmean(torch.stack(scores), dim=0).tolist()
    model.train()
    names = list(regions) if regions else [cfg.data.labels[k] for k in sorted(cfg.data.labels) if k != 0]
    row = {f"val_dice_{n}": float(v) for n, v in zip(names, per_class, strict=False)}
    valid = [v for v in per_class if not math.isnan(v)]
    row["val_mean_dice"] = float(np.mean(valid)) if valid else float("nan")
    return row


class _StopFlag:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:
        self.requested = True
        log.warning("signal %s received: saving a checkpoint and stopping after this iteration", signum)


@contextmanager
def _signals(flag: _StopFlag):
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in previous:
            signal.signal(s, flag)
    except ValueError:  # not in the main thread: leave signals alone
        previous = {}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# -- checkpoints ---------------------------------------------------------------------------


@dataclass
class Progress:
    """Where a run stands: saved in every checkpoint, restored by ``--resume``.

    ``running``: ``[sum of losses, iterations]`` since the last logged row;
    ``train_seconds``: optimisation time so far (the time budget counts it alone).
    """

    iteration: int = 0
    best: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)
    running: list[float] = field(default_factory=lambda: [0.0, 0])
    train_seconds: float = 0.0


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    # batches need no saved state (iteration_rng); a "numpy" entry from older checkpoints is ignored
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_states(world: int, gather: bool = True) -> Any:
    """This process's torch RNG states; under DDP (``gather``) every rank's, a list by rank (a collective)."""
    states: Any = _rng_state()
    if world > 1 and gather:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, states)
        states = gathered
    return states


def checkpoint_state(
    parts: TrainingParts, cfg: Config, in_channels: int, progress: Progress, rng: Any
) -> dict[str, Any]:
    """Everything a checkpoint holds: weights, config, optimiser, scheduler, scaler, RNG and :class:`Progress`."""
    return {
        "model": parts.model.state_dict(),
        "config": cfg.to_dict(),
        "in_channels": in_channels,
        "iteration": progress.iteration,
        "epoch": progress.iteration // cfg.training.iterations_per_epoch,
        "best_metric": progress.best,
        "history": progress.history,
        "running": progress.running,
        "train_seconds": progress.train_seconds,
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "rng": rng,
    }


def resume_state(run_dir: str | Path | None) -> dict[str, Any]:
    """The checkpoint ``run_dir/checkpoint_last.pt`` of an interrupted run (stale temporary files removed)."""
    if run_dir is None:
        raise SegfuseInputError("resume needs the run folder (segfuse train --resume RUN_DIR)")
    for stale in remove_stale_temporaries(run_dir):  # a checkpoint write cut short by a kill
        log.info("removed %s, left by an interrupted run", stale)
    return load_checkpoint(Path(run_dir) / "checkpoint_last.pt")


def restore(parts: TrainingParts, state: dict[str, Any], rank: int) -> Progress:
    """Load a checkpoint's weights, optimiser, scheduler, scaler and RNG into ``parts``; return its progress."""
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    parts.scaler.load_state_dict(state["scaler"])
    _restore_rng(state["rng"][rank] if isinstance(state["rng"], list) else state["rng"])
    return Progress(
        iteration=state["iteration"],
        best=state["best_metric"],
        history=list(state["history"]),
        running=list(state.get("running", [0.0, 0])),
        train_seconds=float(state.get("train_seconds", 0.0)),
    )


# -- the run ----------------------------------------------------------------------------------


def _run_dir(cfg: Config, run_dir: Path | None, resume: bool) -> Path:
    path = Path(run_dir) if run_dir is not None else Path(cfg.experiment.output_dir) / cfg.experiment.name
    if run_dir is None and cfg.data.fold is not None:
        path = path / f"fold_{cfg.data.fold}"  # one run folder per fold, beside its siblings
    if not resume and (path / "checkpoint_last.pt").exists():
        raise SegfuseInputError(
            f"{path}: a run already exists here; continue it with --resume {path}, or choose another "
            "experiment.name / --run-dir"
        )
    return path


def start_process(cfg: Config) -> tuple[int, int, torch.device]:
    """``(rank, world size, device)``: process group under ``torchrun``, threads, determinism, seed."""
    rank, world = _distributed()
    device = _device(cfg.training.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    if cfg.experiment.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(cfg.experiment.seed + rank)
    return rank, world, device


def build_training(cfg: Config, in_channels: int, device: torch.device) -> TrainingParts:
    """The network the config describes on ``device``, its optimiser, warm-up/poly schedule, scaler and loss."""
    model = build_model(cfg, in_channels=in_channels).to(device)
    optimizer = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    return TrainingParts.of(model, optimizer, build_loss(cfg), device, amp=cfg.training.amp, scheduler=scheduler,
                            decode_without_aux=cfg.training.decode_without_aux,
                            absent_drops=cfg.training.decode_without_aux_drops)


def _distribute(parts: TrainingParts, world: int) -> None:
    """Under ``torchrun``: the forward pass through DistributedDataParallel."""
    if world > 1:
        device_ids = [parts.device.index] if parts.device.type == "cuda" else None
        parts.net = torch.nn.parallel.DistributedDataParallel(parts.model, device_ids=device_ids)


def _progress_bar(cfg: Config, progress: Progress, disable: bool) -> tqdm:
    """Iterations, or with ``schedule: time`` seconds of the budget (the budget, not the cap, decides the end)."""
    if cfg.training.schedule == "time":
        return tqdm(total=round(cfg.training.max_minutes * 60), initial=round(progress.train_seconds),
                    desc="training", unit="s", disable=disable,
                    bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s budget [{elapsed}<{remaining}{postfix}]")
    return tqdm(total=cfg.training.iterations, initial=progress.iteration, desc="training", unit="it",
                disable=disable)


def train(
    cfg: Config | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    interrupt_at: int | None = None,
) -> TrainResult:
    """Train a FusionUNet as ``cfg`` says; returns where the run lives.

    The steps, in order: read the checkpoint to resume (:func:`resume_state`), start
    the process (:func:`start_process`), the data (:func:`load_cases`,
    :func:`training_views`), build (:func:`build_training`, :func:`restore`), then per
    iteration a batch (:func:`~segfuse.training.batches.iteration_batch`) and one optimisation step
    (:func:`~segfuse.training.step.optimisation_step`); at each epoch's end validation
    (:func:`validate`) and checkpoints (:func:`checkpoint_state`).

    Args:
        cfg: the run config (``None`` with ``resume``: the checkpoint's config is used).
        run_dir: run folder (default ``experiment.output_dir / experiment.name``).
        resume: continue from ``run_dir/checkpoint_last.pt``.
        progress: show progress bars.
        interrupt_at: stop after this iteration as if interrupted (used by tests
            and the benchmark to exercise resume).
    """
    state = None
    if resume:
        state = resume_state(run_dir)
        cfg = config_from_dict(state["config"])
    if cfg is None:
        raise SegfuseInputError("train needs a config (--config FILE) or --resume RUN_DIR")
    run_path = _run_dir(cfg, run_dir, resume)
    rank, world, device = start_process(cfg)

    train_cases, val_cases, cfg = load_cases(cfg, progress, rank)
    if not train_cases:
        raise SegfuseInputError(f"{cfg.data.dataset}: no training cases after the validation split")
    padded, margin = training_views(cfg, train_cases)

    in_channels = train_cases[0].channels
    parts = build_training(cfg, in_channels, device)
    status = restore(parts, state, rank) if state is not None else Progress()
    _distribute(parts, world)

    is_main = rank == 0
    logger = None
    if is_main:
        run_path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_path / "config.yaml")
        if cfg.data.fold is not None:
            write_dataset_splits(run_path, cfg)
        logger = RunLogger(run_path, status.history)
        log.info("run folder %s: %d training and %d validation cases, %s, %d parameters, from iteration %d",
                 run_path, len(train_cases), len(val_cases), device, sum(p.numel() for p in parts.model.parameters()),
                 status.iteration)
        log.info("machine: %s", machine_line())  # train.log keeps one line per start: a resumed run may move

    def checkpoint(name: str, gather: bool = True) -> None:
        rng = rng_states(world, gather)
        if is_main:
            status.history = logger.history if logger else []
            save_checkpoint(checkpoint_state(parts, cfg, in_channels, status, rng), run_path / name)

    flag = _StopFlag()
    total = cfg.training.iterations
    started = time.monotonic()
    # the budget counts optimisation time only; validation and checkpoints are extra
    budget = cfg.training.max_minutes * 60 if cfg.training.max_minutes else None
    by_time = cfg.training.schedule == "time"
    bar = _progress_bar(cfg, status, disable=not progress or not is_main)
    parts.model.train()
    pin = device.type == "cuda"
    workers = resolve_workers(cfg.training.num_workers, device.type)

    done_fraction = min(status.train_seconds / budget, 1.0) if by_time else status.iteration / max(1, total)
    pending_snapshots = sorted(f for f in cfg.training.snapshots if f > done_fraction)

    build = functools.partial(iteration_batch, padded, cfg, margin, cfg.experiment.seed, rank)
    speed_check = SpeedCheck(cfg, enabled=is_main)  # warns when the speed leaves too few iterations
    with _signals(flag), BatchPrefetcher(build, start=status.iteration, workers=workers, pin=pin) as batches:
        while status.iteration < total:
            step_started = time.monotonic()
            if by_time:
                for group in parts.optimizer.param_groups:
                    group["lr"] = cfg.training.lr * _time_factor(cfg, status.iteration, status.train_seconds)
            loss = optimisation_step(parts, _to_device(batches.next(), device), grad_clip=cfg.training.grad_clip)
            if not by_time:
                parts.scheduler.step()
            status.iteration += 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            status.train_seconds += time.monotonic() - step_started
            speed_check(status.iteration, status.train_seconds)
            status.running[0] += float(loss.detach())
            status.running[1] += 1
            bar.update(min(status.train_seconds, budget) - bar.n if by_time else 1)
            bar.set_postfix(
                it=status.iteration,
                loss=f"{status.running[0] / max(1, status.running[1]):.3f}",
                lr=f"{parts.optimizer.param_groups[0]['lr']:.2e}",
                s_per_it=f"{status.train_seconds / max(1, status.iteration):.2f}",
            )

            progress_done = min(status.train_seconds / budget, 1.0) if by_time else status.iteration / total
            for fraction in pending_snapshots[:]:
                if progress_done >= fraction:  # weights part-way through the run (training.snapshots)
                    pending_snapshots.remove(fraction)
                    checkpoint(f"checkpoint_{round(fraction * 100):03d}pct.pt", gather=False)
            epoch_end = status.iteration % cfg.training.iterations_per_epoch == 0 or status.iteration == total
            out_of_time = budget is not None and status.train_seconds > budget
            stop = flag.requested or out_of_time or (interrupt_at is not None and status.iteration >= interrupt_at)
            if world > 1:  # every rank must take the same branch, or collectives deadlock
                decision = torch.tensor([float(stop), float(out_of_time)], device=device)
                dist.all_reduce(decision, op=dist.ReduceOp.MAX)
                stop, out_of_time = bool(decision[0]), bool(decision[1])
            if epoch_end or out_of_time:
                epoch = math.ceil(status.iteration / cfg.training.iterations_per_epoch)
                row: dict[str, Any] = {
                    "epoch": epoch,
                    "iteration": status.iteration,
                    "lr": parts.optimizer.param_groups[0]["lr"],
                    "train_loss": status.running[0] / max(1, status.running[1]),
                    "train_s": round(status.train_seconds, 2),
                    "elapsed_s": round(time.monotonic() - started, 2),
                }
                status.running = [0.0, 0]
                # val_every 0 leaves val_cases empty (load_cases), so it never validates here
                is_val = val_cases and (epoch % cfg.training.val_every == 0 or status.iteration == total or out_of_time)
                if is_main and is_val:
                    row.update(validate(parts.model, cfg, val_cases, device))
                    if row["val_mean_dice"] > status.best:
                        status.best = row["val_mean_dice"]
                        checkpoint("checkpoint_best.pt", gather=False)
                        log.info("checkpoint_best.pt: validation mean Dice %.4f at iteration %d", status.best,
                                 status.iteration)
                if is_main:
                    logger.log(row)
                if world > 1:
                    dist.barrier()
                checkpoint("checkpoint_last.pt")
            elif stop:
                checkpoint("checkpoint_last.pt")
            if stop:
                break
    bar.close()
    if not val_cases and is_main:
        # no validation (no cases, or val_every 0): the last weights are the best we know
        checkpoint("checkpoint_best.pt", gather=False)
    # reaching the time budget is a normal end; anything else short of `total` is an interruption
    interrupted = status.iteration < total and not (budget is not None and status.train_seconds > budget)
    if interrupted and is_main:
        log.warning("training stopped at iteration %d of %d; continue with: segfuse train --resume %s",
                    status.iteration, total, run_path)
    elif is_main:
        best = f"best validation mean Dice {status.best:.4f}" if status.best >= 0 else "no validation was run"
        log.info("finished %d iterations in %.1f s of training; %s", status.iteration, status.train_seconds, best)
    if logger:
        logger.close()
    return TrainResult(run_path, status.iteration, status.best, interrupted, logger.history if logger else [])
