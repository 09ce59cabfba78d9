"""Which checkpoint files a path stands for: a checkpoint, a run folder, or a folder of fold runs.

- a checkpoint file: itself;
- a run folder: ``checkpoint_best.pt``, else ``checkpoint_last.pt`` (as everywhere);
- a folder of fold runs (``fold_0``, ``fold_1``, ...): each fold's
  ``checkpoint_last.pt`` — the final weights, the ones whose out-of-fold
  predictions ``segfuse cv-summary`` scored (a fold's ``checkpoint_best.pt`` was
  chosen on its own validation cases).

``segfuse predict --checkpoint A --checkpoint B`` (or ``--checkpoint RUNS/NAME``)
loads every file these name as one ensemble (:func:`segfuse.inference.model.load_model`).

Example:
    >>> expand_checkpoints(["runs/unet3d"])  # doctest: +SKIP
    [PosixPath('runs/unet3d/fold_0/checkpoint_last.pt'), ...]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from segfuse.io.errors import SegfuseInputError

__all__ = ["expand_checkpoints", "fold_run_dirs"]

_FOLD_DIR = re.compile(r"^fold_(\d+)$")
_CHECKPOINTS = ("checkpoint_best.pt", "checkpoint_last.pt")


def fold_run_dirs(folder: str | Path) -> list[Path]:
    """The ``fold_K`` run folders directly inside ``folder`` that hold a checkpoint, by fold number."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _FOLD_DIR.match(child.name)
        if match and child.is_dir() and any((child / n).is_file() for n in _CHECKPOINTS):
            found.append((int(match[1]), child))
    return [path for _, path in sorted(found)]


def expand_checkpoints(paths: Sequence[str | Path]) -> list[Path]:
    """Checkpoint files or run folders for ``paths`` (a folder of fold runs becomes each fold's last weights).

    Raises:
        SegfuseInputError: a path that is neither a checkpoint, a run folder nor a folder of fold runs.
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            out.append(path)
        elif path.is_dir() and any((path / n).is_file() for n in _CHECKPOINTS):
            out.append(path)  # a run folder: load_checkpoint picks best, then last
        elif folds := fold_run_dirs(path):
            out += [f / "checkpoint_last.pt" if (f / "checkpoint_last.pt").is_file() else f for f in folds]
        else:
            raise SegfuseInputError(
                f"{path}: not a checkpoint file, a run folder (checkpoint_best.pt / checkpoint_last.pt) "
                "or a folder of fold runs (fold_0, fold_1, ...)"
            )
    if not out:
        raise SegfuseInputError("no checkpoint given")
    return out
