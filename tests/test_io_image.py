"""Image I/O: NIfTI/NRRD/MHA/DICOM reading, grid-preserving writes and clear input errors."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from segfuse.io import (
    SegfuseInputError,
    Volume,
    read_image,
    smallest_label_dtype,
    write_image,
)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _ramp(shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    return np.arange(np.prod(shape)).reshape(shape).astype(dtype)


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, qcode: int, scode: int) -> None:
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=qcode)
    img.header.set_sform(affine, code=scode)
    nib.save(img, path)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_nifti_round_trip_oblique_lps_keeps_geometry_codes_and_data(
    tmp_path: Path, oblique_affine: np.ndarray, dtype: type
) -> None:
    src = tmp_path / "scan.nii.gz"
    _save_nifti(src, _ramp((9, 8, 7)), oblique_affine, qcode=2, scode=4)
    vol = read_image(src)
    assert vol.source_format == "nifti" and vol.path == src
    assert vol.shape == (9, 8, 7) and vol.ndim_spatial == 3
    np.testing.assert_allclose(vol.affine, oblique_affine, atol=1e-5)
    np.testing.assert_allclose(vol.spacing, (0.8, 1.2, 3.0), atol=1e-6)

    labels = (_ramp((9, 8, 7), np.int64) % 5).astype(np.int64)
    out = write_image(labels, vol, tmp_path / "seg.nii.gz", dtype=dtype)
    back = nib.load(out)
    assert back.get_data_dtype() == np.dtype(dtype)
    assert int(back.header["qform_code"]) == 2 and int(back.header["sform_code"]) == 4
    np.testing.assert_allclose(back.header.get_qform(), oblique_affine, atol=1e-5)
    np.testing.assert_allclose(back.header.get_sform(), oblique_affine, atol=1e-5)
    assert nib.aff2axcodes(back.affine) == nib.aff2axcodes(oblique_affine)
    data = np.asanyarray(back.dataobj)
    assert data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(data, labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz", "seg.nii.gz"]


def test_labels_are_not_rescaled_by_reference_scaling(tmp_path: Path) -> None:
    src = tmp_path / "scaled.nii"
    img = nib.Nifti1Image(_ramp((4, 4, 4), np.int16), np.eye(4))
    img.header.set_slope_inter(2.5, 10.0)
    nib.save(img, src)
    vol = read_image(src)
    labels = _ramp((4, 4, 4), np.uint8) % 3
    back = read_image(write_image(labels, vol, tmp_path / "labels.nii", dtype=np.uint8))
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, labels)


def test_float_label_round_trip(tmp_path: Path) -> None:
    ref = Volume(np.zeros((6, 5, 4), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    labels = (_ramp((6, 5, 4)) % 4).astype(np.float32)
    back = read_image(write_image(labels, ref, tmp_path / "probs.nii.gz"))
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, labels)
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 1
    np.testing.assert_allclose(back.affine, ref.affine)


def test_truncated_nifti_gz_raises_with_file_name(tmp_path: Path) -> None:
    path = tmp_path / "broken_t1.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20)), np.eye(4)), path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SegfuseInputError, match=r"broken_t1\.nii\.gz.*corrupted or truncated"):
        read_image(path)


def test_corrupt_gzip_raises(tmp_path: Path) -> None:
    path = tmp_path / "noise.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header at all") + b"garbage")
    with pytest.raises(SegfuseInputError, match=r"noise\.nii\.gz"):
        read_image(path)


def _sitk_image(dim: int = 3) -> tuple[sitk.Image, np.ndarray]:
    """A ramp image with a chosen LPS origin/spacing/oblique direction; also its RAS affine."""
    shape_xyz = (7, 6, 5)[:dim]
    image = sitk.GetImageFromArray(np.transpose(_ramp(shape_xyz, np.int16)))
    spacing = (0.7, 1.1, 2.5)[:dim]
    origin = (-12.0, 30.5, 7.25)[:dim]
    angle = np.deg2rad(20.0)
    rot = np.eye(3)
    rot[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    direction = rot[:dim, :dim]
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction.reshape(-1).tolist())
    # By hand: RAS = diag(-1,-1,1) @ (origin + direction @ diag(spacing) @ index).
    d3, s3, o3 = np.eye(3), np.ones(3), np.zeros(3)
    d3[:dim, :dim], s3[:dim], o3[:dim] = direction, spacing, origin
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ d3 @ np.diag(s3)
    affine[:3, 3] = LPS_TO_RAS @ o3
    return image, affine


@pytest.mark.parametrize(("suffix", "fmt"), [(".mha", "metaimage"), (".nrrd", "nrrd")])
def test_sitk_formats_read_as_ras_and_round_trip(tmp_path: Path, suffix: str, fmt: str) -> None:
    image, expected_affine = _sitk_image()
    src = tmp_path / f"scan{suffix}"
    sitk.WriteImage(image, str(src))
    vol = read_image(src)
    assert vol.source_format == fmt and vol.header is None
    assert vol.shape == (7, 6, 5)
    np.testing.assert_allclose(vol.affine, expected_affine, atol=1e-6)
    np.testing.assert_array_equal(vol.array, _ramp((7, 6, 5), np.int16))
    # Voxel (2, 1, 3) in our (X, Y, Z) array is SimpleITK's index (2, 1, 3).
    assert vol.array[2, 1, 3] == image[2, 1, 3]
    np.testing.assert_allclose(
        LPS_TO_RAS @ image.TransformIndexToPhysicalPoint((2, 1, 3)),
        (vol.affine @ [2, 1, 3, 1])[:3],
        atol=1e-6,
    )

    out = write_image(vol.array, vol, tmp_path / f"copy{suffix}", dtype=np.uint16)
    written = sitk.ReadImage(str(out))
    assert written.GetPixelID() == sitk.sitkUInt16
    np.testing.assert_allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(written.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(written.GetDirection(), image.GetDirection(), atol=1e-6)
    again = read_image(out)
    np.testing.assert_allclose(again.affine, expected_affine, atol=1e-6)
    np.testing.assert_array_equal(again.array, vol.array)


def test_nifti_to_mha_and_back_keeps_grid(tmp_path: Path, oblique_affine: np.ndarray) -> None:
    src = tmp_path / "scan.nii.gz"
    _save_nifti(src, _ramp((5, 4, 3)), oblique_affine, qcode=1, scode=1)
    vol = read_image(src)
    back = read_image(write_image(vol.array, vol, tmp_path / "scan.mha"))
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    np.testing.assert_array_equal(back.array, vol.array)


def test_2d_image_has_unit_third_axis(tmp_path: Path) -> None:
    image, expected_affine = _sitk_image(dim=2)
    src = tmp_path / "slice.mha"
    sitk.WriteImage(image, str(src))
    vol = read_image(src)
    assert vol.ndim_spatial == 2 and vol.shape == (7, 6) and vol.affine.shape == (4, 4)
    np.testing.assert_allclose(vol.affine, expected_affine, atol=1e-6)
    assert vol.spacing == pytest.approx((0.7, 1.1))
    back = read_image(write_image(vol.array, vol, tmp_path / "slice_copy.nrrd"))
    np.testing.assert_allclose(back.affine, expected_affine, atol=1e-6)
    np.testing.assert_array_equal(back.array, vol.array)


def _write_dicom_series(folder: Path, image: sitk.Image, series_uid: str) -> None:
    """SimpleITK's DicomSeriesFromArray example: one file per slice with the needed tags."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    now_date, now_time = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    series_tags = [
        ("0008|0031", now_time),
        ("0008|0021", now_date),
        ("0008|0008", "DERIVED\\SECONDARY"),
        ("0020|000e", series_uid),
        ("0020|000d", series_uid + ".1"),
        ("0020|0037", "\\".join(str(v) for v in (*direction[0:7:3], *direction[1:8:3]))),
        ("0008|103e", "segfuse test series"),
        ("0008|0060", "CT"),
        ("0018|0050", str(image.GetSpacing()[2])),
    ]
    for k in range(image.GetDepth()):
        slice_k = image[:, :, k]
        for tag, value in series_tags:
            slice_k.SetMetaData(tag, value)
        slice_k.SetMetaData("0008|0012", now_date)
        slice_k.SetMetaData("0008|0013", now_time)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_k.SetMetaData("0020|0032", "\\".join(str(v) for v in position))
        slice_k.SetMetaData("0020|0013", str(k))
        slice_k.SetMetaData("0008|0018", f"{series_uid}.{k + 10}")
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(slice_k)


