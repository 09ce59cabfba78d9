"""Reading and writing images as :class:`Volume` (array + RAS affine + source header).

Readers: nibabel for NIfTI; SimpleITK for NRRD, MetaImage and DICOM series
folders, with LPS converted to RAS. Before either reader runs, the header is
checked (datatype, dimensions, a promised size the file can hold and memory can
take) and the whole data stream is decoded once with its checksums verified
(:mod:`segfuse.io.verify`), so a damaged or truncated file fails here rather
than giving garbage voxels. NIfTI geometry follows :mod:`segfuse.io.geometry_rules`;
values must be finite and fit the float32 segfuse computes in. Writers put an
array back on a reference volume's exact grid, atomically.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk  # noqa: N813  (the name every SimpleITK user knows)
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from segfuse.io.atomic import atomic_output_path
from segfuse.io.errors import SegfuseInputError
from segfuse.io.formats import NIFTI_SUFFIXES, READ_SUFFIXES, SITK_FORMATS, WRITE_SUFFIXES, file_suffix
from segfuse.io.geometry import describe_affine, spacing_from_affine
from segfuse.io.geometry_rules import check_voxel_sizes, trusted_nifti_geometry
from segfuse.io.headers import nifti_layout, read_layout, read_nifti_header
from segfuse.io.verify import verify_data

__all__ = [
    "Volume",
    "read_image",
    "smallest_label_dtype",
    "write_image",
]

# RAS <-> LPS: negate the first two world axes.
_FLIP_LPS = np.diag([-1.0, -1.0, 1.0])

# Errors nibabel/gzip raise on corrupt or truncated files (BadGzipFile is an OSError).
_NIFTI_READ_ERRORS = (zlib.error, EOFError, OSError, ValueError, ImageFileError, HeaderDataError)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Volume:
    """An image with its geometry.

    Attributes:
        array: voxel data, spatial axes first: ``(X, Y, Z)``, ``(X, Y, Z, C)`` for
            4D files, or ``(X, Y)`` for 2D images.
        affine: 4x4 float64, voxel index -> RAS world mm (nibabel's convention).
            For 2D images the third column is a unit axis.
        path: the file or DICOM folder it was read from, if any.
        header: a copy of the source ``Nifti1Header`` for NIfTI files, else ``None``.
        source_format: ``"nifti"``, ``"nrrd"``, ``"metaimage"``, ``"dicom"`` or
            ``"array"`` (built in memory).

    Example:
        >>> vol = Volume(np.zeros((4, 5, 6)), np.eye(4), None, None, "array")
        >>> vol.shape, vol.spacing
        ((4, 5, 6), (1.0, 1.0, 1.0))
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    header: nib.Nifti1Header | None = None
    source_format: str = "array"

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume affine must be 4x4, got shape {self.affine.shape}")
        if self.path is not None:
            self.path = Path(self.path)
        if not 2 <= np.ndim(self.array) <= 4:
            raise ValueError(
                f"Volume array must be (X, Y), (X, Y, Z) or (X, Y, Z, C), got shape "
                f"{np.shape(self.array)}"
            )

    @property
    def ndim_spatial(self) -> int:
        """Number of spatial axes: 2 for ``(X, Y)``, else 3 (a 4th axis is channels)."""
        return min(self.array.ndim, 3)

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape, ``(X, Y, Z)`` or ``(X, Y)``."""
        return tuple(int(s) for s in self.array.shape[: self.ndim_spatial])

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each spatial axis, from the affine."""
        return tuple(float(s) for s in spacing_from_affine(self.affine)[: self.ndim_spatial])


def smallest_label_dtype(max_label: int) -> np.dtype:
    """Smallest dtype for labels ``0..max_label``: uint8, uint16 or int32.

    Example:
        >>> smallest_label_dtype(3), smallest_label_dtype(300)
        (dtype('uint8'), dtype('uint16'))
    """
    max_label = int(max_label)
    if max_label < 0:
        raise ValueError(f"max_label must be >= 0, got {max_label}")
    if max_label <= np.iinfo(np.uint8).max:
        return np.dtype(np.uint8)
    if max_label <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    if max_label <= np.iinfo(np.int32).max:
        return np.dtype(np.int32)
    raise ValueError(f"max_label {max_label} does not fit in int32")


def _check_values_fit_float32(path: Path, array: np.ndarray) -> None:
    """Finite stored values must stay finite in float32, the dtype segfuse computes in."""
    if not np.issubdtype(array.dtype, np.floating) or array.dtype.itemsize <= 4 or array.size == 0:
        return
    low, high = float(array.min()), float(array.max())
    if max(abs(low), abs(high)) > _FLOAT32_MAX:
        raise SegfuseInputError(
            f"{path}: intensities range from {low:.4g} to {high:.4g}, beyond float32 (largest "
            f"{_FLOAT32_MAX:.4g}) in which segfuse computes; they would become infinite. Check the "
            "header's intensity scaling (scl_slope/scl_inter) or rescale the image"
        )


def _check_geometry_and_values(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise SegfuseInputError(
            f"{path}: singular or non-finite voxel-to-world affine {describe_affine(affine)}; "
            "expected an invertible 4x4 matrix (check the header's qform/sform or spacing)"
        )
    if np.issubdtype(array.dtype, np.inexact):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            n_nan = int(np.count_nonzero(np.isnan(array)))
            raise SegfuseInputError(
                f"{path}: contains {bad} non-finite voxels ({n_nan} NaN, {bad - n_nan} Inf) "
                f"out of {array.size}; expected all values finite"
            )
        _check_values_fit_float32(path, array)


def _read_nifti(path: Path) -> Volume:
    raw_header = read_nifti_header(path)
    check_voxel_sizes(path, raw_header)  # before nibabel "repairs" them on load
    # Before nibabel allocates anything: a known datatype, a size the file can hold,
    # and the whole stream decoded once with its CRC checked (nibabel stops early).
    verify_data(nifti_layout(path, raw_header))
    try:
        img = nib.load(str(path))
        with np.errstate(all="ignore"):  # overflow in scl_slope scaling is reported below, by file
            array = np.asanyarray(img.dataobj)
    except _NIFTI_READ_ERRORS as err:
        raise SegfuseInputError(
            f"{path}: cannot read NIfTI data (corrupted or truncated file?): {err}"
        ) from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise SegfuseInputError(
            f"{path}: expected a single-file NIfTI image, got {type(img).__name__}"
        )
    if array.ndim == 5 and array.shape[3] == 1:  # (X, Y, Z, 1, C): NIfTI's vector layout
        array = array[:, :, :, 0, :]
    if array.ndim > 4:
        raise SegfuseInputError(
            f"{path}: unsupported data shape {array.shape}; expected (X, Y), (X, Y, Z) "
            "or (X, Y, Z, C)"
        )
    affine, header = trusted_nifti_geometry(path, raw_header, img)
    return Volume(np.asarray(array), affine, path, header, "nifti")


def _sitk_affine(image: sitk.Image) -> np.ndarray:
    """RAS affine of a SimpleITK image (first three axes; a 2D image gets a unit Z)."""
    dim = image.GetDimension()
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    origin = np.array(image.GetOrigin(), dtype=np.float64)
    k = min(dim, 3)
    dir3, spacing3, origin3 = np.eye(3), np.ones(3), np.zeros(3)
    dir3[:k, :k] = direction[:k, :k]
    spacing3[:k] = spacing[:k]
    origin3[:k] = origin[:k]
    affine = np.eye(4)
    affine[:3, :3] = _FLIP_LPS @ dir3 @ np.diag(spacing3)
    affine[:3, 3] = _FLIP_LPS @ origin3
    return affine


def _sitk_to_volume(image: sitk.Image, path: Path, source_format: str) -> Volume:
    array = sitk.GetArrayFromImage(image)  # (Z, Y, X[, C]): reverse the spatial axes
    dim = image.GetDimension()
    spatial = list(range(dim))[::-1]
    channels = list(range(dim, array.ndim))
    array = np.transpose(array, spatial + channels)
    if dim == 2 and channels:  # 2D vector image: give it a unit Z so axis 3 is channels
        array = array[:, :, np.newaxis, :]
    # A 4D scalar image keeps its 4th axis as channels; anything larger is refused.
    if array.ndim > 4:
        raise SegfuseInputError(
            f"{path}: unsupported image with {dim} dimensions and "
            f"{image.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    return Volume(array, _sitk_affine(image), path, None, source_format)


def _read_sitk(path: Path, source_format: str) -> Volume:
    layout = read_layout(path, source_format)
    if layout is not None:  # ITK decodes damaged zlib/gzip data without complaint: verify first
        verify_data(layout)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        message = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
        raise SegfuseInputError(
            f"{path}: cannot read {source_format} image (corrupted or truncated file?): {message}"
        ) from err
    spacing = tuple(float(s) for s in image.GetSpacing())
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise SegfuseInputError(
            f"{path}: voxel sizes {spacing} include zero, negative or non-finite values; fix the header"
        )
    return _sitk_to_volume(image, path, source_format)


def _read_dicom_series(folder: Path) -> Volume:
    reader = sitk.ImageSeriesReader()
    # ITK prints "No Series were found" to stderr; we raise a clearer error instead.
    warnings_were_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        series_ids = list(reader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_were_shown)
    if not series_ids:
        raise SegfuseInputError(
            f"{folder}: folder holds no DICOM series; expected a folder of DICOM slices "
            f"or an image file with one of {', '.join(READ_SUFFIXES)}"
        )
    if len(series_ids) > 1:
        raise SegfuseInputError(
            f"{folder}: folder holds {len(series_ids)} DICOM series, expected one; "
            f"put each series in its own folder. SeriesInstanceUIDs: {', '.join(series_ids)}"
        )
    files = reader.GetGDCMSeriesFileNames(str(folder), series_ids[0])
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise SegfuseInputError(
            f"{folder}: cannot read DICOM series {series_ids[0]} ({len(files)} files): "
            f"{str(err).strip()}"
        ) from err
    return _sitk_to_volume(image, folder, "dicom")


def read_image(path: str | os.PathLike[str]) -> Volume:
    """Read a NIfTI, NRRD, MetaImage file or a DICOM series folder into a :class:`Volume`.

    The array has spatial axes first, ``(X, Y, Z)`` (``(X, Y)`` for 2D,
    ``(X, Y, Z, C)`` for 4D), and the affine maps voxel indices to RAS mm.

    Raises:
        SegfuseInputError: missing path, unsupported extension, corrupt or
            truncated data (checksums and lengths are verified), a header that
            promises more data than the file holds or memory takes, an unknown
            datatype, untrustworthy geometry (see :mod:`segfuse.io.geometry_rules`),
            several or no DICOM series in a folder, NaN/Inf voxels or values beyond
            float32, or a singular affine. The message names the path.

    Example:
        >>> vol = read_image("case_001/t1.nii.gz")  # doctest: +SKIP
        >>> vol.shape, vol.spacing  # doctest: +SKIP
        ((240, 240, 155), (1.0, 1.0, 1.0))
    """
    path = Path(path)
    if not path.exists():
        raise SegfuseInputError(f"{path}: no such file or folder")
    if path.is_dir():
        volume = _read_dicom_series(path)
    else:
        suffix = file_suffix(path)
        if suffix in NIFTI_SUFFIXES:
            volume = _read_nifti(path)
        elif suffix in SITK_FORMATS:
            volume = _read_sitk(path, SITK_FORMATS[suffix])
        else:
            raise SegfuseInputError(
                f"{path}: unsupported image extension {suffix or '(none)'!r}; supported: "
                f"{', '.join(READ_SUFFIXES)}, or a folder holding one DICOM series"
            )
    _check_geometry_and_values(path, volume.array, volume.affine)
    return volume


def _output_dtype(array: np.ndarray, dtype: np.typing.DTypeLike | None) -> np.dtype:
    if dtype is not None:
        return np.dtype(dtype)
    if array.dtype == np.bool_:
        return np.dtype(np.uint8)
    if array.dtype in (np.int64, np.uint64) and array.size:
        low, high = int(array.min()), int(array.max())
        if np.iinfo(np.int32).min <= low and high <= np.iinfo(np.int32).max:
            return np.dtype(np.int32)  # int64 NIfTI files are not read by many tools
    return array.dtype


def _nifti_header_for(reference: Volume, dtype: np.dtype) -> nib.Nifti1Header:
    affine = reference.affine
    if reference.header is not None:
        header = reference.header.copy()
        qcode = int(header["qform_code"])
        scode = int(header["sform_code"])
        # No stored orientation: claim none either, unless the affine came from elsewhere.
        if qcode == 0 and scode == 0 and not np.allclose(header.get_base_affine(), affine, atol=1e-5):
            qcode = scode = 1
    else:
        header = nib.Nifti1Header()
        qcode = scode = 1
    header.set_sform(affine, code=scode)
    header.set_qform(affine, code=qcode)
    header.set_data_dtype(dtype)
    header.set_slope_inter(1.0, 0.0)  # labels must not be rescaled on read
    header["cal_min"] = 0.0
    header["cal_max"] = 0.0
    return header


def _write_nifti(array: np.ndarray, reference: Volume, path: Path, dtype: np.dtype) -> None:
    header = _nifti_header_for(reference, dtype)
    data = np.asarray(array).astype(dtype, copy=False)
    image = nib.Nifti1Image(data, reference.affine, header=header, dtype=dtype)
    with atomic_output_path(path) as tmp:
        nib.save(image, str(tmp))
        written = nib.load(str(tmp))
        if not np.allclose(written.affine, reference.affine, atol=1e-5):
            raise SegfuseInputError(
                f"{path}: written affine {describe_affine(written.affine)} does not match the "
                f"reference affine {describe_affine(reference.affine)}"
            )


def _write_sitk(
    array: np.ndarray, reference: Volume, path: Path, dtype: np.dtype, metadata: Mapping[str, str] | None = None
) -> None:
    ndim = reference.ndim_spatial
    data = np.asarray(array).astype(dtype, copy=False)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    channels = data.ndim > ndim
    order = list(range(ndim))[::-1] + list(range(ndim, data.ndim))
    image = sitk.GetImageFromArray(
        np.ascontiguousarray(np.transpose(data, order)), isVector=channels
    )
    lps = _FLIP_LPS @ reference.affine[:3, :3]
    spacing = np.sqrt((lps**2).sum(axis=0))
    direction = (lps / spacing)[:ndim, :ndim]
    origin = (_FLIP_LPS @ reference.affine[:3, 3])[:ndim]
    image.SetSpacing([float(s) for s in spacing[:ndim]])
    image.SetOrigin([float(o) for o in origin])
    try:
        image.SetDirection([float(d) for d in direction.reshape(-1)])
    except RuntimeError as err:
        raise SegfuseInputError(
            f"{path}: the reference affine {describe_affine(reference.affine)} has no "
            f"orthonormal direction matrix, which {path.suffix} files need; write NIfTI instead"
        ) from err
    for key, value in (metadata or {}).items():
        image.SetMetaData(str(key), str(value))
    with atomic_output_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def write_image(
    array: np.ndarray,
    reference: Volume,
    path: str | os.PathLike[str],
    dtype: np.typing.DTypeLike | None = None,
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``array`` on ``reference``'s grid to ``path`` (NIfTI, NRRD or MHA), atomically.

    NIfTI output keeps a copy of the reference's NIfTI header (qform/sform codes,
    orientation) with the new dtype and no intensity scaling; the written affine
    is checked against the reference. NRRD/MHA get origin, spacing and direction
    from the reference affine (RAS -> LPS).

    Args:
        array: ``reference.shape`` (+ optional trailing channel axis), e.g. ``(X, Y, Z)``.
        reference: the volume whose grid the array lies on.
        path: output file; its extension picks the format (see ``WRITE_SUFFIXES``).
        dtype: stored dtype; default keeps the array's (bool -> uint8, int64 -> int32
            when the values fit).
        metadata: NRRD/MHA only: extra header fields, key → text (e.g. Slicer's
            ``Segment0_Name``); an error for NIfTI, which has no place for them.

    Example:
        >>> write_image(labels, t1, "out/seg.nii.gz", dtype=np.uint8)  # doctest: +SKIP
        PosixPath('out/seg.nii.gz')
    """
    path = Path(path)
    array = np.asarray(array)
    ndim = reference.ndim_spatial
    if array.shape[:ndim] != reference.shape or array.ndim > ndim + 1 or array.ndim < ndim:
        raise SegfuseInputError(
            f"{path}: array shape {array.shape} does not match the reference grid "
            f"{reference.shape} of {reference.path or 'the reference volume'}; expected "
            f"{reference.shape} or {reference.shape} + (channels,)"
        )
    suffix = file_suffix(path)
    if suffix not in WRITE_SUFFIXES:
        raise SegfuseInputError(
            f"{path}: cannot write extension {suffix or '(none)'!r}; supported: "
            f"{', '.join(WRITE_SUFFIXES)}"
        )
    if not path.parent.is_dir():
        raise SegfuseInputError(f"{path}: output folder {path.parent} does not exist")
    out_dtype = _output_dtype(array, dtype)
    if suffix in NIFTI_SUFFIXES:
        if metadata:
            raise SegfuseInputError(f"{path}: NIfTI files have no place for metadata fields {sorted(metadata)}")
        _write_nifti(array, reference, path, out_dtype)
    else:
        _write_sitk(array, reference, path, out_dtype, metadata)
    return path
