"""Build training batches ahead of the optimiser, in worker threads.

On a GPU the network step is fast and sampling + augmentation on the CPU becomes
the bottleneck (measured on an H200: 40 % of every iteration at batch 2, 72 % at
batch 8, see ``docs/benchmarks.md`` §4). :class:`BatchPrefetcher` keeps the next
few batches in flight so the GPU does not wait for them.

Threads rather than processes: the padded training cases are shared without
copies or pickling, and the work (numpy slicing, MONAI's ``Affine`` on torch,
albumentations on OpenCV) spends its time in native code that releases the GIL.

Batches do not depend on the number of workers: ``build(iteration)`` gets each
iteration's own random generator (:func:`iteration_rng`), so ``num_workers`` 0
and 8 train on exactly the same batches, and a resumed run draws exactly what
the uninterrupted run would have drawn.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


def iteration_rng(seed: int, rank: int, iteration: int) -> np.random.Generator:
    """The sampling generator of one training iteration: a function of its arguments alone."""
    return np.random.default_rng([seed, rank, iteration])


def resolve_workers(num_workers: int | None, device_type: str) -> int:
    """``training.num_workers`` as a count: ``None`` (auto) is 0 on CPU, up to 8 threads beside a GPU.

    On CPU the network step already uses every core, so building batches in other
    threads only competes with it; beside a GPU the cores are otherwise idle.
    """
    if num_workers is not None:
        return num_workers
    if device_type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class BatchPrefetcher(Generic[T]):
    """Yields ``build(start)``, ``build(start + 1)``, … in order, built ``depth`` ahead by ``workers`` threads.

    With ``workers == 0`` each batch is built on demand in the calling thread (no
    threads, no look-ahead). An exception raised while building a batch is
    re-raised by :meth:`next` for that batch. Use as a context manager, so that
    batches still in flight are cancelled or awaited when training stops.

    Args:
        build: ``iteration -> batch``; must depend on the iteration alone
            (draw from :func:`iteration_rng`), since batches are built out of order.
        start: the first iteration to build (the resumed iteration count).
        workers: threads building batches; 0 builds synchronously.
        depth: batches in flight (default ``2 * workers``).
    """

    def __init__(self, build: Callable[[int], T], start: int, workers: int, depth: int | None = None) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self._build = build
        self._next = start  # the iteration the next call of next() returns
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="segfuse-batch") if workers else None
        self._depth = max(1, depth if depth is not None else 2 * workers)
        self._pending: deque[Future[T]] = deque()
        self._submitted = start
        if self._pool is not None:
            for _ in range(self._depth):
                self._submit()

    def _submit(self) -> None:
        assert self._pool is not None
        self._pending.append(self._pool.submit(self._build, self._submitted))
        self._submitted += 1

    def next(self) -> T:
        """The batch of the next iteration (waits for it if it is not built yet)."""
        iteration = self._next
        self._next += 1
        if self._pool is None:
            return self._build(iteration)
        future = self._pending.popleft()
        self._submit()
        return future.result()

    def close(self) -> None:
        """Cancel batches not started; wait for those being built."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pending.clear()
            self._pool = None

    def __enter__(self) -> BatchPrefetcher[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