def test_dicom_series_folder(tmp_path: Path) -> None:
    array_zyx = np.transpose(_ramp((8, 6, 4), np.int16))
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing((0.5, 0.75, 2.0))
    image.SetOrigin((10.0, -5.0, 3.0))
    _write_dicom_series(tmp_path / "series", image, "1.2.826.0.1.3680043.2.1125.1")
    vol = read_image(tmp_path / "series")
    assert vol.source_format == "dicom"
    assert vol.shape == (8, 6, 4)
    assert vol.spacing == pytest.approx((0.5, 0.75, 2.0), abs=1e-4)
    np.testing.assert_allclose(vol.affine[:3, 3], [-10.0, 5.0, 3.0], atol=1e-4)
    np.testing.assert_array_equal(vol.array, _ramp((8, 6, 4), np.int16))


def test_folder_with_two_dicom_series_lists_uids(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.zeros((2, 3, 3), np.int16))
    _write_dicom_series(tmp_path / "mixed", image, "1.2.826.0.1.3680043.2.1125.7")
    _write_dicom_series(tmp_path / "other", image, "1.2.826.0.1.3680043.2.1125.8")
    for dcm in (tmp_path / "other").iterdir():
        dcm.rename(tmp_path / "mixed" / f"b_{dcm.name}")
    with pytest.raises(SegfuseInputError, match=r"mixed: folder holds 2 DICOM series") as err:
        read_image(tmp_path / "mixed")
    assert "1125.7" in str(err.value) and "1125.8" in str(err.value)


