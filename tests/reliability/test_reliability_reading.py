"""Damaged image files: refused with the file named, never read as garbage (issue 15, failures 1, 2, 3, 5, 6)."""

from __future__ import annotations

import gzip
import logging
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from reliability_helpers import AFFINE, SHAPE, edit_header, flip_byte, gz_payload, volume, write_valid

from segfuse.cli import main
from segfuse.io.errors import SegfuseInputError
from segfuse.io.image import read_image


def _refused(path: Path, *words: str) -> str:
    with pytest.raises(SegfuseInputError) as info:
        read_image(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word.lower() in message.lower(), message
    return message


# ---------------------------------------------------------------- failure 1: damaged compressed data


def test_nifti_gz_with_a_damaged_byte_near_the_end_is_refused(valid: Path, tmp_path: Path) -> None:
    """nibabel stops decoding once it has the voxels: these damages used to be read as garbage."""
    size = valid.stat().st_size
    silently_read = 0
    for position in range(size - 40, size):  # the last deflate bytes, the CRC-32, the length
        damaged = flip_byte(valid, tmp_path / f"d{position}.nii.gz", position)
        try:  # what plain nibabel does with it
            np.asanyarray(nib.load(damaged).dataobj)
            silently_read += 1
        except Exception:
            pass
        _refused(damaged)
    assert silently_read > 0  # the damage these checks exist for


@pytest.mark.parametrize(
    ("suffix", "detached"), [(".nrrd", None), (".mha", None), (".nhdr", ".raw.gz"), (".mhd", ".zraw")]
)
def test_simpleitk_formats_with_damaged_compressed_data_are_refused(
    tmp_path: Path, suffix: str, detached: str | None
) -> None:
    """ITK returns garbage (or prints 'Uncompress failed') for these; every reader is verified."""
    image = sitk.GetImageFromArray(volume(1).transpose(2, 1, 0))
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(image, str(path), useCompression=True)
    data_file = path if detached is None else next(tmp_path.glob(f"scan{detached}"))
    assert read_image(path).shape == SHAPE
    size = data_file.stat().st_size
    original = data_file.read_bytes()
    for position in (size // 2, size - 30, size - 10, size - 3, size - 1):
        data = bytearray(original)
        data[position] ^= 0x5A
        data_file.write_bytes(bytes(data))
        _refused(path, "corrupt")
    data_file.write_bytes(original[: size - 64])
    _refused(path)


def test_damaged_scan_fails_the_cli_with_exit_2_and_no_output(valid: Path, ckpt: Path, tmp_path: Path, capsys) -> None:
    damaged = flip_byte(valid, tmp_path / "damaged.nii.gz", valid.stat().st_size - 6)
    out = tmp_path / "seg.nii.gz"
    code = main(["predict", "--checkpoint", str(ckpt), "--image", str(damaged), "--out", str(out),
                 "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and str(damaged) in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


# ---------------------------------------------------------------- failure 2: scaling beyond float32


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_scl_slope_beyond_float32_is_refused_without_numpy_warnings(tmp_path: Path, dtype) -> None:
    src = write_valid(tmp_path / "src.nii.gz", data=volume(2).astype(dtype))
    damaged = edit_header(src, tmp_path / "slope.nii.gz", scl_slope=1e37, scl_inter=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning would fail here
        _refused(damaged, "float32", "scl_slope")


def test_scl_slope_beyond_float32_fails_predict_with_one_line(valid: Path, ckpt: Path, tmp_path: Path, capfd) -> None:
    damaged = edit_header(valid, tmp_path / "slope.nii.gz", scl_slope=1e37, scl_inter=0.0)
    out = tmp_path / "seg.nii.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code = main(["predict", "--checkpoint", str(ckpt), "--image", str(damaged), "--out", str(out),
                     "--device", "cpu", "--no-progress"])
    err = capfd.readouterr().err
    assert code == 2 and "float32" in err and "Warning" not in err
    assert not out.exists()


# ---------------------------------------------------------------- failure 3: untrustworthy geometry


@pytest.mark.parametrize("pixdim", [[1, 0, 1.1, 2, 1, 0, 0, 0], [1, -1, 1.1, 2, 1, 0, 0, 0]])
def test_zero_or_negative_voxel_sizes_are_refused(valid: Path, tmp_path: Path, pixdim) -> None:
    damaged = edit_header(valid, tmp_path / "pixdim.nii.gz", pixdim=pixdim)
    _refused(damaged, "voxel sizes", str(float(pixdim[1])))


def _disagreeing(valid: Path, tmp_path: Path) -> Path:
    shifted = AFFINE.copy()
    shifted[:3, 3] += [0.0, 0.0, 6.0]  # the sform says 6 mm higher than the qform
    return edit_header(valid, tmp_path / "qs.nii.gz", srow_x=shifted[0], srow_y=shifted[1], srow_z=shifted[2])


def test_qform_and_sform_that_disagree_are_refused_by_default(valid: Path, tmp_path: Path) -> None:
    message = _refused(_disagreeing(valid, tmp_path), "qform", "sform", "disagree", "--geometry")
    assert "6 mm" in message


@pytest.mark.parametrize("rule", ["sform", "qform"])
def test_geometry_rule_chooses_one_form_and_the_output_claims_only_it(
    valid: Path, ckpt: Path, tmp_path: Path, rule: str, caplog
) -> None:
    damaged = _disagreeing(valid, tmp_path)
    raw = nib.load(damaged).header
    chosen = raw.get_sform() if rule == "sform" else raw.get_qform()
    out = tmp_path / f"seg_{rule}.nii.gz"
    with caplog.at_level(logging.WARNING):
        code = main(["predict", "--checkpoint", str(ckpt), "--image", str(damaged), "--out", str(out),
                     "--device", "cpu", "--no-progress", "--geometry", rule])
    assert code == 0
    assert any(str(damaged) in r.getMessage() and rule in r.getMessage() for r in caplog.records)
    seg = nib.load(out)
    codes = (int(seg.header["qform_code"]), int(seg.header["sform_code"]))
    assert codes == ((0, 1) if rule == "sform" else (1, 0))
    np.testing.assert_allclose(seg.affine, chosen, atol=1e-5)
    from segfuse.io.geometry_rules import geometry_rule  # here: the suite also runs against older code

    with geometry_rule(rule):
        assert read_image(damaged).shape == SHAPE


def test_no_qform_and_no_sform_warns_and_the_output_claims_no_orientation(
    valid: Path, ckpt: Path, tmp_path: Path, caplog
) -> None:
    bare = edit_header(valid, tmp_path / "bare.nii.gz", qform_code=0, sform_code=0)
    out = tmp_path / "seg.nii.gz"
    with caplog.at_level(logging.WARNING):
        code = main(["predict", "--checkpoint", str(ckpt), "--image", str(bare), "--out", str(out),
                     "--device", "cpu", "--no-progress"])
    assert code == 0
    assert any(str(bare) in r.getMessage() and "no qform or sform" in r.getMessage() for r in caplog.records)
    seg = nib.load(out)
    assert (int(seg.header["qform_code"]), int(seg.header["sform_code"])) == (0, 0)
    np.testing.assert_allclose(seg.affine, nib.load(bare).affine, atol=1e-6)


# ---------------------------------------------------------------- failure 5: unknown datatype


def test_unknown_datatype_code_names_the_file_and_the_code(valid: Path, tmp_path: Path, capsys, ckpt) -> None:
    damaged = edit_header(valid, tmp_path / "dtype.nii.gz", datatype=9999)
    _refused(damaged, "datatype", "9999")
    code = main(["predict", "--checkpoint", str(ckpt), "--image", str(damaged), "--out", str(tmp_path / "s.nii.gz"),
                 "--device", "cpu", "--no-progress"])
    assert code == 2 and "9999" in capsys.readouterr().err


def test_complex_datatype_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.complex64), np.eye(4)), path)
    _refused(path, "complex64", "not a real scalar")


