"""Which voxel-to-world geometry segfuse trusts in a NIfTI header, and what it writes back.

A NIfTI header can describe its geometry twice (qform and sform), not at all,
or with voxel sizes that make no sense. nibabel quietly picks the sform,
invents an orientation, or replaces bad voxel sizes; segfuse decides instead,
one rule per case (docs/reliability.md):

- **zero, negative or non-finite voxel sizes** (``pixdim[1..3]`` of the spatial
  axes): refused. The header contradicts itself; nibabel would silently use 1 or
  the absolute value.
- **qform and sform both set and disagreeing** (some voxel-grid corner maps more
  than 1 % of a voxel apart): refused under the default rule ``"strict"``. The
  rule ``"sform"`` or ``"qform"`` (``segfuse ... --geometry sform``, or
  :func:`geometry_rule` in Python) uses that one, with a warning naming the file;
  outputs then carry only the form that was used (the other's code is 0).
- **neither qform nor sform** (both codes 0): used with a warning naming the
  file: voxel sizes from ``pixdim``, nibabel's default axes (LAS, centred). The
  input claims no orientation, so outputs claim none either (both codes 0).

Outputs never claim more than the input did: a form the input lacked, or one
that segfuse did not use, is written with code 0.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from segfuse.io.errors import SegfuseInputError
from segfuse.io.geometry import describe_affine

__all__ = ["GEOMETRY_RULES", "check_voxel_sizes", "current_geometry_rule", "geometry_rule", "trusted_nifti_geometry"]

logger = logging.getLogger(__name__)

#: ``strict``: refuse disagreeing qform/sform; ``sform``/``qform``: use that one.
GEOMETRY_RULES = ("strict", "sform", "qform")

# Process-wide, not a ContextVar: images may be read in worker threads, which would
# not inherit a context variable set by the CLI.
_RULE = ["strict"]

# qform and sform agree when every corner of the voxel grid maps within this
# fraction of the smallest voxel size (float32 rounding is ~1e-5 of that).
_AGREEMENT = 0.01


def current_geometry_rule() -> str:
    """The rule in force: ``"strict"`` unless inside :func:`geometry_rule`."""
    return _RULE[0]


@contextlib.contextmanager
def geometry_rule(rule: str | None) -> Iterator[None]:
    """Use ``rule`` (one of :data:`GEOMETRY_RULES`) for every image read inside the block, in any thread.

    Example:
        >>> with geometry_rule("sform"):  # doctest: +SKIP
        ...     predict_case("ckpt.pt", case, "seg.nii.gz")
    """
    rule = rule or "strict"
    if rule not in GEOMETRY_RULES:
        raise SegfuseInputError(f"geometry rule must be one of {', '.join(GEOMETRY_RULES)}, got {rule!r}")
    previous, _RULE[0] = _RULE[0], rule
    try:
        yield
    finally:
        _RULE[0] = previous


def _corners(shape: tuple[int, ...]) -> np.ndarray:
    dims = [*shape, 1, 1, 1][:3]
    axes = [(0.0, float(n - 1)) for n in dims]
    grid = np.array(np.meshgrid(*axes, indexing="ij")).reshape(3, -1)
    return np.vstack([grid, np.ones(grid.shape[1])])


def _spatial_ndim(header: nib.Nifti1Header) -> int:
    return max(1, min(int(header["dim"][0]), 3))


def check_voxel_sizes(path: Path, raw: nib.Nifti1Header) -> None:
    """Refuse zero, negative or non-finite voxel sizes of the spatial axes in a raw NIfTI header."""
    k = _spatial_ndim(raw)
    sizes = np.asarray(raw["pixdim"][1 : k + 1], dtype=np.float64)
    if not np.all(np.isfinite(sizes)) or np.any(sizes <= 0):
        raise SegfuseInputError(
            f"{path}: voxel sizes (pixdim[1..{k}]) {tuple(float(s) for s in sizes)} include zero, negative or "
            "non-finite values; the header contradicts itself (nibabel would silently use 1 or the absolute "
            "value). Fix the header's voxel sizes, e.g. with nibabel's header.set_zooms()"
        )


def _output_header(image: nib.Nifti1Image | nib.Nifti2Image, qform_code: int, sform_code: int) -> nib.Nifti1Header:
    header = image.header.copy()
    if not isinstance(header, nib.Nifti1Header):  # NIfTI-2 -> keep the geometry as NIfTI-1
        header = nib.Nifti1Header.from_header(header)
    header["qform_code"] = qform_code
    header["sform_code"] = sform_code
    return header


def trusted_nifti_geometry(
    path: Path, raw: nib.Nifti1Header | nib.Nifti2Header, image: nib.Nifti1Image | nib.Nifti2Image
) -> tuple[np.ndarray, nib.Nifti1Header]:
    """The affine segfuse uses for ``image`` and the header its outputs copy.

    Args:
        path: the file, for messages.
        raw: the header as stored (``check=False``), see :func:`segfuse.io.headers.read_nifti_header`.
        image: the image nibabel loaded from ``path``.

    Returns:
        ``(affine 4x4 voxel -> RAS mm, NIfTI-1 header)``; the header's qform and
        sform codes say which form the affine came from (0 for the others).

    Raises:
        SegfuseInputError: bad voxel sizes, or disagreeing qform and sform under
            the ``"strict"`` rule (both affines named).
    """
    check_voxel_sizes(path, raw)
    qcode, scode = int(raw["qform_code"]), int(raw["sform_code"])
    if qcode == 0 and scode == 0:
        affine = np.asarray(image.affine, dtype=np.float64)
        logger.warning(
            "%s: no qform or sform (both codes 0): the orientation is unknown; using the voxel sizes %s "
            "with nibabel's default axes (%s), and outputs claim no orientation either (codes 0)",
            path,
            tuple(float(s) for s in raw["pixdim"][1 : _spatial_ndim(raw) + 1]),
            describe_affine(affine),
        )
        return affine, _output_header(image, 0, 0)
    if qcode == 0 or scode == 0:
        return np.asarray(image.affine, dtype=np.float64), _output_header(image, qcode, scode)
    try:
        qform = np.asarray(raw.get_qform(), dtype=np.float64)
        sform = np.asarray(raw.get_sform(), dtype=np.float64)
    except (ValueError, ArithmeticError) as err:  # e.g. quaternion parameters beyond a unit rotation
        raise SegfuseInputError(f"{path}: invalid qform or sform in the header: {err}") from err
    corners = _corners(tuple(int(d) for d in raw["dim"][1 : _spatial_ndim(raw) + 1]))
    distance = float(np.max(np.linalg.norm((qform @ corners - sform @ corners)[:3], axis=0)))
    voxel = float(np.min(np.sqrt((sform[:3, :3] ** 2).sum(axis=0))))
    if distance <= _AGREEMENT * voxel:
        return np.asarray(image.affine, dtype=np.float64), _output_header(image, qcode, scode)
    rule = current_geometry_rule()
    if rule == "strict":
        raise SegfuseInputError(
            f"{path}: the header's qform and sform disagree (voxel-grid corners up to {distance:.3g} mm apart): "
            f"qform (code {qcode}) {describe_affine(qform)}; sform (code {scode}) {describe_affine(sform)}. "
            "segfuse will not guess which is right: fix the header, or choose one with --geometry sform or "
            "--geometry qform"
        )
    chosen, affine = (("sform", sform) if rule == "sform" else ("qform", qform))
    logger.warning(
        "%s: qform and sform disagree (up to %.3g mm); using the %s as --geometry %s says; outputs carry only it",
        path,
        distance,
        chosen,
        rule,
    )
    codes = (0, scode) if rule == "sform" else (qcode, 0)
    return affine, _output_header(image, *codes)
