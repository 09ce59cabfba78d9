"""A trained network with everything needed to run it on raw scans: loading one checkpoint, or several.

The checkpoint alone rebuilds the network and its preprocessing: the run config
travels inside it (read with ``weights_only=True``) and
:func:`segfuse.factory.model_from_checkpoint` builds the network it describes. A list
of checkpoints (or run folders, or a folder of fold runs:
:func:`segfuse.inference.checkpoints.expand_checkpoints`) gives a soft
:class:`Ensemble`: every member predicts each case on the same prepared inputs and
their probabilities ``(K, *network grid)`` are averaged before they go back to the
input grid and become labels. Members may differ in architecture (2D and 3D, mapper
or fusion choices, patch size); they must agree on everything that defines the
inputs and the outputs — the preprocessing (target spacing, normalisation), the
primary modality, the auxiliaries and their scales, and the labels — or the
ensemble is refused with the checkpoints and the differing values named.

Example:
    >>> model = load_model("runs/x/checkpoint_best.pt", device="auto")  # doctest: +SKIP
    >>> len(load_model(["runs/unet3d"]).members)  # a folder of five fold runs  # doctest: +SKIP
    5
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from segfuse.auxiliary import allows_missing
from segfuse.config import Config, config_from_dict
from segfuse.data.preprocess import PreparedCase, Preprocessing, preprocessing_from_config
from segfuse.factory import model_from_checkpoint
from segfuse.inference.checkpoints import expand_checkpoints
from segfuse.inference.engine import predict_prepared
from segfuse.io.atomic import file_sha256
from segfuse.io.checkpoint import load_checkpoint
from segfuse.io.errors import SegfuseInputError

__all__ = ["Ensemble", "LoadedModel", "check_compatible", "first_difference", "load_ensemble", "load_model",
           "model_from_config", "model_name", "resolve_device"]


@dataclass
class LoadedModel:
    """A network with everything needed to run it on raw scans.

    Attributes:
        cfg: the run config saved in the checkpoint.
        net: called as ``net(x, aux)`` with ``x`` ``(B, C, *roi)`` and
            ``aux`` ``name → (B, C_a, *roi / scale)`` or ``None``; returns logits
            ``(B, K, *roi)``. In eval mode on ``device``.
        preprocessing: the :class:`Preprocessing` the config describes.
        device: where ``net`` runs.
        checkpoint: the checkpoint file, when loaded from one.
    """

    cfg: Config
    net: torch.nn.Module
    preprocessing: Preprocessing
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    checkpoint: Path | None = None

    @property
    def allow_missing_aux(self) -> bool:
        """Trained with modality dropout: auxiliaries may be absent at inference."""
        return allows_missing(self.cfg.data.aux)

    @property
    def label_values(self) -> list[int]:
        """Label value of each output class (class index ``i`` → ``label_values[i]``)."""
        values = sorted(self.cfg.data.labels) if self.cfg.data.labels else [0, 1]
        return values if len(values) >= 2 else [0, 1]

    @property
    def checkpoints(self) -> list[Path]:
        """The checkpoint files behind this model (several for an ensemble)."""
        return [] if self.checkpoint is None else [self.checkpoint]

    def checkpoint_sha256(self) -> str | None:
        """SHA-256 of the checkpoint file (``None`` for an in-memory model); ``resume`` compares it."""
        return file_sha256(self.checkpoint) if self.checkpoint is not None else None

    def probabilities(
        self, prepared: PreparedCase, *, mirror_axes: Sequence[int], progress: bool = False
    ) -> torch.Tensor:
        """Class probabilities ``(K, *prepared.shape)`` float32 on the CPU (an ensemble averages its members')."""
        return predict_prepared(
            self.net, self.cfg, prepared, device=self.device, mirror_axes=mirror_axes, progress=progress
        )


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` (a GPU when torch sees one), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``, checked."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise SegfuseInputError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SegfuseInputError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return torch.device(device)


def load_model(
    checkpoint: str | Path | Mapping[str, Any] | LoadedModel | Sequence[str | Path], device: str = "cpu"
) -> LoadedModel:
    """Rebuild the network and its preprocessing from a checkpoint file or loaded dict.

    A list of checkpoints (or run folders, or a folder of fold runs) gives an
    :class:`Ensemble` that averages their probabilities.

    Example:
        >>> model = load_model("runs/x/checkpoint_best.pt", device="auto")  # doctest: +SKIP
    """
    if isinstance(checkpoint, LoadedModel):
        return checkpoint
    if isinstance(checkpoint, list | tuple):
        return load_ensemble(checkpoint, device=device)
    path = None
    if isinstance(checkpoint, str | Path):
        path = Path(checkpoint)
        state = load_checkpoint(path)
        path = Path(state.get("path", path))
    else:
        state = dict(checkpoint)
    dev = resolve_device(device)
    cfg, net = model_from_checkpoint(state, device=str(dev))
    return LoadedModel(cfg=cfg, net=net, preprocessing=preprocessing_from_config(cfg), device=dev, checkpoint=path)


def model_from_config(cfg: Config | Mapping[str, Any], net: torch.nn.Module, device: str = "cpu") -> LoadedModel:
    """Wrap an in-memory network and its config (tests, notebooks) as a :class:`LoadedModel`."""
    if not isinstance(cfg, Config):
        cfg = config_from_dict(dict(cfg))
    dev = resolve_device(device)
    return LoadedModel(cfg=cfg, net=net.to(dev).eval(), preprocessing=preprocessing_from_config(cfg), device=dev)


# -- ensembles -------------------------------------------------------------------------------


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
        if difference := first_difference(reference, _signature(other)):
            key, value, theirs = difference
            raise SegfuseInputError(
                f"cannot ensemble {model_name(first)} and {model_name(other)}: their {key} differ "
                f"({value!r} vs {theirs!r}); an ensemble averages probabilities of the same classes "
                "on the same prepared inputs"
            )


def first_difference(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """``(key, ours[key], theirs[key])`` for the first key of ``ours`` whose values differ; ``None`` if none does."""
    return next(((key, value, theirs[key]) for key, value in ours.items() if theirs[key] != value), None)


def model_name(model: LoadedModel) -> str:
    """The model's checkpoint files, for messages (``"an in-memory model"`` without one)."""
    paths = model.checkpoints
    return ", ".join(str(p) for p in paths) if paths else "an in-memory model"


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
