"""segfuse.io: reading and writing images, atomic writes, grid geometry, input errors.

The lowest layer: it imports nothing else from segfuse.
"""

from segfuse.io.atomic import (
    atomic_output_path,
    atomic_torch_save,
    atomic_write,
    atomic_write_text,
    file_sha256,
)
from segfuse.io.errors import SegfuseInputError, SegfuseWriteError
from segfuse.io.formats import READ_SUFFIXES, WRITE_SUFFIXES
from segfuse.io.geometry import (
    aux_grid,
    axcodes,
    describe_affine,
    overlap_fraction,
    same_grid,
    scale_between,
    spacing_from_affine,
)
from segfuse.io.image import (
    Volume,
    read_image,
    smallest_label_dtype,
    write_image,
)

__all__ = [
    "READ_SUFFIXES",
    "WRITE_SUFFIXES",
    "SegfuseInputError",
    "SegfuseWriteError",
    "Volume",
    "atomic_output_path",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_text",
    "aux_grid",
    "axcodes",
    "describe_affine",
    "file_sha256",
    "overlap_fraction",
    "read_image",
    "same_grid",
    "scale_between",
    "smallest_label_dtype",
    "spacing_from_affine",
    "write_image",
]
