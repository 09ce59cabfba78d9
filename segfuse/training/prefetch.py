"""Build training batches ahead of the optimiser, in worker processes.

On a GPU the network step is fast and sampling + augmentation on the CPU becomes
the bottleneck (measured on an H200: 40 % of every iteration at batch 2, 72 % at
batch 8, see ``docs/benchmarks.md`` §4). :class:`BatchPrefetcher` keeps the next
few batches in flight so the GPU does not wait for them.

Processes (a ``torch.utils.data.DataLoader`` over an iteration-indexed dataset,
persistent workers, prefetching, pinned memory for a GPU): the training cases
are memory-mapped views of the preprocessed store (:mod:`segfuse.data.store`),
so a worker holds only the windows it reads, and sampling runs outside the
interpreter lock of the training process.

Batches do not depend on the number of workers: ``build(iteration)`` gets each
iteration's own random generator (:func:`iteration_rng`), so ``num_workers`` 0
and 8 train on exactly the same batches, and a resumed run draws exactly what
the uninterrupted run would have drawn.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np
from torch.utils.data import DataLoader, Dataset

T = TypeVar("T")


def iteration_rng(seed: int, rank: int, iteration: int) -> np.random.Generator:
    """The sampling generator of one training iteration: a function of its arguments alone."""
    return np.random.default_rng([seed, rank, iteration])


def resolve_workers(num_workers: int | None, device_type: str) -> int:
    """``training.num_workers`` as a count: ``None`` (auto) is 0 on CPU, up to 8 processes beside a GPU.

    On CPU the network step already uses every core, so building batches in other
    processes only competes with it; beside a GPU the cores are otherwise idle.
    """
    if num_workers is not None:
        return num_workers
    if device_type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class _Iterations(Dataset):
    """Item ``i`` is ``build(i)``: the batch of iteration ``i``."""

    def __init__(self, build: Callable[[int], Any]) -> None:
        self.build = build

    def __getitem__(self, iteration: int) -> Any:
        return self.build(iteration)


def _as_is(batch: Any) -> Any:
    return batch


def _worker_init(_: int) -> None:
    # Ctrl-C and SIGTERM are for the training process, which saves a checkpoint and then
    # stops the workers; a worker that died of them first would abort that save.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class BatchPrefetcher(Generic[T]):
    """Yields ``build(start)``, ``build(start + 1)``, … in order, built ``depth`` ahead by ``workers`` processes.

    With ``workers == 0`` each batch is built on demand in the calling process (no
    look-ahead). An exception raised while building a batch is re-raised by
    :meth:`next` for that batch. Use as a context manager, so that the workers stop
    when training stops.

    Args:
        build: ``iteration -> batch``; must depend on the iteration alone (draw from
            :func:`iteration_rng`), since batches are built out of order; picklable
            (a module-level function or a ``functools.partial`` of one) unless workers fork.
        start: the first iteration to build (the resumed iteration count).
        workers: processes building batches; 0 builds in this process.
        depth: batches in flight (default ``2 * workers``).
        pin: put the batch's tensors in pinned memory (for asynchronous copies to a GPU).
    """

    def __init__(
        self, build: Callable[[int], T], start: int, workers: int, depth: int | None = None, pin: bool = False
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        depth = max(1, depth if depth is not None else 2 * workers)
        loader = DataLoader(
            _Iterations(build),
            batch_size=None,
            sampler=itertools.count(start),
            num_workers=workers,
            collate_fn=_as_is,
            pin_memory=pin,
            prefetch_factor=max(1, -(-depth // workers)) if workers else None,
            persistent_workers=workers > 0,
            worker_init_fn=_worker_init if workers else None,
        )
        self._iter: Any = iter(loader)

    def next(self) -> T:
        """The batch of the next iteration (waits for it if it is not built yet)."""
        return next(self._iter)

    def close(self) -> None:
        """Stop the workers (batches in flight are dropped)."""
        if self._iter is not None:
            shutdown = getattr(self._iter, "_shutdown_workers", None)  # what the iterator's __del__ calls
            if shutdown is not None:
                shutdown()
            self._iter = None

    def __enter__(self) -> BatchPrefetcher[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
