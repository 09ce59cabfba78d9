"""Typed run configuration: YAML, then command-line overrides, then validation.

A config has five sections — ``experiment``, ``data``, ``model``, ``training``,
``inference`` — each a dataclass. Unknown keys are errors that name the key
(``training.lr_max is not a known key; known: …``); wrong types are errors that
name the key, the value and the expected type. The resolved config is plain data
(``to_dict``) and travels inside every checkpoint, so ``predict`` rebuilds the
model and its preprocessing without the YAML.

Example:
    >>> cfg = load_config("configs/debug.yaml", overrides=["training.iterations=5"])
    >>> cfg.training.iterations
    5
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from segfuse.auxiliary import AUX_SLICE_MODES, FUSION_MODES, MAPPER_KINDS, AuxInput, ModalityNorm
from segfuse.io.errors import SegfuseInputError

#: Label regions: region name → label values, broadest first (``data.regions``).
Regions = Mapping[str, Sequence[int]]
#: Folds of k-fold cross-validation when ``data.fold`` is set without ``data.folds``.
DEFAULT_FOLDS = 5
#: Fields of :class:`AuxInput` that a config does not hold: the name is the entry's key
#: under ``data.aux``, and auxiliaries read from files have one channel.
_AUX_FIELDS_NOT_IN_CONFIG = ("name", "channels")


@dataclass
class ExperimentConfig:
    """Where and how a run is recorded."""

    name: str = "segfuse"
    output_dir: str = "runs"
    seed: int = 0
    deterministic: bool = False


@dataclass
class DataConfig:
    """Which dataset, which inputs, and the preprocessing every case goes through.

    ``aux``: one :class:`~segfuse.auxiliary.AuxInput` per auxiliary modality, keyed
    by its name (``data.aux.flair.scale: [2, 2, 4]``); every layer reads it.

    Every case is prepared once and written to the preprocessed store
    (:mod:`segfuse.data.store`; ``segfuse preprocess``, or ``segfuse train`` when it
    is missing), which training reads lazily. ``store``: its folder (default
    ``<experiment.output_dir>/preprocessed/<hash of the preprocessing keys>``).

    ``regions`` (optional): region name → label values, broadest first, e.g.
    ``{whole_tumour: [1, 2, 4], tumour_core: [1, 4], enhancing_tumour: [4]}``. With
    regions the network has one sigmoid output per region, trained on multi-hot
    targets, validated and evaluated per region, and written back as a label map
    by painting the regions in order (:mod:`segfuse.data.regions`); ``null``
    (the default) trains one softmax class per label.

    Cross-validation: ``fold`` (set by ``segfuse train --fold K``) trains on the
    other folds of ``folds`` (default 5 once ``fold`` is set) and validates on fold
    ``K`` (:mod:`segfuse.data.splits`); it replaces ``val_fraction``.
    """

    dataset: str = ""
    primary: str | None = None
    aux: dict[str, AuxInput] = field(default_factory=dict)
    labels: dict[int, str] = field(default_factory=dict)
    regions: dict[str, list[int]] | None = None
    target_spacing: list[float] | None = None
    primary_norm: ModalityNorm = field(default_factory=ModalityNorm)
    val_fraction: float = 0.2
    val_cases: list[str] | None = None
    split_seed: int = 0
    crop_to_nonzero: bool = True
    store: str | None = None
    folds: int | None = None
    fold: int | None = None
    # Every modality of the training dataset in its channel order, recorded by train;
    # predict maps a plain folder's nnU-Net-style ``{case}_{XXXX}`` files by it.
    modalities: list[str] | None = None


@dataclass
class ModelConfig:
    """FusionUNet options (the auxiliaries come from ``data.aux``)."""

    mode: str = "3d"
    context_slices: int = 0
    # 2d only: the auxiliary plane beside primary slice z, "containing" (slice z // scale)
    # or "linear" (interpolated along the slice axis); see segfuse.data.aux_slices
    aux_slice: str = "containing"
    encoder_depth: int = 5
    encoder_weights: str | None = None
    widen_factor: float = 1.0
    stem_kernel: int = 7
    norm: str = "batch"
    decoder_channels: list[int] | None = None
    deep_supervision: bool = False


@dataclass
class AugmentConfig:
    """Augmentation applied identically (in physical space) to every input."""

    flip_prob: float = 0.5
    rotate_prob: float = 0.2
    rotate_degrees: float = 15.0
    scale_prob: float = 0.2
    scale_range: list[float] = field(default_factory=lambda: [0.85, 1.15])
    intensity_prob: float = 0.15
    noise_std: float = 0.1
    gamma_range: list[float] = field(default_factory=lambda: [0.7, 1.5])


@dataclass
class TrainingConfig:
    """Optimisation, sampling and validation.

    ``checkpoint_last.pt`` is written at the end of every epoch
    (``iterations_per_epoch``), on an interruption and at the end;
    ``checkpoint_best.pt`` whenever validation improves. ``val_every: 0`` keeps
    the validation cases out of training but never validates them during
    training (benchmarks that score the last weights themselves); then, as
    without validation cases, ``checkpoint_best.pt`` is the last weights.
    ``num_workers`` worker processes build batches ahead of the optimiser (``null``: 0 on
    CPU, up to 8 beside a GPU); it changes speed, never which batches are drawn.
    ``snapshots``: fractions of the run (of the time budget with ``schedule: time``,
    else of the iterations), e.g. ``[0.5]``, at which a copy of the weights is kept
    as ``checkpoint_050pct.pt``, to show how results move during training.
    ``decode_without_aux``: decode every sample a second time with all auxiliaries
    absent (the encoder runs once; the decoder's batch doubles) and average the two
    losses, so a model trained with modality dropout learns its primary-only path from
    every sample; needs some ``data.aux.<name>.dropout > 0``.
    ``decode_without_aux_drops``: what the second decode drops: ``all`` (every
    auxiliary) or ``subset`` (per sample a random non-empty subset of them, each of the
    ``2**n - 1`` equally likely, so with several auxiliaries each one missing is trained
    too; with one auxiliary the same as ``all``).
    """

    patch_size: list[int] = field(default_factory=lambda: [64, 64, 64])
    batch_size: int = 2
    iterations: int = 1000
    iterations_per_epoch: int = 50
    max_minutes: float | None = None
    schedule: str = "iterations"
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float = 0.99
    warmup_iterations: int = 0
    poly_power: float = 0.9
    grad_clip: float = 12.0
    foreground_fraction: float = 0.33
    amp: bool = True
    device: str = "auto"
    num_threads: int | None = None
    num_workers: int | None = None
    val_every: int = 1
    snapshots: list[float] = field(default_factory=list)
    decode_without_aux: bool = False
    decode_without_aux_drops: str = "all"
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class InferenceConfig:
    """Sliding-window inference."""

    roi_size: list[int] | None = None
    overlap: float = 0.5
    sw_batch_size: int = 2
    mirror_axes: list[int] = field(default_factory=list)
    blend: str = "gaussian"


@dataclass
class Config:
    """A complete run configuration."""

    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON/``weights_only`` checkpoint safe): sequences are lists."""
        tree = _plain(dataclasses.asdict(self))
        for section in tree["data"]["aux"].values():
            for key in _AUX_FIELDS_NOT_IN_CONFIG:
                del section[key]
        return tree

    @property
    def spatial_dims(self) -> int:
        return 2 if self.model.mode == "2d" else 3

    @property
    def roi_size(self) -> list[int]:
        return list(self.inference.roi_size or self.training.patch_size)


def _plain(value: Any) -> Any:
    """``value`` with every tuple a list (``asdict`` keeps the frozen records' tuples)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting ints to floats etc.)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except SegfuseInputError as exc:
                errors.append(str(exc))
        raise SegfuseInputError(f"config key {key}: {value!r} is not a valid {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SegfuseInputError(f"config key {key}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise SegfuseInputError(f"config key {key}: expected a list, got {value!r}")
        item = typing.get_args(tp)[0]  # list[X] or tuple[X, ...]
        items = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise SegfuseInputError(f"config key {key}: expected a mapping, got {value!r}")
        ktp, vtp = typing.get_args(tp)
        if vtp is AuxInput:
            return {_convert(k, ktp, f"{key} key"): _aux_from_dict(k, v, f"{key}.{k}") for k, v in value.items()}
        return {_convert(k, ktp, f"{key} key"): _convert(v, vtp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SegfuseInputError(f"config key {key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
        raise SegfuseInputError(f"config key {key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads exponents without a dot, such as 1e-3, as strings
            try:
                return float(value)
            except ValueError:
                pass
        raise SegfuseInputError(f"config key {key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise SegfuseInputError(f"config key {key}: expected a string, got {value!r}")
    return value


def _fields_from_dict(cls: type, data: dict[str, Any], prefix: str, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The fields of dataclass ``cls`` that ``data`` gives, checked and converted (``skip``: not config keys)."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in known:
            raise SegfuseInputError(f"config key {key} is not a known key; known keys here: {', '.join(known)}")
        kwargs[k] = _convert(v, hints[k], key)
    return kwargs


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    return cls(**_fields_from_dict(cls, data, prefix))


def _aux_from_dict(name: str, data: Any, key: str) -> AuxInput:
    """The :class:`AuxInput` of ``data.aux.<name>``, with errors that name the key."""
    if not isinstance(data, dict):
        raise SegfuseInputError(f"config key {key}: expected a mapping, got {data!r}")
    fields = _fields_from_dict(AuxInput, data, key, skip=_AUX_FIELDS_NOT_IN_CONFIG)
    scale = fields.get("scale", (1, 1, 1))
    if len(scale) != 3:
        raise SegfuseInputError(f"config key {key}.scale: needs 3 entries (x, y, z), got {list(scale)}")
    mapper, fusion = fields.get("mapper", "conv"), fields.get("fusion", "concat")
    if mapper not in MAPPER_KINDS:
        raise SegfuseInputError(f"config key {key}.mapper: {mapper!r} is not one of {MAPPER_KINDS}")
    if fusion not in FUSION_MODES:
        raise SegfuseInputError(f"config key {key}.fusion: {fusion!r} is not one of {FUSION_MODES}")
    dropout = fields.get("dropout", 0.0)
    if not 0.0 <= dropout < 1.0:
        raise SegfuseInputError(f"config key {key}.dropout: must be in [0, 1), got {dropout}")
    try:
        return AuxInput(name=str(name), **fields)
    except ValueError as exc:
        raise SegfuseInputError(f"config key {key}: {exc}") from exc


def _set_override(tree: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise SegfuseInputError(f"override {override!r} must look like section.key=value")
    dotted, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw else None
    parts = dotted.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SegfuseInputError(f"override {override!r}: {part} is not a section")
    node[parts[-1]] = value


def validate(cfg: Config) -> Config:
    """Cross-field checks whose messages name the key and the values (``data.aux`` is checked as it is read)."""
    dims = cfg.spatial_dims
    if cfg.model.mode not in ("2d", "3d"):
        raise SegfuseInputError(f"config key model.mode: expected '2d' or '3d', got {cfg.model.mode!r}")
    if len(cfg.training.patch_size) != dims:
        raise SegfuseInputError(
            f"config key training.patch_size: {cfg.training.patch_size} needs {dims} entries for mode {cfg.model.mode}"
        )
    if cfg.data.regions is not None:
        check_regions(cfg.data.regions, cfg.data.labels or None)
    for key, value in (("training.optimizer", cfg.training.optimizer),):
        if value not in ("adamw", "sgd"):
            raise SegfuseInputError(f"config key {key}: expected 'adamw' or 'sgd', got {value!r}")
    if cfg.training.schedule not in ("iterations", "time"):
        raise SegfuseInputError(
            f"config key training.schedule: expected 'iterations' or 'time', got {cfg.training.schedule!r}"
        )
    if cfg.training.schedule == "time" and not cfg.training.max_minutes:
        raise SegfuseInputError("config key training.schedule: 'time' needs training.max_minutes (the budget)")
    if cfg.training.num_workers is not None and cfg.training.num_workers < 0:
        raise SegfuseInputError(
            f"config key training.num_workers: must be >= 0 or null (auto), got {cfg.training.num_workers}"
        )
    if cfg.training.val_every < 0:
        raise SegfuseInputError(f"config key training.val_every: must be >= 0 (0: never), got {cfg.training.val_every}")
    if any(not 0.0 < f < 1.0 for f in cfg.training.snapshots):
        raise SegfuseInputError(
            f"config key training.snapshots: fractions of the run in (0, 1), got {cfg.training.snapshots}"
        )
    if cfg.training.decode_without_aux and not any(a.dropout > 0 for a in cfg.data.aux.values()):
        raise SegfuseInputError(
            "config key training.decode_without_aux: true needs modality dropout (data.aux.<name>.dropout > 0 "
            "for some auxiliary; the model is then marked as working without its auxiliaries), got dropout "
            f"{ {name: a.dropout for name, a in cfg.data.aux.items()} }"
        )
    if cfg.training.decode_without_aux_drops not in ("all", "subset"):
        raise SegfuseInputError(
            "config key training.decode_without_aux_drops: expected 'all' or 'subset', "
            f"got {cfg.training.decode_without_aux_drops!r}"
        )
    if not 0.0 <= cfg.inference.overlap < 1.0:
        raise SegfuseInputError(f"config key inference.overlap: must be in [0, 1), got {cfg.inference.overlap}")
    _validate_folds(cfg)
    if cfg.model.context_slices and dims == 3:
        raise SegfuseInputError("config key model.context_slices: 2.5D context only applies to mode 2d")
    if cfg.model.aux_slice not in AUX_SLICE_MODES:
        raise SegfuseInputError(
            f"config key model.aux_slice: expected one of {list(AUX_SLICE_MODES)}, got {cfg.model.aux_slice!r}"
        )
    if cfg.model.aux_slice != "containing" and dims == 3:
        raise SegfuseInputError(
            f"config key model.aux_slice: {cfg.model.aux_slice!r} only applies to mode 2d (a 3D model sees "
            "every auxiliary whole at its own scale)"
        )
    return cfg


def paint_values(regions: Regions) -> list[int]:
    """The label each region paints: the one value it holds that no later region holds.

    Raises:
        SegfuseInputError: a region owns no value or several (it could not be
            written back as one label).
    """
    names = list(regions)
    values = []
    for i, name in enumerate(names):
        later = {int(v) for other in names[i + 1 :] for v in regions[other]}
        own = sorted({int(v) for v in regions[name]} - later)
        if len(own) != 1:
            raise SegfuseInputError(
                f"config key data.regions.{name}: a region must hold exactly one label value that no later region "
                f"holds (the label it paints when written back), got {own or 'none'} from {list(regions[name])}; "
                f"order the regions broadest first (regions: {dict(regions)})"
            )
        values.append(own[0])
    return values


def check_regions(regions: Regions, labels: Collection[int] | None = None, *, paintable: bool = True) -> None:
    """Check ``regions``: non-empty, positive values, known labels, each paints one label.

    Args:
        regions: region name → label values, broadest first.
        labels: the dataset's label values (``None``: not known yet, not checked).
        paintable: also require that each region owns one label (:func:`paint_values`),
            as training and prediction do; evaluation only scores the regions and does not.

    Raises:
        SegfuseInputError: naming the region and the values.
    """
    if not regions:
        raise SegfuseInputError("config key data.regions: give at least one region, or null for per-class softmax")
    for name, values in regions.items():
        if not values:
            raise SegfuseInputError(f"config key data.regions.{name}: a region needs at least one label value")
        bad = [v for v in values if int(v) <= 0]
        if bad:
            raise SegfuseInputError(
                f"config key data.regions.{name}: label values must be > 0 (0 is background), got {list(values)}"
            )
        if labels is not None:
            unknown = sorted({int(v) for v in values} - {int(v) for v in labels})
            if unknown:
                raise SegfuseInputError(
                    f"config key data.regions.{name}: label values {unknown} are not labels of the dataset "
                    f"({sorted(int(v) for v in labels)})"
                )
    seen: dict[frozenset[int], str] = {}
    for name, values in regions.items():
        key = frozenset(int(v) for v in values)
        if key in seen:
            raise SegfuseInputError(
                f"config key data.regions.{name}: holds the same labels {sorted(key)} as region {seen[key]!r}"
            )
        seen[key] = name
    if paintable:
        paint_values(regions)


def _validate_folds(cfg: Config) -> None:
    """``data.folds`` / ``data.fold``; a fold without a fold count gets the default (5)."""
    data = cfg.data
    if data.folds is not None and data.folds < 2:
        raise SegfuseInputError(f"config key data.folds: needs 2 or more folds, got {data.folds}")
    if data.fold is None:
        return
    if data.folds is None:
        data.folds = DEFAULT_FOLDS
    if not 0 <= data.fold < data.folds:
        raise SegfuseInputError(f"config key data.fold: must be in 0 .. {data.folds - 1} (data.folds), got {data.fold}")
    if data.val_cases is not None:
        raise SegfuseInputError("config key data.val_cases: cannot be combined with data.fold (the fold sets them)")


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from plain data."""
    return validate(_from_dict(Config, data or {}))


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read YAML ``path`` (or defaults), apply ``section.key=value`` overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SegfuseInputError(f"{path}: config file not found")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SegfuseInputError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(tree, dict):
            raise SegfuseInputError(f"{path}: expected a mapping of sections at the top level")
        data = tree.get("data")
        dataset = data.get("dataset") if isinstance(data, dict) else None
        if isinstance(dataset, str) and dataset and not Path(dataset).is_absolute():
            # dataset paths in a YAML file are relative to that file
            tree["data"]["dataset"] = str((path.parent / dataset).resolve())
    for override in overrides or []:
        _set_override(tree, override)
    return config_from_dict(tree)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    from segfuse.io.atomic import atomic_write_text

    return atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
