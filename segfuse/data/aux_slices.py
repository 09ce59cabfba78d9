"""Which auxiliary slice(s) a 2.5D model sees beside primary slice ``z``.

A 2D model runs on the primary's slices along one axis; an auxiliary stored on
the edge-aligned grid of its scale ``s`` along that axis has one slice for every
``s`` primary slices: auxiliary slice ``k`` covers primary slices
``k*s .. k*s + s - 1`` and its centre lies at primary index ``k*s + (s - 1) / 2``.

Two ways to give primary slice ``z`` its auxiliary (``model.aux_slice``):

- ``"containing"``: the auxiliary slice whose extent contains ``z``
  (``z // s``), unchanged. Nearest-slab sampling: the auxiliary jumps every
  ``s`` slices.
- ``"linear"``: the linear interpolation, along the slice axis only, between
  the two auxiliary slices whose centres bracket ``z``'s centre, at fractional
  auxiliary index ``t = (z + 0.5) / s - 0.5`` (clamped at the ends). The
  in-plane grid stays the auxiliary's native one; only the through-plane
  position is matched to the primary slice's, as a trilinear resampling onto
  the primary grid would along that axis.

Example:
    >>> slice_weights(5, 4, 10, "containing")
    [(1, 1.0)]
    >>> slice_weights(5, 4, 10, "linear")   # centre 5.5 -> t = 0.875
    [(0, 0.125), (1, 0.875)]
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from segfuse.auxiliary import AUX_SLICE_MODES


def slice_weights(z: int, scale: int, n_aux: int, mode: str) -> list[tuple[int, float]]:
    """Auxiliary slices and their weights for primary slice ``z``.

    Args:
        z: primary slice index (on the same padded/cropped grid as the auxiliary).
        scale: the auxiliary's scale along the slice axis (primary slices per auxiliary slice).
        n_aux: the auxiliary's number of slices along that axis.
        mode: ``"containing"`` or ``"linear"`` (see the module docstring).

    Returns:
        ``[(k, w), ...]``: one or two auxiliary slice indices in ``[0, n_aux)`` with
        weights summing to 1.
    """
    if mode not in AUX_SLICE_MODES:
        raise ValueError(f"aux_slice mode must be one of {AUX_SLICE_MODES}, got {mode!r}")
    if n_aux < 1:
        raise ValueError(f"the auxiliary has no slices along the slice axis (n_aux={n_aux})")
    if mode == "containing" or scale == 1:
        return [(min(max(z // scale, 0), n_aux - 1), 1.0)]
    t = (z + 0.5) / scale - 0.5
    k0 = math.floor(t)
    w = t - k0
    lo, hi = min(max(k0, 0), n_aux - 1), min(max(k0 + 1, 0), n_aux - 1)
    if lo == hi or w == 0.0:
        return [(lo, 1.0)]
    return [(lo, 1.0 - w), (hi, w)]


def aux_slice(read: Callable[[int], np.ndarray], z: int, scale: int, n_aux: int, mode: str) -> np.ndarray:
    """The auxiliary's plane for primary slice ``z``: ``read(k)`` gives plane ``k`` ``(C_a, *plane)``.

    Returns:
        float32 ``(C_a, *plane)``: plane ``z // scale`` (``"containing"``) or the
        weighted sum of the two bracketing planes (``"linear"``).
    """
    parts = slice_weights(z, scale, n_aux, mode)
    if len(parts) == 1:
        return np.asarray(read(parts[0][0]), dtype=np.float32)
    (k0, w0), (k1, w1) = parts
    return (w0 * np.asarray(read(k0), dtype=np.float32) + w1 * np.asarray(read(k1), dtype=np.float32)).astype(
        np.float32
    )
