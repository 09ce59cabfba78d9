"""Image headers read without touching the voxel data: shape, data type, where the data lies.

Used before any voxel is allocated: to refuse a header whose datatype is unknown,
to check that the file really holds the array its header promises
(:mod:`segfuse.io.verify`), and to check dimensions against a model before a
case is predicted. NIfTI headers are read raw (``check=False``): nibabel repairs
some fields on load (zero or negative voxel sizes) and the raw values are what
segfuse judges (:mod:`segfuse.io.geometry_rules`).

NRRD (``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``) headers are
parsed as text, only far enough to locate and size the data; ITK reads them
afterwards.
"""

from __future__ import annotations

import gzip
import io
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from segfuse.io.errors import SegfuseInputError
from segfuse.io.formats import source_format_of

__all__ = ["DataLayout", "image_shape", "nifti_layout", "read_layout", "read_nifti_header"]

# NIfTI datatype codes segfuse reads: real scalars. Complex, RGB and bit data are refused.
_SCALAR_NIFTI_CODES = frozenset({2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280, 1536})
_MAX_TEXT_HEADER = 1 << 20  # a text header longer than 1 MiB is not a header


@dataclass(frozen=True)
class DataLayout:
    """Where a file's voxel data lies and how much of it the header promises.

    Attributes:
        path: the image file (the header).
        shape: the array shape the reader returns, spatial axes first:
            ``(X, Y)``, ``(X, Y, Z)`` or ``(X, Y, Z, C)``.
        dtype_name: the stored element type, for messages (``"float32"``).
        nbytes: bytes of voxel data the header promises.
        data_file: the file holding the data (``path`` unless detached).
        offset: bytes before the (encoded) data in ``data_file``.
        skip: bytes to skip in the decoded data before the voxels (``-1``: the
            voxels are the last ``nbytes`` bytes).
        encoding: ``"raw"``, ``"gzip"``, ``"zlib"``, ``"bzip2"``, or
            ``"unverifiable"`` (text encodings, file lists: left to the reader).
    """

    path: Path
    shape: tuple[int, ...]
    dtype_name: str
    nbytes: int
    data_file: Path
    offset: int = 0
    skip: int = 0
    encoding: str = "raw"


# ------------------------------------------------------------------ NIfTI


def _open_maybe_gzip(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def read_nifti_header(path: Path) -> nib.Nifti1Header | nib.Nifti2Header:
    """The NIfTI-1 or NIfTI-2 header of ``path`` exactly as stored (no repairs).

    Raises:
        SegfuseInputError: not a NIfTI header (naming the file).
    """
    try:
        with _open_maybe_gzip(path) as handle:
            block = handle.read(540)
    except (OSError, EOFError) as err:
        raise SegfuseInputError(f"{path}: cannot read NIfTI header (corrupted or truncated file?): {err}") from err
    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        size = klass.template_dtype.itemsize
        if len(block) < size:
            continue
        for order in ("<", ">"):
            if int(np.frombuffer(block[:4], dtype=f"{order}i4")[0]) == size:
                return klass.from_fileobj(io.BytesIO(block[:size]), check=False)
    raise SegfuseInputError(
        f"{path}: not a NIfTI file (no valid header: {len(block)} bytes, sizeof_hdr is neither 348 nor 540)"
    )


def nifti_layout(path: Path, header: nib.Nifti1Header | None = None) -> DataLayout:
    """The :class:`DataLayout` of a NIfTI file from its raw header (read when not given).

    Raises:
        SegfuseInputError: unknown or non-scalar datatype code, invalid dimensions.
    """
    header = read_nifti_header(path) if header is None else header
    code = int(header["datatype"])
    codes = nib.nifti1.data_type_codes
    if code not in codes.value_set("code"):
        raise SegfuseInputError(
            f"{path}: unknown NIfTI datatype code {code}; expected one of "
            f"{sorted(_SCALAR_NIFTI_CODES)} (uint8, int16, int32, float32, float64, int8, uint16, ...)"
        )
    if code not in _SCALAR_NIFTI_CODES:
        raise SegfuseInputError(
            f"{path}: NIfTI datatype {codes.label[code]} (code {code}) is not a real scalar type; "
            "segfuse reads integer and floating-point images only"
        )
    dims = [int(d) for d in header["dim"]]
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1 : ndim + 1]):
        raise SegfuseInputError(
            f"{path}: invalid NIfTI dimensions dim = {dims}; expected dim[0] in 1..7 and sizes >= 1"
        )
    shape = tuple(dims[1 : ndim + 1])
    if len(shape) == 5 and shape[3] == 1:  # NIfTI's vector layout (X, Y, Z, 1, C)
        shape = (*shape[:3], shape[4])
    dtype = codes.dtype[code]
    nbytes = int(np.prod(shape, dtype=object)) * int(dtype.itemsize)
    gz = path.name.lower().endswith(".gz")
    return DataLayout(
        path=path,
        shape=shape,
        dtype_name=str(dtype),
        nbytes=nbytes,
        data_file=path,
        offset=0 if gz else int(header["vox_offset"]),
        skip=int(header["vox_offset"]) if gz else 0,
        encoding="gzip" if gz else "raw",
    )


# ------------------------------------------------------------------ text headers


def _text_header(path: Path, end: re.Pattern[bytes]) -> tuple[bytes, int]:
    """The header text up to and including the line matching ``end``; its length in bytes."""
    with open(path, "rb") as handle:
        head = handle.read(_MAX_TEXT_HEADER)
    match = end.search(head)
    if match is None:
        return head, len(head)
    return head[: match.end()], match.end()


