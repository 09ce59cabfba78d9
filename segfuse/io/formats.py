"""Image file formats by name: which suffixes segfuse reads and writes, and what each one is.

Example:
    >>> source_format_of("scan.nii.gz"), source_format_of("scan.mhd")
    ('nifti', 'metaimage')
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["NIFTI_SUFFIXES", "READ_SUFFIXES", "SITK_FORMATS", "WRITE_SUFFIXES", "file_suffix", "source_format_of"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: Suffix → format of the files SimpleITK reads.
SITK_FORMATS = {".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "metaimage", ".mhd": "metaimage"}
READ_SUFFIXES = (*NIFTI_SUFFIXES, *SITK_FORMATS)
# Detached-header formats (.nhdr/.mhd) are not written: their data file would
# keep the temporary name used for the atomic write.
WRITE_SUFFIXES = (*NIFTI_SUFFIXES, ".nrrd", ".mha")


def file_suffix(path: Path) -> str:
    """The image suffix of ``path`` (``".nii.gz"`` whole), lower case."""
    name = path.name.lower()
    for suffix in READ_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def source_format_of(path: str | os.PathLike[str]) -> str | None:
    """``"nifti"``, ``"nrrd"`` or ``"metaimage"`` from a file name's extension, else ``None``."""
    suffix = file_suffix(Path(path))
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    return SITK_FORMATS.get(suffix)
