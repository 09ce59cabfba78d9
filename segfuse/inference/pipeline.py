"""Batch prediction that keeps the network busy: cases read ahead, results written behind.

Predicting case after case leaves the network idle while each case is read and
preprocessed and while its results are resampled to the input grid, written and
hashed. :func:`run_pipelined` overlaps the three::

    readers (workers)     prepare case k+1 … k+workers      threads or processes
    network (one case)    case k                             under a lock
    writer                case k-1: input grid, argmax, label/probability/QC files, SHA-256

Every case still goes through :func:`segfuse.inference.case.predict_case`, so
outputs, their atomic all-or-nothing writing and its error messages are those of
the sequential path: the pipeline hands it the case prepared in the background
(its ``prepare``) and a lock that lets one case at a time run the network (its
``network_lock``); preparing and writing happen outside the lock. Two cases are
inside ``predict_case`` at a time (the one on the network or waiting for it, the
one writing) and ``workers`` more are being prepared or wait prepared: at most
``workers + 2`` cases in memory (3 with the default ``workers=1``, against 1 one
case after the other), however many cases there are. Results come back in the
order of the cases.

Threads or processes for the readers (``kind``): reading is gzip inflation,
numpy and MONAI/torch resampling, native code that mostly releases the GIL.
Measured on a BraTS case (240 × 240 × 155 T1 + 2 × 2 × 4 mm FLAIR, 2-core VM,
one torch thread): while ``prepare_case`` ran in a thread, a pure-Python loop in
the main thread kept 95 % of its speed (90 % beside writing a label and a
probability map), so threads barely slow the thread that feeds the network. Threads share the prepared arrays
without copies; processes pickle every prepared case back (70 MB for that case)
and each starts its own interpreter (torch and MONAI imported again). Threads are
the default; ``kind="process"`` remains for preprocessing that holds the GIL.
``benchmarks/predict_pipeline.py`` times both against the sequential path.

Example:
    >>> for case, outcome in run_pipelined(cases, read, run, workers=1):  # doctest: +SKIP
    ...     print(case.case_id, outcome)
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import TypeVar

from segfuse.data.cases import Case
from segfuse.data.preprocess import PreparedCase, Preprocessing, prepare_case

__all__ = ["RUNNING_CASES", "prepare_ahead", "prepare_planned", "run_pipelined", "run_sequential"]

T = TypeVar("T")
P = TypeVar("P")

#: Cases inside ``run`` at a time: one on the network, one writing its results.
RUNNING_CASES = 2


def prepare_ahead(case: Case, spec: Preprocessing, drop_aux: Collection[str] = ()) -> PreparedCase:
    """``case`` prepared as :func:`~segfuse.inference.case.predict_case` prepares it.

    ``predict_case`` prepares the case left after its auxiliary check, which removes
    the ``drop_aux`` names and names the case lacks; :func:`prepare_case` skips absent
    names and names that are not the model's anyway, so removing ``drop_aux`` here gives
    the same arrays. A top-level function, so that reader processes can run it.
    """
    kept = dataclasses.replace(case, aux={k: v for k, v in case.aux.items() if k not in drop_aux})
    return prepare_case(kept, spec, with_label=False)


def prepare_planned(case: Case, steps: Mapping[str, tuple[Preprocessing, Collection[str]]]) -> PreparedCase:
    """:func:`prepare_ahead` with the ``(spec, drop_aux)`` planned for ``case.case_id`` (each case its own model)."""
    spec, drop_aux = steps[case.case_id]
    return prepare_ahead(case, spec, drop_aux)


def _quiet_worker() -> None:
    """Reader processes: one torch thread each (as torch's DataLoader workers), beside the network's."""
    import torch

    torch.set_num_threads(1)


def _readers(kind: str, workers: int) -> Executor:
    if kind == "thread":
        return ThreadPoolExecutor(workers, thread_name_prefix="segfuse-read")
    # spawn: a forked child of a process that has run torch (OpenMP, CUDA) may hang.
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_quiet_worker)


def _waiter(future: Future[P]) -> Callable[[Case], P]:
    """``prepare(case)`` for ``run``: waits for the background read (and re-raises its exception)."""
    return lambda _case: future.result()


def _outcome(case: Case, future: Future[T]) -> tuple[Case, T | Exception]:
    try:
        return case, future.result()
    except Exception as exc:  # reported per case by the caller; the others go on
        return case, exc


def run_pipelined(
    cases: Sequence[Case],
    read: Callable[[Case], P],
    run: Callable[[Case, Callable[[Case], P], AbstractContextManager], T],
    *,
    workers: int = 1,
    kind: str = "thread",
) -> Iterator[tuple[Case, T | Exception]]:
    """Yield ``(case, run(case, prepared, network_lock))`` in case order, reading ``workers`` cases ahead.

    Args:
        cases: the cases, in the order results are yielded.
        read: ``case -> prepared`` (e.g. :func:`prepare_ahead` with its arguments bound);
            run by the readers, so a picklable top-level callable when ``kind="process"``.
        run: ``(case, prepare, network_lock) -> result``; ``prepare(case)`` returns the case's
            prepared form once read (re-raising the reader's exception), and ``network_lock``
            must be held while the network runs. Called in one of two runner threads.
        workers: readers, and cases prepared ahead of the one on the network (>= 1).
        kind: ``"thread"`` or ``"process"`` readers.

    Yields:
        ``(case, result)``, or ``(case, exception)`` when reading or running it raised; the
        other cases go on.

    Raises:
        ValueError: ``workers`` < 1 or an unknown ``kind``.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1 for the background pipeline, got {workers}")
    if kind not in ("thread", "process"):
        raise ValueError(f"kind must be 'thread' or 'process', got {kind!r}")
    lock = threading.Lock()
    readers = _readers(kind, workers)
    runners = ThreadPoolExecutor(RUNNING_CASES, thread_name_prefix="segfuse-case")
    reads: dict[int, Future[P]] = {}
    running: deque[tuple[Case, Future[T]]] = deque()
    submitted = 0
    try:
        for k, case in enumerate(cases):
            if len(running) == RUNNING_CASES:  # case k-2 finished: room for case k
                yield _outcome(*running.popleft())
            while submitted < len(cases) and submitted <= k + workers:
                reads[submitted] = readers.submit(read, cases[submitted])
                submitted += 1
            running.append((case, runners.submit(run, case, _waiter(reads.pop(k)), lock)))
        while running:
            yield _outcome(*running.popleft())
    finally:
        # Stopped early (an interrupt, or the caller broke off): cases not started are
        # dropped; the ones inside ``run`` finish, so their outputs are whole or absent.
        for future in reads.values():
            future.cancel()
        runners.shutdown(wait=True, cancel_futures=True)
        readers.shutdown(wait=True, cancel_futures=True)


def run_sequential(
    cases: Sequence[Case], run: Callable[[Case], T]
) -> Iterator[tuple[Case, T | Exception]]:
    """Yield ``(case, run(case))`` one case after the other: :func:`run_pipelined` without the background."""
    for case in cases:
        try:
            outcome: T | Exception = run(case)
        except Exception as exc:  # reported per case by the caller; the others go on
            outcome = exc
        yield case, outcome
        del outcome
