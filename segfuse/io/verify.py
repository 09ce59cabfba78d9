"""Full-data checks before an image is decoded: every byte present, every checksum right.

Readers decode only the bytes they need: nibabel stops reading a ``.nii.gz``
once it has the voxels, so a damaged byte near the end of the stream is never
checked against the gzip CRC, and ITK returns garbage for a damaged zlib
stream in a ``.mha``. :func:`verify_data` therefore reads the whole encoded
data of a file once, in 1 MiB chunks (constant memory), before the reader runs:

- ``gzip`` (``.nii.gz``, NRRD ``encoding: gzip``): every member decoded, its
  CRC-32 and length checked;
- ``zlib`` (MetaImage ``CompressedData = True``): decoded to the end of the
  stream, its Adler-32 checked, nothing after it;
- ``bzip2`` (NRRD ``encoding: bzip2``): decoded, its CRCs checked;
- ``raw``: the file holds at least the bytes the header promises.

In every encoding the decoded data must hold at least the bytes the header
promises. A header that promises more than the file can hold is refused
*before* anything is allocated (:func:`check_promised_size`), with the memory
it would need; so is one that needs more memory than the machine has.
"""

from __future__ import annotations

import bz2
import gzip
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

from segfuse.io.errors import SegfuseInputError
from segfuse.io.headers import DataLayout

__all__ = ["check_promised_size", "format_bytes", "verify_data"]

_CHUNK = 1 << 20
# deflate cannot expand data more than about 1032:1, so a compressed file of n
# bytes never holds more than this many decoded bytes (plus a small constant).
_DEFLATE_MAX_RATIO = 1032


def format_bytes(n: int | float) -> str:
    """``1536`` → ``'1.5 KiB'``: sizes in messages.

    Example:
        >>> format_bytes(3 * 2**30)
        '3 GiB'
    """
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.4g} {unit}" if unit != "bytes" else f"{int(value)} bytes"
        value /= 1024
    return f"{value:.4g} PiB"  # pragma: no cover


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _promise(layout: DataLayout) -> str:
    shape = " x ".join(str(s) for s in layout.shape)
    return f"its header promises {shape} {layout.dtype_name} voxels ({format_bytes(layout.nbytes)} of memory)"


def _too_small(layout: DataLayout, holds: str) -> SegfuseInputError:
    return SegfuseInputError(
        f"{layout.path}: the file is smaller than its header claims: {_promise(layout)}, but "
        f"{holds}; truncated file or corrupted header (nothing was allocated)"
    )


def check_promised_size(layout: DataLayout) -> None:
    """Refuse a header that promises more data than its file can hold, or than memory can.

    Cheap (file sizes only): runs before any decoding or allocation.

    Raises:
        SegfuseInputError: naming the file, the promised shape, the memory it
            would need and what the file holds.
    """
    if layout.encoding == "unverifiable":
        return
    try:
        size = layout.data_file.stat().st_size - layout.offset
    except OSError as err:
        raise SegfuseInputError(f"{layout.path}: cannot read its data file {layout.data_file}: {err}") from err
    needed = layout.nbytes + max(layout.skip, 0)
    if layout.encoding == "raw" and size < needed:
        raise _too_small(layout, f"the data file holds only {format_bytes(max(size, 0))}")
    if layout.encoding in ("gzip", "zlib") and needed > _DEFLATE_MAX_RATIO * max(size, 0) + 1024:
        raise _too_small(
            layout, f"its {format_bytes(max(size, 0))} of compressed data can hold at most "
            f"{format_bytes(_DEFLATE_MAX_RATIO * max(size, 0))}"
        )
    memory = _physical_memory()
    if memory is not None and layout.nbytes > memory:
        raise SegfuseInputError(
            f"{layout.path}: {_promise(layout)}, more than this machine's {format_bytes(memory)}; "
            "refused before allocating"
        )


def _chunks(path: Path, offset: int) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(_CHUNK):
            yield chunk


def _decoded_gzip(path: Path, offset: int) -> int:
    with open(path, "rb") as raw:
        raw.seek(offset)
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            total = 0
            while chunk := stream.read(_CHUNK):  # the CRC and length of each member are checked at its end
                total += len(chunk)
    return total


def _decoded_zlib(path: Path, offset: int) -> int:
    decoder = zlib.decompressobj()
    total = 0
    for chunk in _chunks(path, offset):
        if decoder.eof:
            raise zlib.error(f"{len(chunk) + len(decoder.unused_data)} bytes after the end of the compressed data")
        total += len(decoder.decompress(chunk, _CHUNK * 64))
        while decoder.unconsumed_tail:
            total += len(decoder.decompress(decoder.unconsumed_tail, _CHUNK * 64))
    if not decoder.eof:
        raise EOFError("the compressed data ends before its end-of-stream marker")
    if decoder.unused_data:
        raise zlib.error(f"{len(decoder.unused_data)} bytes after the end of the compressed data")
    return total


def _decoded_bzip2(path: Path, offset: int) -> int:
    total, decoder, in_stream = 0, bz2.BZ2Decompressor(), False
    for chunk in _chunks(path, offset):
        data = chunk
        while data:
            in_stream = True
            total += len(decoder.decompress(data))
            data = b""
            if decoder.eof:  # a multi-stream file: the rest starts the next stream
                data, decoder, in_stream = decoder.unused_data, bz2.BZ2Decompressor(), False
    if in_stream:
        raise EOFError("the compressed data ends before its end-of-stream marker")
    return total


def verify_data(layout: DataLayout) -> None:
    """Decode ``layout``'s whole data once, checking checksums and the promised length.

    Raises:
        SegfuseInputError: a checksum or length mismatch, a truncated stream,
            or less data than the header promises, naming the file.

    Example:
        >>> verify_data(read_layout("t1.nii.gz", "nifti"))  # doctest: +SKIP
    """
    check_promised_size(layout)
    decoders = {"gzip": _decoded_gzip, "zlib": _decoded_zlib, "bzip2": _decoded_bzip2}
    decode = decoders.get(layout.encoding)
    if decode is None:  # raw data is checked by size; text encodings are left to the reader
        return
    try:
        total = decode(layout.data_file, layout.offset)
    except (OSError, EOFError, zlib.error, ValueError) as err:
        where = "" if layout.data_file == layout.path else f" (data file {layout.data_file})"
        raise SegfuseInputError(
            f"{layout.path}: corrupted or truncated {layout.encoding} data{where}: {err}; "
            "the file is damaged (copy or export it again)"
        ) from err
    needed = layout.nbytes + max(layout.skip, 0)
    if total < needed:
        raise _too_small(layout, f"its compressed data decodes to only {format_bytes(total)}")
