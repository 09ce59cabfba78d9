"""One preprocessed store for every rank of a distributed run.

Rank 0 builds or updates the store (:func:`segfuse.data.store.build_store`) while
the other ranks wait on a barrier, then every rank opens the same folder: no rank
prepares a case twice and none keeps a copy. The barrier runs on a gloo group of
its own with a long timeout, because building a large store can take longer than
the default group's 30 minutes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

import torch.distributed as dist

from segfuse.data.cases import Case
from segfuse.data.store import Store, build_store, open_store

log = logging.getLogger("segfuse.train")

#: How long the other ranks wait for rank 0 to build the store.
STORE_WAIT = timedelta(hours=24)


def shared_store(cfg, cases: Sequence[Case], progress: bool, rank: int = 0) -> Store:
    """The store holding ``cases`` as ``cfg`` prepares them; built by rank 0, opened by every rank."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world == 1:
        return _build(cfg, cases, progress)
    group = dist.new_group(backend="gloo", timeout=STORE_WAIT)
    try:
        if rank == 0:
            try:
                return _build(cfg, cases, progress)
            finally:  # released even when the build fails: the others then fail to open it, with a message
                dist.barrier(group=group)
        dist.barrier(group=group)
        return open_store(cfg, cases)
    finally:
        dist.destroy_process_group(group)


def _build(cfg, cases: Sequence[Case], progress: bool) -> Store:
    store, report = build_store(cfg, cases, progress=progress)
    log.info("%s", report.summary())
    return store
