"""Label-map validation: integer values that the dataset declares, nothing else.

Label files come in many dtypes: the decathlon ships uint8, BraTS ships float32
masks holding 0.0/1.0, some converters write int16 or float64. Every label array
goes through :func:`validate_label_array` once, right after it is read, so the
rest of segfuse sees one compact unsigned integer array whose values are known.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np

from segfuse.io.errors import SegfuseInputError

__all__ = ["compact_label_dtype", "validate_label_array"]

# Up to this many undeclared candidate values are looked for one by one (a fast
# compare each); beyond it np.unique sorts the array.
_SCAN_LIMIT = 64
_SHOW = 8  # how many offending values a message lists


def _fmt(values: np.ndarray) -> str:
    """Format the first few values of a 1D array compactly (0.5, not 0.5000000)."""
    shown = ", ".join(f"{float(v):.6g}" for v in values[:_SHOW])
    more = f", … ({len(values) - _SHOW} more)" if len(values) > _SHOW else ""
    return shown + more


def compact_label_dtype(low: int, high: int) -> np.dtype:
    """The smallest integer dtype holding ``[low, high]``, unsigned when ``low >= 0``.

    Example:
        >>> compact_label_dtype(0, 2), compact_label_dtype(0, 300)
        (dtype('uint8'), dtype('uint16'))
    """
    candidates = (
        (np.uint8, np.uint16, np.uint32, np.uint64)
        if low >= 0
        else (np.int8, np.int16, np.int32, np.int64)
    )
    for dtype in candidates:
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _undeclared_values(array: np.ndarray, low: int, high: int, declared: set[int]) -> list[int]:
    """Values present in the integer ``array`` (range ``[low, high]``) but not declared.

    Only candidates in ``[low, high]`` that are not declared are looked for, so an
    ordinary label map costs no more than its min/max.
    """
    candidates = [v for v in declared if low <= v <= high]
    if high - low + 1 - len(candidates) <= _SCAN_LIMIT:
        return [v for v in range(low, high + 1) if v not in declared and bool((array == v).any())]
    return sorted(set(np.unique(array).tolist()) - declared)


def validate_label_array(
    array: np.ndarray, declared: Collection[int], path: Path | str
) -> np.ndarray:
    """Check a label map against the declared label values and return it compacted.

    Float arrays are accepted when every value is a whole number (BraTS masks are
    float32 0/1); booleans count as 0/1. The result has the smallest integer dtype
    that holds the values present (``uint8`` for ordinary label maps) and the same
    shape; an array that already has that dtype is returned as is, not copied.

    Args:
        array: label map of any shape, e.g. ``(X, Y, Z)``.
        declared: the label values the dataset declares, background 0 included.
        path: the file the array came from; named in every error message.

    Returns:
        The label map as a compact integer array.

    Raises:
        SegfuseInputError: the array is not numeric, holds NaN/inf or non-integer
            values (the first few are listed with a count), or holds values that
            are not declared (those values and the declared set are listed).

    Example:
        >>> validate_label_array(np.array([0.0, 1.0], np.float32), {0, 1}, "m.nii.gz")
        array([0, 1], dtype=uint8)
    """
    array = np.asarray(array)
    declared_set = {int(v) for v in declared}
    declared_txt = "{" + ", ".join(str(v) for v in sorted(declared_set)) + "}"

    if array.dtype == np.bool_:
        return array.view(np.uint8)
    is_float = np.issubdtype(array.dtype, np.floating)
    if not (is_float or np.issubdtype(array.dtype, np.integer)):
        raise SegfuseInputError(
            f"{path}: label map must be an integer or float array, got dtype {array.dtype}"
        )
    if array.size == 0:
        return array.astype(np.uint8)

    low_f, high_f = float(array.min()), float(array.max())  # NaN propagates
    compact: np.ndarray | None = None
    if (
        is_float
        and np.isfinite(low_f)
        and np.isfinite(high_f)
        and max(abs(low_f), abs(high_f)) < 2.0**62
    ):
        target = compact_label_dtype(int(np.floor(low_f)), int(np.ceil(high_f)))
        compact = array.astype(target)
        whole = bool((compact == array).all())
    else:
        whole = not is_float
    if is_float and not whole:
        bad = array != np.rint(array)  # NaN compares unequal too
        if bad.any():
            bad_values = np.unique(array[bad])
            raise SegfuseInputError(
                f"{path}: label map must hold whole-number label values "
                f"{declared_txt}, but {int(bad.sum())} voxels hold "
                f"{len(bad_values)} distinct non-integer values: {_fmt(bad_values)} "
                f"(dtype {array.dtype}). Is this an intensity image or a "
                f"probability map rather than a label map?"
            )
        # Whole numbers too large for any integer type: undeclared anyway.
        raise SegfuseInputError(
            f"{path}: label map holds values up to {max(abs(low_f), abs(high_f)):.6g}, "
            f"far outside the declared labels {declared_txt}"
        )
    if compact is None:
        compact = array
    low, high = int(compact.min()), int(compact.max())

    undeclared = _undeclared_values(compact, low, high, declared_set)
    if undeclared:
        n_voxels = int(np.isin(compact, undeclared).sum())
        raise SegfuseInputError(
            f"{path}: label map holds values {_fmt(np.array(undeclared))} that are not "
            f"declared ({n_voxels} voxels); declared labels are {declared_txt}. Fix the "
            f"label file or declare these labels in the dataset description."
        )
    return compact.astype(compact_label_dtype(low, high), copy=False)
