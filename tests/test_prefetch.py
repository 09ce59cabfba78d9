"""Batch prefetching in worker processes: order, errors, shutdown (training with workers: tests/test_training.py)."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from segfuse.training.prefetch import BatchPrefetcher, iteration_rng, resolve_workers


def _slow_build(i: int) -> tuple[int, float]:
    """A batch that takes a random time to build, so worker threads finish out of order."""
    rng = iteration_rng(0, 0, i)
    time.sleep(float(rng.uniform(0.0, 0.02)))
    return i, float(rng.random())


@pytest.mark.parametrize("workers", [0, 1, 4])
def test_batches_come_in_iteration_order_and_do_not_depend_on_workers(workers):
    with BatchPrefetcher(_slow_build, start=5, workers=workers) as batches:
        got = [batches.next() for _ in range(12)]
    assert [i for i, _ in got] == list(range(5, 17))
    assert [v for _, v in got] == [_slow_build(i)[1] for i in range(5, 17)]


def test_iteration_rng_differs_by_seed_rank_and_iteration_and_repeats_exactly():
    draw = [iteration_rng(*key).random() for key in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]]
    assert len(set(draw)) == 4
    assert iteration_rng(3, 1, 7).random() == iteration_rng(3, 1, 7).random()


def test_an_error_building_a_batch_is_raised_for_that_batch():
    def build(i: int) -> int:
        if i == 3:
            raise ValueError("case7: label has NaNs")
        return i

    with BatchPrefetcher(build, start=0, workers=2) as batches:
        assert [batches.next() for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="case7"):
            batches.next()


def test_close_leaves_no_worker_threads_behind():
    with BatchPrefetcher(_slow_build, start=0, workers=3, depth=6) as batches:
        batches.next()
        assert len(multiprocessing.active_children()) == 3  # the workers are processes
    assert not [t for t in threading.enumerate() if t.name.startswith("segfuse-batch")]
    assert not multiprocessing.active_children()


def test_resolve_workers():
    assert resolve_workers(None, "cpu") == 0
    assert 1 <= resolve_workers(None, "cuda") <= 8
    assert resolve_workers(3, "cpu") == 3
    with pytest.raises(ValueError, match="workers must be >= 0"):
        BatchPrefetcher(_slow_build, start=0, workers=-1)
