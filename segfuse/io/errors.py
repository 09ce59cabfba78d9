"""Exceptions raised by segfuse for problems with the user's input."""

from __future__ import annotations

__all__ = ["SegfuseInputError"]


class SegfuseInputError(ValueError):
    """A problem with user input (a file, a folder, a value), not a bug in segfuse.

    The message names the file, the problem and the values involved (expected vs
    received), e.g. ``"scan.nii.gz: contains 12 NaN/Inf voxels"``. The CLI prints
    it as one line and exits with code 2.
    """
