"""Label-map validation: whole numbers, declared values, compact dtype."""

from __future__ import annotations

import numpy as np
import pytest

from segfuse.data.labels import compact_label_dtype, validate_label_array
from segfuse.io.errors import SegfuseInputError


@pytest.mark.parametrize(
    ("array", "expected_dtype"),
    [
        [np.array([0.0, 1.0, 1.0], np.float32), np.uint8],  # BraTS masks
        [np.array([0, 1, 2], np.int64), np.uint8],
        [np.array([0, 300], np.int32), np.uint16],
        [np.array([True, False]), np.uint8],
        [np.array([-0.0, 2.0], np.float64), np.uint8],
    ],
)
def test_accepts_integer_values_and_compacts(array: np.ndarray, expected_dtype: type) -> None:
    out = validate_label_array(array, {0, 1, 2, 300}, "mask.nii.gz")
    assert out.dtype == expected_dtype
    assert out.shape == array.shape
    np.testing.assert_array_equal(out, array.astype(np.int64))


def test_keeps_shape_of_3d_volume() -> None:
    mask = np.zeros((5, 6, 7), np.float32)
    mask[1:3, 2:4, 3:5] = 1.0
    out = validate_label_array(mask, [0, 1], "whole_tumour.nii.gz")
    assert out.dtype == np.uint8 and out.shape == (5, 6, 7) and out.sum() == 8


def test_already_compact_array_is_not_copied() -> None:
    mask = np.array([0, 1], np.uint8)
    assert validate_label_array(mask, {0, 1}, "m.nii.gz") is mask


def test_non_integer_value_rejected_with_value_and_file() -> None:
    mask = np.array([0.0, 0.5, 1.0, 0.5], np.float32)
    with pytest.raises(SegfuseInputError, match=r"seg\.nii\.gz.*non-integer.*0\.5") as info:
        validate_label_array(mask, {0, 1}, "seg.nii.gz")
    assert "2 voxels" in str(info.value)


def test_many_non_integer_values_listed_with_count() -> None:
    mask = np.linspace(0.01, 0.99, 50).astype(np.float32)
    with pytest.raises(SegfuseInputError, match=r"50 distinct non-integer values.*42 more"):
        validate_label_array(mask, {0, 1}, "probabilities.nii.gz")


def test_nan_rejected() -> None:
    with pytest.raises(SegfuseInputError, match=r"non-integer.*nan"):
        validate_label_array(np.array([0.0, np.nan]), {0, 1}, "m.nii.gz")


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_undeclared_value_rejected_with_declared_set(dtype: type) -> None:
    mask = np.array([0, 1, 3, 3], dtype)
    with pytest.raises(SegfuseInputError, match=r"lab\.nii\.gz.*values 3 .*\{0, 1, 2\}") as info:
        validate_label_array(mask, {0, 1, 2}, "lab.nii.gz")
    assert "2 voxels" in str(info.value)


def test_negative_and_large_values_rejected() -> None:
    with pytest.raises(SegfuseInputError, match=r"-1"):
        validate_label_array(np.array([0, -1], np.int16), {0, 1}, "m.nii.gz")
    with pytest.raises(SegfuseInputError, match=r"70000"):
        validate_label_array(np.array([0, 70000], np.int32), {0, 1}, "m.nii.gz")
    with pytest.raises(SegfuseInputError, match=r"outside the declared labels"):
        validate_label_array(np.array([0.0, 1e30]), {0, 1}, "m.nii.gz")


def test_non_numeric_rejected() -> None:
    with pytest.raises(SegfuseInputError, match=r"dtype"):
        validate_label_array(np.array(["a"]), {0}, "m.nii.gz")


def test_empty_array() -> None:
    assert validate_label_array(np.zeros((0, 3), np.float32), {0}, "m").dtype == np.uint8


def test_compact_label_dtype() -> None:
    assert compact_label_dtype(0, 255) == np.uint8
    assert compact_label_dtype(0, 256) == np.uint16
    assert compact_label_dtype(-1, 5) == np.int8
