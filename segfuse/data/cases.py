"""What a dataset is made of, whatever its layout: scans on disk, cases, the dataset.

Example:
    >>> Case("c0", ImageRef(Path("t1.nii.gz")), aux={"flair": ImageRef(Path("flair.nii.gz"))}).aux["flair"].path
    PosixPath('flair.nii.gz')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Case", "Dataset", "ImageRef"]


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
