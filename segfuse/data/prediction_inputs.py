"""What ``predict --dataset`` reads: any layout, its scans named the way the model names them.

A model knows its inputs by name: a primary (``"mri"`` for a model trained on
the decathlon hippocampus folder, ``"t1"``, …) and auxiliaries (``"flair"``).
Test data rarely uses those names:

* a **CSV or YAML manifest**'s primary column (``image`` or ``primary``, or the
  YAML's ``primary_name``) is the model's primary whatever either is called; the
  other columns are auxiliaries matched by name, and a column the model does not
  take is an error naming the columns and the model's inputs;
* a **folder with a** ``dataset.json`` (decathlon, nnU-Net raw) is read as
  :func:`~segfuse.data.layouts.read_dataset` reads it for training, its
  modalities selected by the model's names;
* an **images folder** (an MSD or nnU-Net ``imagesTs``, or a plain folder): see
  :func:`segfuse.data.layout_readers._read_image_folder`. Plain ``{case}_{XXXX}``
  files are named by the channel order the model was trained with
  (``cfg.data.modalities``, recorded by ``train``; for older checkpoints
  ``[primary, *aux]``). Auxiliaries the folder does not hold are left out: the
  model then needs modality dropout, as for any case that lacks one.

Labels are never required.

Example:
    >>> ds = read_for_prediction("tests.csv", primary="mri", aux=[])  # doctest: +SKIP
    >>> ds.primary_name, ds.cases[0].primary.path.name  # doctest: +SKIP
    ('mri', 'case_0.nii.gz')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from segfuse.data.cases import Dataset
from segfuse.data.layouts import read_dataset
from segfuse.io.errors import SegfuseInputError

__all__ = ["read_for_prediction"]

_MANIFESTS = {".csv", ".yaml", ".yml"}


def _describe_model(primary: str | None, aux: Sequence[str]) -> str:
    return f"primary {primary!r} and auxiliaries {list(aux)}" if aux else f"primary {primary!r} and no auxiliary"


def _from_manifest(path: Path, primary: str | None, aux: Sequence[str]) -> Dataset:
    try:
        dataset = read_dataset(path, require_labels=False)
    except SegfuseInputError as exc:
        raise SegfuseInputError(
            f"{exc}; this model takes {_describe_model(primary, aux)}: give its primary as the 'image' "
            f"(or 'primary') column and each auxiliary as a column of that name"
        ) from None
    columns = [dataset.primary_name, *dataset.aux_names]
    unknown = [name for name in dataset.aux_names if name not in aux]
    if unknown:
        raise SegfuseInputError(
            f"{path}: scan columns {columns}: {unknown} match no input of this model, which takes "
            f"{_describe_model(primary, aux)}; the {dataset.primary_name!r} column is read as the primary "
            f"{primary!r}, auxiliary columns must be named after the model's auxiliaries"
        )
    return dataclasses.replace(dataset, primary_name=primary or dataset.primary_name)


def _from_images_folder(folder: Path, primary: str | None, aux: Sequence[str], channel_names: Sequence[str]) -> Dataset:
    dataset = read_dataset(folder, primary=primary, require_labels=False, channel_names=channel_names)
    keep = [name for name in aux if name in dataset.modalities]
    cases = [dataclasses.replace(c, aux={k: v for k, v in c.aux.items() if k in keep}) for c in dataset.cases]
    return dataclasses.replace(dataset, cases=cases, aux_names=keep)


def read_for_prediction(
    source: str | Path,
    *,
    primary: str | None,
    aux: Sequence[str] = (),
    channel_names: Sequence[str] | None = None,
) -> Dataset:
    """Unlabelled cases of ``source`` with their scans named by the model's input names.

    Args:
        source: a CSV/YAML manifest, a folder holding ``dataset.json``, or an images folder.
        primary: the model's primary modality (``cfg.data.primary``; ``None``: the source's first).
        aux: the model's auxiliaries (``cfg.data.aux`` names).
        channel_names: every modality of the model's training dataset in channel order
            (``cfg.data.modalities``); ``None``: ``[primary, *aux]``.

    Returns:
        The :class:`~segfuse.data.cases.Dataset`; ``primary_name`` is ``primary`` and each
        case's ``aux`` holds only the model's auxiliaries it has.

    Raises:
        SegfuseInputError: a manifest column or a channel that matches no model input (the
            columns and the model's inputs are named), and whatever ``read_dataset`` raises.
    """
    source = Path(source).expanduser()
    aux = list(aux)
    if source.is_file() and source.suffix.lower() in _MANIFESTS:
        return _from_manifest(source, primary, aux)
    if source.is_dir() and not (source / "dataset.json").is_file():
        return _from_images_folder(source, primary, aux, channel_names or [primary or "image", *aux])
    return read_dataset(source, primary=primary, aux=aux, require_labels=False)
