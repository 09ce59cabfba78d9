"""Dataset layouts → cases: one :class:`Dataset` whatever the folder looks like.

:func:`read_dataset` auto-detects the layout. It only lists files and checks
that they exist; images are opened later, by ``segfuse.io``.

**Medical Segmentation Decathlon** (``layout="msd"``): a folder holding a
``dataset.json`` with a ``training`` list (``{"image": "./imagesTr/x.nii.gz",
"label": "./labelsTr/x.nii.gz"}``), a ``modality`` dict (``{"0": "FLAIR",
"1": "T1w"}``) and ``labels`` (``{"0": "background", ...}``). A multi-modality
image is one 4D file with the modalities on the last axis, so each modality is
an :class:`ImageRef` with ``channel`` set; a single-modality image has
``channel=None``. Case ids are file names without extension
(``hippocampus_004``).

**nnU-Net v2 raw** (``layout="nnunet"``): a folder holding a ``dataset.json``
with ``channel_names`` (``{"0": "T1", "1": "FLAIR"}``), ``labels`` (name →
value, e.g. ``{"background": 0, "tumour": 1}``; region labels given as lists
are not supported) and ``file_ending`` (default ``.nii.gz``); images
``imagesTr/{case}_{XXXX}{file_ending}`` with a 4-digit channel index, labels
``labelsTr/{case}{file_ending}``. Every selected channel must exist for every
case, as nnU-Net itself requires; use a manifest to describe missing scans.

**Manifest** (``layout="manifest"``): a ``.csv`` or ``.yaml``/``.yml`` file;
relative paths are resolved from the manifest's folder.

* CSV: columns ``case_id``, ``primary`` (or ``image``), ``label`` (optional when
  ``require_labels=False``) and any other column is an auxiliary scan: its
  header is the auxiliary's name, its cells the paths; an empty cell means that
  case lacks that auxiliary. The primary modality is named after its column
  (``"primary"`` or ``"image"``). A CSV cannot declare labels: they come from
  the ``labels`` argument, default ``{0: "background", 1: "foreground"}``.
* YAML keeps the labels with the data (``configs/brats18_manifest.yaml``)::

      labels: {0: background, 1: whole_tumour}
      primary_name: t1                  # default "primary"
      cases:
        - case_id: Brats18_CBICA_AAB_1
          primary: ../data/AAB/t1.nii.gz   # or "image"
          label: ../data/AAB/whole_tumour.nii.gz
          aux: {flair: ../data/AAB/flair.nii.gz}   # optional; omit a name if missing

  Optional top-level ``name`` and ``description`` are allowed; any other key is
  an error. Without ``labels`` the ``labels`` argument (or its default) is used.

**Images folder, no labels** (for prediction; see :func:`_read_image_folder`):
a folder without ``dataset.json``. An MSD ``imagesTs`` (``layout="msd"``: the
parent's ``dataset.json`` ``test`` list, or every image in it, with the
parent's ``modality`` names), an nnU-Net ``imagesTs`` (``layout="nnunet"``: the
parent's ``channel_names``), or a plain folder (``layout="folder"``): one image
per case, or nnU-Net-style ``{case}_{XXXX}`` channel files named by
``channel_names=``.

In every layout the scans of a case are named modalities: the primary plus the
auxiliaries. ``primary=`` picks which modality is the primary (by name) and
``aux=`` which others to keep (default: all the others, in declared order).
Only the files of the selected modalities (and labels) must exist; all missing
files are reported in one :class:`~segfuse.io.errors.SegfuseInputError`.
Labels always include ``0``; a label set without it gets ``0: "background"``.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from segfuse.io.errors import SegfuseInputError

__all__ = ["Case", "Dataset", "ImageRef", "read_dataset", "split_cases"]

DEFAULT_LABELS: dict[int, str] = {0: "background", 1: "foreground"}
_MAX_LISTED = 20
_MANIFEST_SUFFIXES = {".csv", ".yaml", ".yml"}
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


@dataclass(frozen=True)
class ImageRef:
    """One scan on disk: a file, and for 4D decathlon images the channel to take.

    ``channel`` indexes the last axis of a 4D image; ``None`` means the file is
    the scan itself.
    """

    path: Path
    channel: int | None = None


@dataclass(frozen=True)
class Case:
    """One subject: its primary scan, its auxiliary scans by name, its label map.

    ``aux`` maps auxiliary name → scan; a name of :attr:`Dataset.aux_names` that
    is absent here means this case lacks that auxiliary. ``label`` is ``None``
    only when the dataset was read with ``require_labels=False``.
    """

    case_id: str
    primary: ImageRef
    aux: dict[str, ImageRef] = field(default_factory=dict)
    label: Path | None = None


@dataclass
class Dataset:
    """Cases of one dataset plus what is common to them.

    ``layout`` is ``"msd"``, ``"nnunet"``, ``"manifest"`` or ``"folder"``; ``labels``
    maps label value → name (``0`` included); ``aux_names`` lists the selected
    auxiliaries; ``modalities`` every modality the source declares, in its channel
    order (selected or not).
    """

    root: Path
    layout: str
    cases: list[Case]
    labels: dict[int, str]
    primary_name: str
    aux_names: list[str]
    modalities: list[str] = field(default_factory=list)


@dataclass
class _RawCase:
    """A case as a layout reader sees it, before modality selection."""

    case_id: str
    scans: dict[str, ImageRef]  # modality name → scan; absent name = missing scan
    label: Path | None
    origin: str  # where the case was declared, for messages


@dataclass
class _RawDataset:
    """A dataset as a layout reader sees it: its modalities (the first is the default primary) and cases."""

    root: Path
    layout: str
    source: Path  # the file that declared the cases (dataset.json or the manifest)
    modalities: list[str]
    cases: list[_RawCase]
    labels: dict[int, str] | None = None
    required_scans: bool = False  # True: a selected modality missing for a case is an error
    default_primary: str = ""  # "" = the first modality

    def __post_init__(self) -> None:
        self.default_primary = self.default_primary or self.modalities[0]


# --------------------------------------------------------------------------- helpers


def _listing(items: Sequence[str], limit: int = _MAX_LISTED) -> str:
    """`` a; b; c … and 5 more`` on one line: the CLI prints errors as one line."""
    shown = "; ".join(items[:limit])
    more = f" … and {len(items) - limit} more" if len(items) > limit else ""
    return f" {shown}{more}"


def _strip_image_suffix(name: str) -> str:
    """``hippocampus_004.nii.gz`` → ``hippocampus_004``."""
    lower = name.lower()
    for suffix in _IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _unique_names(raw: Sequence[str]) -> list[str]:
    """Lower-case modality names, spaces → ``_``, duplicates suffixed ``_2``, ``_3``."""
    names: list[str] = []
    for value in raw:
        base = re.sub(r"\s+", "_", str(value).strip().lower()) or "modality"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def _resolve(base: Path, value: Any) -> Path:
    return (base / Path(str(value).strip()).expanduser()).resolve()


def _normalise_labels(raw: Mapping[Any, Any], source: Path | str) -> dict[int, str]:
    """``{"0": "background", 1: "x"}`` → ``{0: "background", 1: "x"}`` (0 added)."""
    labels: dict[int, str] = {}
    for key, name in raw.items():
        try:
            value = int(str(key).strip())
        except ValueError:
            raise SegfuseInputError(
                f"{source}: label values must be integers, got {key!r} (for {name!r})"
            ) from None
        if value < 0:
            raise SegfuseInputError(f"{source}: label values must be >= 0, got {value}")
        if value in labels:
            raise SegfuseInputError(f"{source}: label value {value} is declared twice")
        labels[value] = str(name)
    labels.setdefault(0, "background")
    return dict(sorted(labels.items()))


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SegfuseInputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SegfuseInputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _index_map(raw: Any, key: str, source: Path) -> list[str]:
    """``{"0": "T1", "1": "FLAIR"}`` → ``["T1", "FLAIR"]``, checking indices 0..n-1."""
    if not isinstance(raw, Mapping) or not raw:
        raise SegfuseInputError(f"{source}: '{key}' must be a non-empty object, got {raw!r}")
    try:
        by_index = {int(k): str(v) for k, v in raw.items()}
    except ValueError:
        raise SegfuseInputError(
            f"{source}: '{key}' keys must be channel indices '0', '1', …; got {list(raw)}"
        ) from None
    if sorted(by_index) != list(range(len(by_index))):
        raise SegfuseInputError(
            f"{source}: '{key}' indices must be 0..{len(by_index) - 1}, got {sorted(by_index)}"
        )
    return [by_index[i] for i in range(len(by_index))]


# --------------------------------------------------------------------------- readers


def _read_msd(root: Path, meta: dict[str, Any], source: Path, key: str = "training") -> _RawDataset:
    """``key``: the case list to read, ``"training"`` or ``"test"`` (image paths, no labels)."""
    modalities = _unique_names(_index_map(meta["modality"], "modality", source))
    training = meta.get(key, [])
    if not isinstance(training, list):
        raise SegfuseInputError(f"{source}: '{key}' must be a list, got {type(training)}")
    multi = len(modalities) > 1
    cases: list[_RawCase] = []
    for i, entry in enumerate(training):
        if isinstance(entry, str):  # some exports list bare image paths
            entry = {"image": entry}
        if not isinstance(entry, Mapping) or "image" not in entry:
            raise SegfuseInputError(
                f"{source}: {key}[{i}] must be an object with 'image', got {entry!r}"
            )
        image = _resolve(root, entry["image"])
        label = entry.get("label")
        scans = {
            name: ImageRef(image, channel=c if multi else None) for c, name in enumerate(modalities)
        }
        cases.append(
            _RawCase(
                case_id=_strip_image_suffix(image.name),
                scans=scans,
                label=_resolve(root, label) if label else None,
                origin=f"{source.name} {key}[{i}]",
            )
        )
    labels = meta.get("labels")
    labels = _normalise_labels(labels, source) if labels else None
    return _RawDataset(root, "msd", source, modalities, cases, labels=labels, required_scans=True)


def _read_nnunet(root: Path, meta: dict[str, Any], source: Path, images: str = "imagesTr") -> _RawDataset:
    """``images``: the images folder, ``"imagesTr"`` or ``"imagesTs"`` (labels from ``labelsTr``/``labelsTs``)."""
    channels = _unique_names(_index_map(meta["channel_names"], "channel_names", source))
    ending = str(meta.get("file_ending", ".nii.gz"))
    raw_labels = meta.get("labels") or {}
    if not isinstance(raw_labels, Mapping):
        raise SegfuseInputError(f"{source}: 'labels' must be an object, got {raw_labels!r}")
    regions = [name for name, value in raw_labels.items() if not isinstance(value, int)]
    if regions:
        raise SegfuseInputError(
            f"{source}: labels {regions} are not single integer values (nnU-Net "
            f"region-based labels are not supported); got {dict(raw_labels)}"
        )
    by_value = {value: str(name) for name, value in raw_labels.items()}
    if len(by_value) != len(raw_labels):
        dupes = [v for v, n in Counter(raw_labels.values()).items() if n > 1]
        raise SegfuseInputError(f"{source}: label values {dupes} are given to several names")

    images_dir = root / images
    if not images_dir.is_dir():
        raise SegfuseInputError(f"{root}: nnU-Net dataset has no {images}/ folder")
    pattern = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending) + "$")
    found: dict[str, set[int]] = {}
    for path in images_dir.iterdir():
        if path.name.startswith("."):  # macOS "._x" resource forks, editor files
            continue
        match = pattern.match(path.name)
        if match:
            found.setdefault(match["case"], set()).add(int(match["channel"]))
    if not found:
        raise SegfuseInputError(
            f"{images_dir}: no images named {{case}}_{{XXXX}}{ending} (file_ending from "
            f"{source.name})"
        )
    extra = sorted(
        f"{case}_{c:04d}{ending}" for case, cs in found.items() for c in cs if c >= len(channels)
    )
    if extra:
        raise SegfuseInputError(
            f"{images_dir}: channel indices beyond channel_names "
            f"({len(channels)} channels: {channels}):{_listing(extra)}"
        )
    labels_dir = root / images.replace("images", "labels", 1)
    cases = [
        _RawCase(
            case_id=case,
            # Every channel is referenced; a missing file is then reported as missing.
            scans={
                name: ImageRef(images_dir / f"{case}_{c:04d}{ending}")
                for c, name in enumerate(channels)
            },
            # Labels are found by convention; read_dataset drops a missing one
            # when labels are not required.
            label=labels_dir / f"{case}{ending}",
            origin=f"{images}/{case}_*{ending}",
        )
        for case in sorted(found)
    ]
    labels = _normalise_labels(by_value, source) if by_value else None
    return _RawDataset(root, "nnunet", source, channels, cases, labels=labels, required_scans=True)


def _read_csv_manifest(path: Path, require_labels: bool) -> _RawDataset:
    base = path.parent
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise SegfuseInputError(f"{path}: manifest is empty") from None
        rows = [(i + 2, row) for i, row in enumerate(reader) if any(c.strip() for c in row)]
    dupes = sorted(h for h, n in Counter(header).items() if n > 1)
    if dupes or "" in header:
        raise SegfuseInputError(f"{path}: column names must be unique and non-empty: {header}")
    primary_cols = [h for h in ("primary", "image") if h in header]
    if "case_id" not in header or len(primary_cols) != 1:
        raise SegfuseInputError(
            f"{path}: manifest needs columns 'case_id' and one of 'primary'/'image' "
            f"(plus 'label' and auxiliary columns); got {header}"
        )
    primary_col = primary_cols[0]
    if require_labels and "label" not in header:
        raise SegfuseInputError(
            f"{path}: manifest has no 'label' column (columns: {header}); pass "
            f"require_labels=False to read unlabelled cases"
        )
    aux_cols = [h for h in header if h not in {"case_id", primary_col, "label"}]
    cases: list[_RawCase] = []
    for line, row in rows:
        if len(row) != len(header):
            raise SegfuseInputError(
                f"{path}, line {line}: expected {len(header)} cells ({header}), got {len(row)}"
            )
        cells = {h: c.strip() for h, c in zip(header, row, strict=True)}
        if not cells["case_id"]:
            raise SegfuseInputError(f"{path}, line {line}: empty case_id")
        cases.append(
            _RawCase(
                case_id=cells["case_id"],
                scans={
                    name: ImageRef(_resolve(base, cells[name]))
                    for name in (primary_col, *aux_cols)
                    if cells[name]
                },
                label=_resolve(base, cells["label"]) if cells.get("label") else None,
                origin=f"{path.name} line {line}",
            )
        )
    return _RawDataset(base, "manifest", path, [primary_col, *aux_cols], cases)


_YAML_TOP_KEYS = {"labels", "primary_name", "cases", "name", "description"}
_YAML_CASE_KEYS = {"case_id", "primary", "image", "label", "aux"}


def _read_yaml_manifest(path: Path) -> _RawDataset:
    base = path.parent
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SegfuseInputError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("cases"), list):
        raise SegfuseInputError(
            f"{path}: a YAML manifest must be a mapping with a 'cases' list "
            f"(and optional 'labels', 'primary_name')"
        )
    unknown = sorted(set(data) - _YAML_TOP_KEYS)
    if unknown:
        raise SegfuseInputError(
            f"{path}: unknown top-level keys {unknown}; allowed: {sorted(_YAML_TOP_KEYS)}"
        )
    primary_name = str(data.get("primary_name") or "primary")
    aux_names: list[str] = []
    cases: list[_RawCase] = []
    for i, entry in enumerate(data["cases"]):
        where = f"{path}, cases[{i}]"
        if not isinstance(entry, Mapping):
            raise SegfuseInputError(f"{where}: expected a mapping, got {entry!r}")
        unknown = sorted(set(entry) - _YAML_CASE_KEYS)
        if unknown:
            raise SegfuseInputError(
                f"{where}: unknown keys {unknown}; allowed: {sorted(_YAML_CASE_KEYS)}"
            )
        if "primary" in entry and "image" in entry:
            raise SegfuseInputError(f"{where}: give 'primary' or 'image', not both")
        if entry.get("case_id") in (None, ""):
            raise SegfuseInputError(f"{where}: missing case_id")
        aux = entry.get("aux") or {}
        if not isinstance(aux, Mapping):
            raise SegfuseInputError(f"{where}: 'aux' must map name → path, got {aux!r}")
        scans: dict[str, ImageRef] = {}
        image = entry.get("primary", entry.get("image"))
        if image:
            scans[primary_name] = ImageRef(_resolve(base, image))
        for name, value in aux.items():
            name = str(name)
            if name == primary_name:
                raise SegfuseInputError(
                    f"{where}: auxiliary named {name!r} clashes with primary_name"
                )
            if name not in aux_names:
                aux_names.append(name)
            if value:  # null/empty = this case lacks the auxiliary
                scans[name] = ImageRef(_resolve(base, value))
        label = entry.get("label")
        cases.append(
            _RawCase(
                case_id=str(entry["case_id"]),
                scans=scans,
                label=_resolve(base, label) if label else None,
                origin=f"{path.name} cases[{i}]",
            )
        )
    labels = data.get("labels")
    if labels is not None and not isinstance(labels, Mapping):
        raise SegfuseInputError(f"{path}: 'labels' must map value → name, got {labels!r}")
    labels = _normalise_labels(labels, path) if labels else None
    return _RawDataset(base, "manifest", path, [primary_name, *aux_names], cases, labels=labels)

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _channel_groups(
    folder: Path, stems: Sequence[str], names: Sequence[str] | None
) -> dict[str, dict[int, str]] | None:
    """``{case: {channel: stem}}`` when the stems read as nnU-Net ``{case}_{XXXX}`` channel files, else ``None``.

    They do when every stem ends in a 4-digit index and: for a one-channel model
    every index is ``0000``; for a model of several channels (``names``) always, an
    index beyond them being an error; without names, when every case has the same
    channels ``0..n-1``. ``patient_0001`` … ``patient_0099`` of a one-channel model
    are therefore single files, not one case with 99 channels.
    """
    groups: dict[str, dict[int, str]] = {}
    for stem in stems:
        match = _CHANNEL_FILE.match(stem)
        if match is None:
            return None
        groups.setdefault(match["case"], {})[int(match["channel"])] = stem
    indices = {c for g in groups.values() for c in g}
    if names is None:
        sets = {tuple(sorted(g)) for g in groups.values()}
        return groups if len(sets) == 1 and next(iter(sets)) == tuple(range(len(next(iter(sets))))) else None
    if len(names) == 1:
        return groups if indices == {0} else None
    beyond = sorted(g[c] for g in groups.values() for c in g if c >= len(names))
    if beyond:
        raise SegfuseInputError(
            f"{folder}: files named as nnU-Net channels beyond the model's {len(names)} channels "
            f"({list(names)}):{_listing(beyond)}"
        )
    return groups


def _read_image_folder(
    folder: Path, channel_names: Sequence[str] | None, primary: str | None
) -> _RawDataset:
    """A folder of images without labels: an MSD or nnU-Net ``imagesTs``, or a plain folder.

    * The parent holds an nnU-Net ``dataset.json`` (``channel_names``): the folder
      is read as that dataset's images folder (``{case}_{XXXX}{file_ending}``).
    * The parent holds a decathlon ``dataset.json`` (``modality``): for a folder
      named ``imagesTs`` its ``test`` list when given, else every image in the
      folder; each image holds the declared modalities (4D when several).
    * Otherwise a plain folder: files named ``{case}_{XXXX}.ext`` are channel
      ``XXXX`` of ``case``, channel ``i`` being modality ``channel_names[i]`` (see
      :func:`_channel_groups` for when names are read this way); any other file is
      one case of a single modality, named ``primary`` (default ``"image"``).
    """
    parent_meta = folder.parent / "dataset.json"
    meta = _load_json(parent_meta) if parent_meta.is_file() else {}
    if "channel_names" in meta:
        return _read_nnunet(folder.parent, meta, parent_meta, images=folder.name)
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(_IMAGE_SUFFIXES)
    )
    if "modality" in meta:
        if folder.name == "imagesTs" and meta.get("test"):
            return _read_msd(folder.parent, meta, parent_meta, key="test")
        listed = {"modality": meta["modality"], "test": [str(p) for p in files]}
        return _read_msd(folder, listed, parent_meta, key="test")
    if not files:
        raise SegfuseInputError(
            f"{folder}: no dataset.json in this folder and no images in it "
            f"({', '.join(_IMAGE_SUFFIXES)}); give a decathlon/nnU-Net folder, an images folder "
            f"or a .csv/.yaml manifest"
        )
    stems = [_strip_image_suffix(p.name) for p in files]
    by_stem = dict(zip(stems, files, strict=True))
    groups = _channel_groups(folder, stems, channel_names)
    if groups is None:
        name = primary or "image"
        cases = [
            _RawCase(case_id=stem, scans={name: ImageRef(path)}, label=None, origin=path.name)
            for stem, path in by_stem.items()
        ]
        modalities = [name]
    else:
        width = max(c for g in groups.values() for c in g) + 1
        modalities = list(channel_names) if channel_names is not None else [f"channel_{i:04d}" for i in range(width)]
        cases = [
            _RawCase(
                case_id=case,
                scans={modalities[c]: ImageRef(by_stem[stem]) for c, stem in sorted(channels.items())},
                label=None,
                origin=f"{case}_*",
            )
            for case, channels in sorted(groups.items())
        ]
    default = primary if primary in modalities else ""  # else the first modality
    return _RawDataset(folder, "folder", folder, modalities, cases, default_primary=default)


def _read_raw(
    source: Path, require_labels: bool, channel_names: Sequence[str] | None = None, primary: str | None = None
) -> _RawDataset:
    if source.is_file() and source.name == "dataset.json":
        source = source.parent
    if source.is_file():
        suffix = source.suffix.lower()
        if suffix == ".csv":
            return _read_csv_manifest(source, require_labels)
        if suffix in {".yaml", ".yml"}:
            return _read_yaml_manifest(source)
        raise SegfuseInputError(
            f"{source}: not a dataset: expected a folder with dataset.json or a manifest "
            f"ending in {sorted(_MANIFEST_SUFFIXES)}"
        )
    if not source.is_dir():
        raise SegfuseInputError(f"{source}: dataset folder or manifest does not exist")
    meta_path = source / "dataset.json"
    if not meta_path.is_file():
        return _read_image_folder(source, channel_names, primary)
    meta = _load_json(meta_path)
    if "channel_names" in meta:
        return _read_nnunet(source, meta, meta_path)
    if "modality" in meta and "training" in meta:
        return _read_msd(source, meta, meta_path)
    raise SegfuseInputError(
        f"{meta_path}: unrecognised dataset.json: expected 'channel_names' (nnU-Net v2) or "
        f"'modality' and 'training' (Medical Segmentation Decathlon); got keys {sorted(meta)}"
    )


# --------------------------------------------------------------------------- public API


def read_dataset(
    source: Path | str,
    *,
    primary: str | None = None,
    aux: Sequence[str] | None = None,
    require_labels: bool = True,
    labels: Mapping[int, str] | None = None,
    channel_names: Sequence[str] | None = None,
) -> Dataset:
    """Read a decathlon folder, an nnU-Net v2 raw folder or a CSV/YAML manifest.

    The layout is detected from ``source`` (see the module docstring). Files are
    listed and checked for existence, not opened.

    Args:
        source: dataset folder (holding ``dataset.json``), that ``dataset.json``,
            or a ``.csv``/``.yaml``/``.yml`` manifest.
        primary: name of the modality to use as the primary scan; default the
            layout's first (decathlon modality ``"0"``, nnU-Net channel 0, the
            manifest's primary column). Names are lower-cased modality strings
            for decathlon/nnU-Net (``"flair"``, ``"t1w"``).
        aux: names of the auxiliary modalities to keep, in this order; default all
            modalities except the primary; ``[]`` keeps none.
        require_labels: every case must have a label map; with ``False`` cases
            without one get ``label=None``.
        labels: label value → name, for sources that declare none (a CSV manifest,
            a YAML manifest without ``labels``); default ``{0: "background",
            1: "foreground"}``. A source that declares labels must agree with it.
        channel_names: modality of each channel index, for a plain folder of
            ``{case}_{XXXX}`` files (the order a model was trained with); default
            ``channel_0000``, ``channel_0001``, ….

    Returns:
        The :class:`Dataset`, cases in the order the source lists them.

    Raises:
        SegfuseInputError: unknown layout, unknown modality name (the available
            names are listed), duplicate case ids, missing labels, or referenced
            files that do not exist (all listed at once: the first 20 and a count).

    Example:
        >>> ds = read_dataset("../shared/data/hippocampus")  # doctest: +SKIP
        >>> ds.layout, len(ds.cases), ds.labels, ds.primary_name
        ('msd', 200, {0: 'background', 1: 'Anterior', 2: 'Posterior'}, 'mri')
    """
    source = Path(source).expanduser().resolve()
    raw = _read_raw(source, require_labels, channel_names, primary)

    # Labels: the source's declaration, else the argument, else the default.
    if raw.labels is not None:
        if labels is not None and _normalise_labels(labels, "labels argument") != raw.labels:
            raise SegfuseInputError(
                f"{raw.source}: declares labels {raw.labels}, but the labels argument says "
                f"{dict(labels)}; drop the argument or make them agree"
            )
        dataset_labels = raw.labels
    else:
        dataset_labels = _normalise_labels(
            labels if labels is not None else DEFAULT_LABELS, "labels argument"
        )

    # Modality selection.
    available = raw.modalities
    primary_name = raw.default_primary if primary is None else primary
    if primary_name not in available:
        raise SegfuseInputError(
            f"{raw.source}: unknown primary modality {primary_name!r}; available: {available}"
        )
    if aux is None:
        aux_names = [m for m in available if m != primary_name]
    else:
        if isinstance(aux, str):
            raise SegfuseInputError(f"aux must be a list of names, got the string {aux!r}")
        aux_names = list(aux)
        unknown = [a for a in aux_names if a not in available]
        if unknown:
            raise SegfuseInputError(
                f"{raw.source}: unknown auxiliary modalities {unknown}; available: {available}"
            )
        if primary_name in aux_names:
            raise SegfuseInputError(
                f"{raw.source}: {primary_name!r} is the primary and cannot also be an "
                f"auxiliary (aux={aux_names})"
            )
        repeated = sorted(a for a, n in Counter(aux_names).items() if n > 1)
        if repeated:
            raise SegfuseInputError(f"aux lists {repeated} more than once: {aux_names}")

    # Duplicate ids.
    counts = Counter(c.case_id for c in raw.cases)
    duplicates = sorted(cid for cid, n in counts.items() if n > 1)
    if duplicates:
        where = [f"{c.case_id} ({c.origin})" for c in raw.cases if c.case_id in duplicates]
        raise SegfuseInputError(
            f"{raw.source}: {len(duplicates)} case ids appear more than once:{_listing(where)}"
        )
    if not raw.cases:
        raise SegfuseInputError(f"{raw.source}: the dataset lists no cases")

    # Cases lacking something the selection needs.
    no_primary = [f"{c.case_id} ({c.origin})" for c in raw.cases if primary_name not in c.scans]
    if no_primary:
        raise SegfuseInputError(
            f"{raw.source}: {len(no_primary)} cases have no {primary_name!r} scan, which is "
            f"the primary:{_listing(no_primary)}"
        )
    if require_labels:
        no_label = [f"{c.case_id} ({c.origin})" for c in raw.cases if c.label is None]
        if no_label:
            raise SegfuseInputError(
                f"{raw.source}: {len(no_label)} cases have no label (pass "
                f"require_labels=False to allow this):{_listing(no_label)}"
            )

    # Every referenced file must exist; report all of them at once.
    cases: list[Case] = []
    missing: dict[Path, str] = {}  # path → what it is; a 4D MSD file is listed once
    checked: dict[Path, bool] = {}

    def exists(path: Path) -> bool:
        if path not in checked:
            checked[path] = path.is_file()
        return checked[path]

    for c in raw.cases:
        refs = {name: c.scans[name] for name in aux_names if name in c.scans}
        label = c.label
        if label is not None and not exists(label):
            # nnU-Net labels are found by convention, not listed; unlabelled is fine then.
            if raw.layout == "nnunet" and not require_labels:
                label = None
            else:
                missing.setdefault(label, f"label of {c.case_id}")
        for name, ref in [(primary_name, c.scans[primary_name]), *refs.items()]:
            if not exists(ref.path):
                missing.setdefault(ref.path, f"{name} of {c.case_id}")
        cases.append(Case(c.case_id, c.scans[primary_name], refs, label))
    if missing:
        raise SegfuseInputError(
            f"{raw.source}: {len(missing)} referenced files do not exist:"
            + _listing([f"{path} ({what})" for path, what in missing.items()])
        )

    return Dataset(
        root=raw.root,
        layout=raw.layout,
        cases=cases,
        labels=dataset_labels,
        primary_name=primary_name,
        aux_names=aux_names,
        modalities=list(raw.modalities),
    )


def split_cases(
    cases: Sequence[Case], n_val: int | float, seed: int
) -> tuple[list[Case], list[Case]]:
    """Split cases into ``(train, val)`` deterministically.

    Cases are sorted by id, then permuted with ``numpy.random.default_rng(seed)``;
    the first ``n_val`` of the permutation are the validation cases. The result
    depends only on the set of case ids, ``n_val`` and ``seed``, not on the order
    given. Both lists come back sorted by case id.

    Args:
        cases: the cases to split (ids must be unique).
        n_val: a number of validation cases (``int``, ``0 <= n_val < len(cases)``)
            or a fraction (``float`` in ``[0, 1)``, rounded, at least one case when
            positive).
        seed: random seed; state it with any reported result.

    Example:
        >>> train, val = split_cases(ds.cases, 0.2, seed=0)  # doctest: +SKIP
    """
    ordered = sorted(cases, key=lambda c: c.case_id)
    n = len(ordered)
    if len({c.case_id for c in ordered}) != n:
        raise SegfuseInputError("split_cases: case ids must be unique")
    if isinstance(n_val, bool) or not isinstance(n_val, (int, float, np.integer, np.floating)):
        raise SegfuseInputError(f"split_cases: n_val must be an int or a float, got {n_val!r}")
    if isinstance(n_val, (float, np.floating)):
        if not 0.0 <= float(n_val) < 1.0:
            raise SegfuseInputError(
                f"split_cases: a fractional n_val must be in [0, 1), got {n_val}"
            )
        count = round(float(n_val) * n)
        if n_val > 0:
            count = max(1, count)
    else:
        count = int(n_val)
    if not 0 <= count < n:
        raise SegfuseInputError(
            f"split_cases: n_val={n_val} needs 0 <= n_val < number of cases ({n}) so that "
            f"training keeps at least one case"
        )
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:count].tolist())
    train = [c for i, c in enumerate(ordered) if i not in val_idx]
    val = [c for i, c in enumerate(ordered) if i in val_idx]
    return train, val
