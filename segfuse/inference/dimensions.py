"""Does a case have the dimensions a model takes? Checked from the headers, before any work.

Rules (docs/reliability.md):

- a 3D model takes a volume: ``(X, Y, Z)`` with ``Z > 1``; a 2D image ``(X, Y)``
  or a single slice ``(X, Y, 1)`` is refused (it used to give an all-background
  mask with exit code 0);
- a 2D (slice) model takes ``(X, Y)`` or ``(X, Y, Z)``;
- a fourth axis holds channels: of length 1 it is the same as none; otherwise
  its length must equal the channels the model's primary takes (or the case
  picks one channel, as decathlon multi-modality files do);
- every auxiliary has one channel.

DICOM folders are not checked here (their headers need a full read); the
reader's own checks apply.
"""

from __future__ import annotations

from segfuse.data.cases import Case, ImageRef
from segfuse.io.errors import SegfuseInputError
from segfuse.io.headers import image_shape

__all__ = ["check_case_dimensions"]


def _channels(shape: tuple[int, ...], ref: ImageRef) -> int:
    if len(shape) == 4 and ref.channel is None:
        return shape[3]
    return 1


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_case_dimensions(case: Case, *, spatial_dims: int, primary_channels: int | None) -> None:
    """Refuse a case whose primary or auxiliaries cannot be what the model takes.

    Args:
        case: the case to predict.
        spatial_dims: the model's mode: 3 (volumes) or 2 (slices along the last axis).
        primary_channels: channels the model's primary takes (``None``: not checked).

    Raises:
        SegfuseInputError: naming the file, its shape and what the model expects.
    """
    ref = case.primary
    shape = image_shape(ref.path)
    if shape is not None:
        expects = (
            f"the {spatial_dims}D model expects a "
            + ("volume (X, Y, Z)" if spatial_dims == 3 else "2D image (X, Y) or a volume (X, Y, Z)")
            + (f" with {primary_channels} channel(s) on a 4th axis" if primary_channels and primary_channels > 1
               else "")
        )
        if len(shape) < 2:
            raise SegfuseInputError(f"{ref.path}: primary scan of shape {_shape_text(shape)} is 1D; {expects}")
        if spatial_dims == 3 and (len(shape) == 2 or shape[2] == 1):
            raise SegfuseInputError(
                f"{ref.path}: primary scan of shape {_shape_text(shape)} is a single 2D slice; {expects}"
            )
        channels = _channels(shape, ref)
        if primary_channels is not None and channels != primary_channels:
            raise SegfuseInputError(
                f"{ref.path}: primary scan of shape {_shape_text(shape)} holds {channels} volumes on its 4th axis; "
                f"{expects}" + ("" if primary_channels > 1 else " (a 4th axis of length 1 is allowed)")
            )
    for name, aux in case.aux.items():
        aux_shape = image_shape(aux.path)
        if aux_shape is not None and _channels(aux_shape, aux) != 1:
            raise SegfuseInputError(
                f"{aux.path}: auxiliary {name!r} of shape {_shape_text(aux_shape)} holds "
                f"{_channels(aux_shape, aux)} volumes on its 4th axis; the model expects one volume "
                "(a 4th axis of length 1 is allowed)"
            )
