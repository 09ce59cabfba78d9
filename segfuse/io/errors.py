"""Exceptions raised by segfuse for problems with the user's input."""

from __future__ import annotations

__all__ = ["SegfuseInputError", "SegfuseWriteError"]


class SegfuseInputError(ValueError):
    """A problem with user input (a file, a folder, a value), not a bug in segfuse.

    The message names the file, the problem and the values involved (expected vs
    received), e.g. ``"scan.nii.gz: contains 12 NaN/Inf voxels"``. The CLI prints
    it as one line and exits with code 2.
    """


class SegfuseWriteError(OSError):
    """An output file could not be written (disk full, no permission): the message names it.

    Raised by :mod:`segfuse.io.atomic` in place of the bare ``OSError``, whose
    message often names only a temporary file or nothing at all. The target is
    left as it was and no temporary file remains. The CLI prints it as one line
    and exits with code 1.
    """

    def __str__(self) -> str:
        return str(self.strerror)  # "out/seg.nii.gz: cannot write it (No space left on device); ..."
