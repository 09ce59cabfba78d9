"""The label set an evaluation scores: which values are classes, and their names.

Evaluation needs it to tell a class that is absent from a case from a value that
should not be there at all (a stray 7 in a reference must be an error naming
that file, not a new class ``label_7``). :func:`find_label_set` looks, in order:

1. ``labels`` given by the caller (``segfuse evaluate --labels FILE``), where
   FILE is a decathlon or nnU-Net ``dataset.json``, a run's ``config.yaml``
   (``data.labels``), a YAML manifest (``labels``) or a plain JSON/YAML mapping
   ``value → name``;
2. the ``labels`` recorded in ``predictions.json`` by ``segfuse predict`` in the
   prediction folder (the checkpoint's classes);
3. otherwise the non-zero values found in the references, named ``label_<v>``,
   with a warning: without a label set a stray value cannot be told from a class.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from segfuse.io.errors import SegfuseInputError

__all__ = ["labels_from_file", "labels_from_predictions", "parse_labels"]


def parse_labels(raw: Any, source: str | Path) -> dict[int, str]:
    """``{value: name}`` (background 0 left out) from a decathlon- or nnU-Net-style mapping.

    Decathlon / segfuse: ``{"0": "background", "1": "Anterior"}``; nnU-Net v2:
    ``{"background": 0, "Anterior": 1}`` (region labels, given as lists, are refused).

    Example:
        >>> parse_labels({"background": 0, "tumour": 1}, "dataset.json")
        {1: 'tumour'}
    """
    if not isinstance(raw, Mapping) or not raw:
        raise SegfuseInputError(f"{source}: labels must be a non-empty mapping value → name, got {raw!r}")
    values = list(raw.values())
    nnunet = all(isinstance(v, int | list) and not isinstance(v, bool) for v in values) and not all(
        _is_int(k) for k in raw
    )
    out: dict[int, str] = {}
    for key, value in raw.items():
        number, name = (value, key) if nnunet else (key, value)
        if isinstance(number, list):
            raise SegfuseInputError(
                f"{source}: label {name!r} is a region (a list of values {number}); evaluate scores single values"
            )
        if not _is_int(number):
            raise SegfuseInputError(f"{source}: label values must be integers, got {number!r} (for {name!r})")
        if int(number) < 0:
            raise SegfuseInputError(f"{source}: label values must be >= 0, got {number}")
        if int(number) in out:
            raise SegfuseInputError(f"{source}: label value {number} is declared twice")
        if int(number) != 0:
            out[int(number)] = str(name)
    if not out:
        raise SegfuseInputError(f"{source}: declares no foreground label (only background): {dict(raw)}")
    return dict(sorted(out.items()))


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()


def labels_from_file(path: str | Path) -> dict[int, str]:
    """The label set declared in a ``dataset.json``, a run ``config.yaml``, a YAML manifest or a mapping file.

    Raises:
        SegfuseInputError: unreadable file, or no label set in it (naming the file).

    Example:
        >>> labels_from_file("runs/hippo/config.yaml")  # doctest: +SKIP
        {1: 'Anterior', 2: 'Posterior'}
    """
    path = Path(path)
    if not path.is_file():
        raise SegfuseInputError(f"{path}: label file not found (expected dataset.json or a run's config.yaml)")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as err:
        raise SegfuseInputError(f"{path}: cannot read the label set: {err}") from err
    if not isinstance(data, Mapping):
        raise SegfuseInputError(f"{path}: expected a mapping with a 'labels' entry, got {type(data).__name__}")
    if isinstance(data.get("data"), Mapping) and "labels" in data["data"]:  # a run config
        raw = data["data"]["labels"]
        if not raw:
            raise SegfuseInputError(
                f"{path}: data.labels is empty (taken from the dataset at training time); pass the "
                "dataset's dataset.json, or the run folder's config.yaml written by training"
            )
    elif "labels" in data:  # dataset.json or a YAML manifest
        raw = data["labels"]
    else:
        raw = data  # a bare mapping value → name
    return parse_labels(raw, path)


def labels_from_predictions(pred: Path) -> dict[int, str] | None:
    """The labels ``segfuse predict`` recorded in ``pred/predictions.json``, if any."""
    manifest = Path(pred) / "predictions.json"
    if not Path(pred).is_dir() or not manifest.is_file():
        return None
    try:
        raw = json.loads(manifest.read_text(encoding="utf-8")).get("labels")
    except (OSError, ValueError, AttributeError):
        return None
    if not raw:
        return None
    try:
        return parse_labels(raw, manifest)
    except SegfuseInputError:
        return None
