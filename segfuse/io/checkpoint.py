"""Checkpoints: written atomically, read with ``weights_only=True`` only.

A segfuse checkpoint is a plain dict (tensors, numbers, strings, lists, dicts):

``format``      ``"segfuse-checkpoint-1"``
``model``       the network's ``state_dict``
``config``      the resolved run config (``Config.to_dict()``): rebuilds model and preprocessing
``in_channels`` channels of the primary scan
``epoch``, ``iteration``, ``best_metric``, ``history``
``optimizer``, ``scheduler``, ``scaler``, ``rng``  (training state, for ``--resume``)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from segfuse.io.atomic import atomic_torch_save
from segfuse.io.errors import SegfuseInputError

CHECKPOINT_FORMAT = "segfuse-checkpoint-1"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` (see the module docstring) atomically."""
    return atomic_torch_save({"format": CHECKPOINT_FORMAT, **state}, Path(path))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a segfuse checkpoint with ``weights_only=True``; clear errors for anything else."""
    path = Path(path)
    if path.is_dir():
        for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
            if (path / name).is_file():
                path = path / name
                break
    if not path.is_file():
        raise SegfuseInputError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise SegfuseInputError(f"{path}: not a readable segfuse checkpoint (weights_only load failed: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise SegfuseInputError(f"{path}: not a segfuse checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})")
    for key in ("model", "config"):
        if key not in state:
            raise SegfuseInputError(f"{path}: checkpoint lacks {key!r}")
    state["path"] = str(path)
    return state
