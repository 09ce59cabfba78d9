"""The dataset layouts segfuse reads, each turned into one :class:`RawDataset`.

:func:`read_raw` detects the layout; :func:`segfuse.data.layouts.read_dataset`
then selects the modalities and checks the files. Nothing here opens an image.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from segfuse.data.cases import ImageRef
from segfuse.io.errors import SegfuseInputError

__all__ = ["RawCase", "RawDataset", "listing", "normalise_labels", "read_raw"]

_MAX_LISTED = 20
_MANIFEST_SUFFIXES = {".csv", ".yaml", ".yml"}
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


@dataclass
class RawCase:
    """A case as a layout reader sees it, before modality selection."""

    case_id: str
    scans: dict[str, ImageRef]  # modality name → scan; absent name = missing scan
    label: Path | None
    origin: str  # where the case was declared, for messages


@dataclass
class RawDataset:
    """A dataset as a layout reader sees it: its modalities (the first is the default primary) and cases."""

    root: Path
    layout: str
    source: Path  # the file that declared the cases (dataset.json or the manifest)
    modalities: list[str]
    cases: list[RawCase]
    labels: dict[int, str] | None = None
    required_scans: bool = False  # True: a selected modality missing for a case is an error
    default_primary: str = ""  # "" = the first modality

    def __post_init__(self) -> None:
        self.default_primary = self.default_primary or self.modalities[0]


# --------------------------------------------------------------------------- helpers


def listing(items: Sequence[str], limit: int = _MAX_LISTED) -> str:
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


def normalise_labels(raw: Mapping[Any, Any], source: Path | str) -> dict[int, str]:
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


def _read_msd(root: Path, meta: dict[str, Any], source: Path, key: str = "training") -> RawDataset:
    """``key``: the case list to read, ``"training"`` or ``"test"`` (image paths, no labels)."""
    modalities = _unique_names(_index_map(meta["modality"], "modality", source))
    training = meta.get(key, [])
    if not isinstance(training, list):
        raise SegfuseInputError(f"{source}: '{key}' must be a list, got {type(training)}")
    multi = len(modalities) > 1
    cases: list[RawCase] = []
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
            RawCase(
                case_id=_strip_image_suffix(image.name),
                scans=scans,
                label=_resolve(root, label) if label else None,
                origin=f"{source.name} {key}[{i}]",
            )
        )
    labels = meta.get("labels")
    labels = normalise_labels(labels, source) if labels else None
    return RawDataset(root, "msd", source, modalities, cases, labels=labels, required_scans=True)


def _read_nnunet(root: Path, meta: dict[str, Any], source: Path, images: str = "imagesTr") -> RawDataset:
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
            f"({len(channels)} channels: {channels}):{listing(extra)}"
        )
    labels_dir = root / images.replace("images", "labels", 1)
    cases = [
        RawCase(
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
    labels = normalise_labels(by_value, source) if by_value else None
    return RawDataset(root, "nnunet", source, channels, cases, labels=labels, required_scans=True)


def _read_csv_manifest(path: Path, require_labels: bool) -> RawDataset:
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
    cases: list[RawCase] = []
    for line, row in rows:
        if len(row) != len(header):
            raise SegfuseInputError(
                f"{path}, line {line}: expected {len(header)} cells ({header}), got {len(row)}"
            )
        cells = {h: c.strip() for h, c in zip(header, row, strict=True)}
        if not cells["case_id"]:
            raise SegfuseInputError(f"{path}, line {line}: empty case_id")
        cases.append(
            RawCase(
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
    return RawDataset(base, "manifest", path, [primary_col, *aux_cols], cases)


_YAML_TOP_KEYS = {"labels", "primary_name", "cases", "name", "description"}
_YAML_CASE_KEYS = {"case_id", "primary", "image", "label", "aux"}


def _read_yaml_manifest(path: Path) -> RawDataset:
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
    cases: list[RawCase] = []
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
            RawCase(
                case_id=str(entry["case_id"]),
                scans=scans,
                label=_resolve(base, label) if label else None,
                origin=f"{path.name} cases[{i}]",
            )
        )
    labels = data.get("labels")
    if labels is not None and not isinstance(labels, Mapping):
        raise SegfuseInputError(f"{path}: 'labels' must map value → name, got {labels!r}")
    labels = normalise_labels(labels, path) if labels else None
    return RawDataset(base, "manifest", path, [primary_name, *aux_names], cases, labels=labels)

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
            f"({list(names)}):{listing(beyond)}"
        )
    return groups


def _read_image_folder(
    folder: Path, channel_names: Sequence[str] | None, primary: str | None
) -> RawDataset:
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
            RawCase(case_id=stem, scans={name: ImageRef(path)}, label=None, origin=path.name)
            for stem, path in by_stem.items()
        ]
        modalities = [name]
    else:
        width = max(c for g in groups.values() for c in g) + 1
        modalities = list(channel_names) if channel_names is not None else [f"channel_{i:04d}" for i in range(width)]
        cases = [
            RawCase(
                case_id=case,
                scans={modalities[c]: ImageRef(by_stem[stem]) for c, stem in sorted(channels.items())},
                label=None,
                origin=f"{case}_*",
            )
            for case, channels in sorted(groups.items())
        ]
    default = primary if primary in modalities else ""  # else the first modality
    return RawDataset(folder, "folder", folder, modalities, cases, default_primary=default)


def read_raw(
    source: Path, require_labels: bool, channel_names: Sequence[str] | None = None, primary: str | None = None
) -> RawDataset:
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
