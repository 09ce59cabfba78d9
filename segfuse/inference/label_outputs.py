"""Predicted label maps that open named and coloured in viewers.

- :func:`write_label_map`: the label file of ``predict``; a path ending in
  ``.seg.nrrd`` becomes a 3D Slicer segmentation with one named, coloured
  segment per class (:mod:`segfuse.io.segmentation_nrrd`); any other suffix is a
  plain label image (:func:`segfuse.io.image.write_image`).
- :func:`write_label_tables_for`: ``predict --labels-file``: an ITK-SNAP label
  description file and a Slicer colour table (:mod:`segfuse.io.label_tables`)
  beside the predictions.

Names come from the checkpoint's config (``data.labels``); a value without a
name is called ``label_<value>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segfuse.config import Config, config_from_dict
from segfuse.io.checkpoint import load_checkpoint
from segfuse.io.image import Volume, write_image
from segfuse.io.label_tables import write_label_tables
from segfuse.io.segmentation_nrrd import SEG_NRRD_SUFFIX, write_slicer_segmentation

__all__ = ["label_names", "write_label_map", "write_label_tables_for"]


def label_names(cfg: Config, values: Sequence[int] | None = None) -> dict[int, str]:
    """Label value → name for every value the model predicts (0 is ``background`` unless named)."""
    named = {int(v): str(n) for v, n in cfg.data.labels.items()}
    values = sorted(named) if values is None and named else (values or [0, 1])
    return {int(v): named.get(int(v), "background" if int(v) == 0 else f"label_{v}") for v in values}


def write_label_map(labels: np.ndarray, source: Volume, path: str | Path, cfg: Config) -> Path:
    """Write the predicted ``labels`` ``(X, Y, Z)`` on ``source``'s grid; ``.seg.nrrd`` → Slicer segmentation."""
    path = Path(path)
    if path.name.lower().endswith(SEG_NRRD_SUFFIX):
        return write_slicer_segmentation(labels, source, path, label_names(cfg))
    return write_image(labels, source, path, dtype=labels.dtype)


def write_label_tables_for(checkpoint: Any, folder: str | Path) -> dict[str, Path]:
    """Write the ITK-SNAP and Slicer label tables of a checkpoint's classes into ``folder``.

    ``checkpoint``: a checkpoint file or run folder, a loaded checkpoint dict, a
    :class:`~segfuse.inference.model.LoadedModel`, or a list of those (the first
    names the classes).
    """
    if isinstance(checkpoint, list | tuple):
        checkpoint = checkpoint[0]
    cfg = getattr(checkpoint, "cfg", None)
    if cfg is None:
        state = load_checkpoint(checkpoint) if isinstance(checkpoint, str | Path) else dict(checkpoint)
        cfg = config_from_dict(state["config"])
    return write_label_tables(folder, label_names(cfg))