_NRRD_SIZES = [  # (pattern on the type name, bytes); order matters: "int64" before "int"
    (re.compile(r"(8|char)"), 1),
    (re.compile(r"(16|short)"), 2),
    (re.compile(r"(64|long\s*long|longlong|double)"), 8),
    (re.compile(r"(32|int|float)"), 4),
]


def _nrrd_layout(path: Path) -> DataLayout | None:
    text, length = _text_header(path, re.compile(rb"\r?\n\r?\n"))
    lines = text.decode("latin-1").splitlines()
    if not lines or not lines[0].startswith("NRRD"):
        raise SegfuseInputError(f"{path}: not a NRRD file (no NRRD magic line)")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if not line.strip():
            break
        field = re.match(r"([^:#][^:]*):\s(.*)$", line)  # "key: value"; comments and "key:=value" skipped
        if field:
            fields[field.group(1).strip().lower().replace(" ", "")] = field.group(2).strip()
    try:
        sizes = [int(s) for s in fields["sizes"].split()]
        type_name = fields["type"].lower()
    except (KeyError, ValueError):
        return None  # let ITK report what is missing
    itemsize = next((n for pattern, n in _NRRD_SIZES if pattern.search(type_name)), None)
    if itemsize is None or not sizes or any(s < 1 for s in sizes):
        return None
    kinds = fields.get("kinds", "").split()
    channels = 1
    spatial = sizes
    if kinds and kinds[0].lower() not in ("domain", "space") and len(sizes) > 1:
        channels, spatial = sizes[0], sizes[1:]
    shape = tuple(spatial) if channels == 1 else (*spatial, *([1] * (3 - len(spatial))), channels)
    encoding = {"raw": "raw", "gz": "gzip", "gzip": "gzip", "bz2": "bzip2", "bzip2": "bzip2"}.get(
        fields.get("encoding", "raw").lower(), "unverifiable"
    )
    data_file, offset = path, length
    detached = fields.get("datafile", fields.get("data_file"))
    if detached is not None:
        if len(detached.split()) > 1 or detached.upper().startswith("LIST"):
            encoding = "unverifiable"  # a file list or a pattern
        data_file, offset = (path.parent / detached), 0
    if int(fields.get("lineskip", "0") or 0):
        encoding = "unverifiable" if encoding == "raw" else encoding
    return DataLayout(
        path=path,
        shape=shape,
        dtype_name=type_name,
        nbytes=int(np.prod(sizes, dtype=object)) * itemsize,
        data_file=data_file,
        offset=offset,
        skip=int(fields.get("byteskip", "0") or 0),
        encoding=encoding,
    )


_MET_SIZES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}  # fmt: skip


def _metaimage_layout(path: Path) -> DataLayout | None:
    text, length = _text_header(path, re.compile(rb"ElementDataFile\s*=[^\n]*\n"))
    fields: dict[str, str] = {}
    for line in text.decode("latin-1").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    try:
        sizes = [int(s) for s in fields["DimSize"].split()]
        itemsize = _MET_SIZES[fields["ElementType"].upper()]
        data = fields["ElementDataFile"]
    except (KeyError, ValueError):
        return None
    channels = int(fields.get("ElementNumberOfChannels", "1") or 1)
    if not sizes or any(s < 1 for s in sizes) or channels < 1:
        return None
    shape = tuple(sizes) if channels == 1 else (*sizes, *([1] * (3 - len(sizes))), channels)
    compressed = fields.get("CompressedData", "False").lower() == "true"
    encoding = "zlib" if compressed else "raw"
    if data.upper() == "LOCAL":
        data_file, offset = path, length
    elif len(data.split()) > 1 or data.upper().startswith("LIST"):
        data_file, offset, encoding = path, length, "unverifiable"
    else:
        data_file, offset = path.parent / data, 0
    skip = 0 if compressed else int(fields.get("HeaderSize", "0") or 0)
    return DataLayout(
        path=path,
        shape=shape,
        dtype_name=fields["ElementType"].upper(),
        nbytes=int(np.prod(sizes, dtype=object)) * channels * itemsize,
        data_file=data_file,
        offset=offset,
        skip=skip,
        encoding=encoding,
    )


# ------------------------------------------------------------------ public


def read_layout(path: str | Path, source_format: str) -> DataLayout | None:
    """The :class:`DataLayout` of a ``"nifti"``, ``"nrrd"`` or ``"metaimage"`` file.

    Returns ``None`` when a text header is too unusual to size the data (ITK
    then reads it and reports its own errors).

    Raises:
        SegfuseInputError: a NIfTI header with an unknown or non-scalar datatype
            or invalid dimensions; a file that is not of the format at all.

    Example:
        >>> read_layout("t1.nii.gz", "nifti").shape  # doctest: +SKIP
        (240, 240, 155)
    """
    path = Path(path)
    if source_format == "nifti":
        return nifti_layout(path)
    if source_format == "nrrd":
        return _nrrd_layout(path)
    if source_format == "metaimage":
        return _metaimage_layout(path)
    raise ValueError(f"read_layout: unknown format {source_format!r}")


def image_shape(path: str | Path) -> tuple[int, ...] | None:
    """The array shape :func:`segfuse.io.image.read_image` will return, from the header only.

    ``None`` for DICOM folders and headers too unusual to read without ITK.

    Example:
        >>> image_shape("t1.nii.gz")  # doctest: +SKIP
        (240, 240, 155)
    """
    path = Path(path)
    if path.is_dir() or not path.is_file():
        return None
    fmt = source_format_of(path)
    if fmt is None:
        return None
    layout = read_layout(path, fmt)
    return None if layout is None else layout.shape
