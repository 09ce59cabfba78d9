"""Checkpoints: written atomically, read with ``weights_only=True`` only.

A segfuse checkpoint is a plain dict (tensors, numbers, strings, lists, dicts):

``format``      ``"segfuse-checkpoint-1"``
``model``       the network's ``state_dict``
``config``      the resolved run config (``Config.to_dict()``): rebuilds model and preprocessing
``in_channels`` channels of the primary scan
``epoch``, ``iteration``, ``best_metric``, ``history``
``optimizer``, ``scheduler``, ``scaler``, ``rng``  (training state, for ``--resume``)
``content_sha256``  entry name → SHA-256 of that entry's content (tensors by dtype,
                shape and bytes), written by :func:`save_checkpoint`

:func:`load_checkpoint` recomputes every stored hash and refuses a file whose
content changed since it was saved (a flipped byte inside a weight tensor would
otherwise load and silently change every prediction). Checkpoints written before
the hash existed load with a warning.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from segfuse.io.atomic import atomic_torch_save
from segfuse.io.errors import SegfuseInputError

CHECKPOINT_FORMAT = "segfuse-checkpoint-1"
HASH_KEY = "content_sha256"

logger = logging.getLogger(__name__)


def _feed(digest: Any, obj: Any) -> None:
    """Hash ``obj`` deterministically: the same content gives the same bytes after save/load."""
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().to("cpu").contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}:".encode())
        if tensor.numel():
            digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(obj, Mapping):
        digest.update(f"D{len(obj)}:".encode())
        for key in sorted(obj, key=repr):
            _feed(digest, key)
            _feed(digest, obj[key])
    elif isinstance(obj, list | tuple):
        digest.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for item in obj:
            _feed(digest, item)
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        digest.update(f"S{len(data)}:".encode() + data)
    elif isinstance(obj, bytes):
        digest.update(f"B{len(obj)}:".encode() + obj)
    else:  # numbers, None, torch.Size, ...
        digest.update(f"{type(obj).__name__}:{obj!r};".encode())


def content_sha256(obj: Any) -> str:
    """SHA-256 of a checkpoint entry's content (nested dicts, lists, tensors, numbers, strings).

    Example:
        >>> content_sha256({"w": torch.zeros(2)}) == content_sha256({"w": torch.zeros(2)})
        True
    """
    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.hexdigest()


def _check_content(path: Path, state: dict[str, Any]) -> None:
    stored = state.get(HASH_KEY)
    if stored is None:
        logger.warning(
            "%s: checkpoint has no content hash (written by an older segfuse); it cannot be checked for damage",
            path,
        )
        return
    if not isinstance(stored, Mapping):
        raise SegfuseInputError(f"{path}: checkpoint is damaged: its {HASH_KEY!r} entry is not a mapping")
    damaged = [
        key for key, expected in stored.items() if key not in state or content_sha256(state[key]) != expected
    ]
    if damaged:
        what = "the weights ('model')" if "model" in damaged else "its content"
        raise SegfuseInputError(
            f"{path}: checkpoint is damaged: {what} no longer match the SHA-256 stored when it was saved "
            f"(entries {damaged}); refusing to use it — restore the file from a copy or train again"
        )


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` (see the module docstring) atomically, with the SHA-256 of every entry."""
    payload = {"format": CHECKPOINT_FORMAT, **{k: v for k, v in state.items() if k not in (HASH_KEY, "path")}}
    payload[HASH_KEY] = {key: content_sha256(value) for key, value in payload.items() if key != "format"}
    return atomic_torch_save(payload, Path(path))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a segfuse checkpoint with ``weights_only=True``; clear errors for anything else.

    A run folder reads its ``checkpoint_best.pt`` (else ``checkpoint_last.pt``);
    temporary files of interrupted writes are never read.

    Raises:
        SegfuseInputError: missing file, not loadable with ``weights_only=True``
            (pickled code included), not a segfuse checkpoint, or content that no
            longer matches its stored hashes (naming the file).
    """
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
    _check_content(path, state)
    state["path"] = str(path)
    return state
