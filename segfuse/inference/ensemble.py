"""Soft ensembles: several checkpoints whose class probabilities are averaged.

``segfuse predict --checkpoint A --checkpoint B`` (or ``--checkpoint RUNS/NAME``,
a folder of ``fold_*`` runs) loads every member and predicts each case once per
member, on the same prepared case, then averages the probabilities
``(K, *network grid)`` before they go back to the input grid and become labels.
Members may differ in architecture (2D and 3D, mapper or fusion choices, patch
size); they must agree on everything that defines the inputs and the outputs —
the preprocessing (target spacing, normalisation), the primary modality, the
auxiliaries and their scales, and the labels — or the ensemble is refused with
the checkpoints and the differing values named.

Which weights a folder stands for:

- a checkpoint file: itself;
- a run folder: ``checkpoint_best.pt``, else ``checkpoint_last.pt`` (as everywhere);
- a folder of fold runs (``fold_0``, ``fold_1``, ...): each fold's
  ``checkpoint_last.pt`` — the final weights, the ones whose out-of-fold
  predictions ``segfuse cv-summary`` scored (a fold's ``checkpoint_best.pt`` was
  chosen on its own validation cases).

Example:
    >>> model = load_ensemble(["runs/unet3d"], device="cpu")  # doctest: +SKIP
    >>> len(model.members)  # doctest: +SKIP
    5
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from segfuse.data.preprocess import PreparedCase
from segfuse.inference.predict import LoadedModel, load_model
from segfuse.io.errors import SegfuseInputError

__all__ = ["Ensemble", "expand_checkpoints", "fold_run_dirs", "load_ensemble"]

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


def _signature(model: LoadedModel) -> dict[str, Any]:
    """What every member must share: the inputs it reads and the outputs it writes."""
    data = model.cfg.data
    pre = model.preprocessing
    return {
        "preprocessing (data.target_spacing, data.primary_norm, data.aux.*.norm)": (
            None if pre.target_spacing is None else [float(s) for s in pre.target_spacing],
            pre.primary_norm,
            {k: v for k, v in sorted(pre.aux_norms.items())},
        ),
        "primary modality (data.primary)": data.primary,
        "auxiliaries and scales (data.aux.*.scale)": {k: list(v) for k, v in pre.aux_scales.items()},
        "labels (data.labels)": dict(sorted(data.labels.items())),
    }


def check_compatible(models: Sequence[LoadedModel]) -> None:
    """Raise naming the checkpoints and the values when members differ in inputs or outputs."""
    first = models[0]
    reference = _signature(first)
    for other in models[1:]:
        theirs = _signature(other)
        for key, value in reference.items():
            if theirs[key] != value:
                raise SegfuseInputError(
                    f"cannot ensemble {_name(first)} and {_name(other)}: their {key} differ "
                    f"({value!r} vs {theirs[key]!r}); an ensemble averages probabilities of the same classes "
                    "on the same prepared inputs"
                )


def _name(model: LoadedModel) -> str:
    return str(model.checkpoint) if model.checkpoint is not None else "an in-memory model"


@dataclass
class Ensemble(LoadedModel):
    """Several :class:`LoadedModel` members with one preprocessing; probabilities are averaged.

    ``cfg``, ``preprocessing`` and ``device`` are the first member's (inference
    options such as the mirror axes come from it unless given); ``net`` holds
    every member's network (a ``ModuleList``; it has no forward of its own).
    """

    members: list[LoadedModel] = field(default_factory=list)

    @classmethod
    def of(cls, members: Sequence[LoadedModel]) -> Ensemble:
        """An ensemble of already loaded members (checked with :func:`check_compatible`)."""
        members = list(members)
        if not members:
            raise SegfuseInputError("an ensemble needs at least one model")
        check_compatible(members)
        first = members[0]
        return cls(
            cfg=first.cfg,
            net=torch.nn.ModuleList([m.net for m in members]),
            preprocessing=first.preprocessing,
            device=first.device,
            checkpoint=None,
            members=members,
        )

    @property
    def allow_missing_aux(self) -> bool:
        """Every member was trained with modality dropout."""
        return all(m.allow_missing_aux for m in self.members)

    @property
    def checkpoints(self) -> list[Path]:
        return [p for m in self.members for p in m.checkpoints]

    def checkpoint_sha256(self) -> str | None:
        """One hash over the members' hashes, in order."""
        hashes = [m.checkpoint_sha256() for m in self.members]
        if any(h is None for h in hashes):
            return None
        return hashlib.sha256("\n".join(hashes).encode()).hexdigest()  # type: ignore[arg-type]

    def probabilities(
        self, prepared: PreparedCase, *, mirror_axes: Sequence[int], progress: bool = False
    ) -> torch.Tensor:
        """Mean of the members' probabilities ``(K, *prepared.shape)`` (float32, CPU)."""
        members = iter(self.members)
        total = next(members).probabilities(prepared, mirror_axes=mirror_axes, progress=progress)
        for member in members:
            total.add_(member.probabilities(prepared, mirror_axes=mirror_axes, progress=progress))
        return total / len(self.members)


def load_ensemble(checkpoints: Sequence[str | Path], device: str = "cpu") -> LoadedModel:
    """Load ``checkpoints`` (see :func:`expand_checkpoints`); one member gives a plain :class:`LoadedModel`."""
    paths = expand_checkpoints(checkpoints)
    members = [load_model(p, device=device) for p in paths]
    return members[0] if len(members) == 1 else Ensemble.of(members)