# ---------------------------------------------------------------- failure 6: a header promising a huge array


def test_header_promising_4096_cubed_in_a_tiny_file_is_refused_before_allocating(valid: Path, tmp_path: Path) -> None:
    damaged = edit_header(valid, tmp_path / "huge.nii.gz", dim=[3, 4096, 4096, 4096, 1, 1, 1, 1])
    _refused(damaged, "smaller than its header claims", "256 GiB", "4096 x 4096 x 4096")
    plain = tmp_path / "huge.nii"
    plain.write_bytes(gzip.decompress(damaged.read_bytes()))
    _refused(plain, "smaller than its header claims", "256 GiB")


def test_metaimage_header_promising_a_huge_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.mha"
    sitk.WriteImage(sitk.GetImageFromArray(volume(3).transpose(2, 1, 0)), str(path), useCompression=True)
    text = path.read_bytes().replace(b"DimSize = 18 16 10", b"DimSize = 4096 4096 4096")
    path.write_bytes(text)
    _refused(path, "smaller than its header claims", "GiB")


# ---------------------------------------------------------------- cases that already passed


def test_missing_file(tmp_path: Path) -> None:
    _refused(tmp_path / "absent.nii.gz", "no such file")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_empty_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    _refused(path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_random_bytes(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"random{suffix}"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    _refused(path)


def test_truncated_files(valid: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(valid.read_bytes()[: valid.stat().st_size // 2])
    _refused(cut)
    plain = tmp_path / "cut.nii"
    plain.write_bytes(gz_payload(valid)[:2000])
    _refused(plain)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_voxels(tmp_path: Path, value: float) -> None:
    data = volume(4)
    data[3, 4, 5] = value
    path = write_valid(tmp_path / "nan.nii.gz", data=data)
    _refused(path, "non-finite")