def test_folder_without_dicom_raises_quietly(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(SegfuseInputError, match="no DICOM series"):
        read_image(tmp_path)
    assert "No Series were found" not in capfd.readouterr().err


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_four_d_channels_read_and_write(tmp_path: Path, suffix: str) -> None:
    data = _ramp((4, 5, 6, 3))
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "four.nii.gz")
    vol = read_image(tmp_path / "four.nii.gz")
    assert vol.shape == (4, 5, 6) and vol.ndim_spatial == 3 and vol.array.shape == data.shape
    back = read_image(write_image(data, vol, tmp_path / f"copy{suffix}"))
    np.testing.assert_array_equal(back.array, data)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-6)


def test_bool_mask_is_written_as_uint8(tmp_path: Path) -> None:
    ref = Volume(np.zeros((3, 4, 5)), np.eye(4))
    mask = _ramp((3, 4, 5)) > 20
    back = read_image(write_image(mask, ref, tmp_path / "mask.nii.gz"))
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask)


def test_missing_file_and_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(SegfuseInputError, match=r"absent\.nii\.gz: no such file"):
        read_image(tmp_path / "absent.nii.gz")
    odd = tmp_path / "scan.png"
    odd.write_bytes(b"\x89PNG")
    with pytest.raises(SegfuseInputError, match=r"scan\.png.*'\.png'.*\.nii\.gz.*\.nrrd.*\.mha"):
        read_image(odd)


def test_nan_data_raises_with_count(tmp_path: Path) -> None:
    data = np.zeros((4, 4, 4), np.float32)
    data[0, 0, :3] = np.nan
    data[1, 1, 1] = np.inf
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(
        SegfuseInputError, match=r"nan\.nii\.gz: contains 4 non-finite.*3 NaN, 1 Inf"
    ):
        read_image(path)


def test_singular_affine_raises(tmp_path: Path) -> None:
    path = tmp_path / "flat.nii"
    header = nib.Nifti1Header()
    header.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=2)  # zero Z spacing
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), None, header=header), path)
    with pytest.raises(SegfuseInputError, match=r"flat\.nii: singular.*\[0 0 0 0\]"):
        read_image(path)


def test_write_shape_mismatch_names_both_shapes(tmp_path: Path) -> None:
    ref = Volume(np.zeros((6, 5, 4)), np.eye(4), tmp_path / "t1.nii.gz", None, "nifti")
    with pytest.raises(SegfuseInputError, match=r"\(6, 5, 3\).*\(6, 5, 4\)"):
        write_image(np.zeros((6, 5, 3)), ref, tmp_path / "seg.nii.gz")
    with pytest.raises(SegfuseInputError, match=r"\.jpg"):
        write_image(np.zeros((6, 5, 4)), ref, tmp_path / "seg.jpg")
    assert list(tmp_path.iterdir()) == []


def test_smallest_label_dtype() -> None:
    assert smallest_label_dtype(0) == np.uint8
    assert smallest_label_dtype(255) == np.uint8
    assert smallest_label_dtype(256) == np.uint16
    assert smallest_label_dtype(70000) == np.int32
    with pytest.raises(ValueError, match="-1"):
        smallest_label_dtype(-1)
