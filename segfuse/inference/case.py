"""Predict one case and write its label map on the case's exact input grid.

:func:`predict_case`, in the order the data flows:

1. the model (:func:`segfuse.inference.model.load_model`: a checkpoint alone rebuilds
   the network and its preprocessing) and the case's auxiliaries are checked: an
   auxiliary may be missing (or dropped on request) only for a model trained with
   modality dropout;
2. the case goes through :func:`segfuse.data.preprocess.prepare_case` — the
   same code path as training — onto the network grid (canonical RAS, target
   spacing, auxiliaries on their edge-aligned grids);
3. :func:`segfuse.inference.engine.predict_prepared` (also used by training's
   validation) runs :func:`~segfuse.inference.windows.sliding_window_multires`
   over the primary and every auxiliary together and blends softmax
   probabilities (AMP on CUDA only). With ``data.crop_to_nonzero`` only the box of
   the primary's non-zero voxels is run (the box training sampled from) and the
   rest is background. A 2D model runs slice by slice along the
   last axis: each primary slice with ``context_slices`` neighbours on each
   side (clamped at the edges) as channels, with each auxiliary's plane for
   slice ``z`` (``model.aux_slice``: slice ``z // scale_z``, or the interpolation
   between the two nearest, :mod:`segfuse.data.aux_slices`) at the in-plane scale ``(sx, sy)``;
4. the probabilities go back to the **exact input grid**: when the network grid
   is the canonical reorientation of the source grid they are only un-permuted
   and un-flipped (:func:`~segfuse.io.geometry.from_canonical`); otherwise
   they are first resampled by physical coordinates onto the canonical source
   grid. Outside the network's field of view the probabilities are 0 and the
   label is background;
5. the argmax becomes label values (with ``data.regions``: the regions above 0.5
   are painted in order, :func:`segfuse.data.regions.labels_from_regions`), written on the source volume's grid
   (shape, affine, qform/sform codes) in the smallest integer dtype, atomically;
   optionally the probability map (float32, channels last) and a QC picture. A case
   whose outputs are not all written leaves none behind.

Example:
    >>> case = case_from_paths("t1.nii.gz", {"flair": "flair_lowres.nii.gz"})  # doctest: +SKIP
    >>> predict_case("ckpt.pt", case, "seg.nii.gz").label_path  # doctest: +SKIP
    PosixPath('seg.nii.gz')
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segfuse.config import Config
from segfuse.data.cases import Case, ImageRef
from segfuse.data.preprocess import PreparedCase, prepare_case, resample
from segfuse.inference.dimensions import check_case_dimensions
from segfuse.inference.label_outputs import write_label_map
from segfuse.inference.model import LoadedModel, load_model
from segfuse.inference.paths import refuse_overwriting_inputs
from segfuse.io.atomic import file_sha256
from segfuse.io.errors import SegfuseInputError
from segfuse.io.geometry import canonical_grid, from_canonical
from segfuse.io.image import smallest_label_dtype, write_image

__all__ = ["PredictionResult", "case_from_paths", "default_sidecar", "predict_case"]

logger = logging.getLogger(__name__)


@dataclass
class PredictionResult:
    """What :func:`predict_case` wrote.

    Attributes:
        case_id: the case.
        label_path: the label map on the input grid.
        sha256: SHA-256 of ``label_path``.
        probabilities_path: the probability map ``(*input shape, K)`` float32, if written.
        qc_path: the QC picture, if written.
        missing_aux: auxiliaries predicted without (absent, or dropped on request).
        seconds: wall time of the case.
    """

    case_id: str
    label_path: Path
    sha256: str
    probabilities_path: Path | None = None
    qc_path: Path | None = None
    missing_aux: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def outputs(self) -> dict[str, Path]:
        """Role → path of every file written (``label``, ``probabilities``, ``qc``)."""
        out = {"label": self.label_path}
        if self.probabilities_path is not None:
            out["probabilities"] = self.probabilities_path
        if self.qc_path is not None:
            out["qc"] = self.qc_path
        return out


def _mirror_axes(cfg: Config, mirror: bool | Sequence[int] | None) -> list[int]:
    if mirror is None:
        return list(cfg.inference.mirror_axes)
    if mirror is True:
        return list(range(cfg.spatial_dims))
    if mirror is False:
        return []
    return [int(a) for a in mirror]


def _check_aux(model: LoadedModel, case: Case, drop_aux: Collection[str]) -> tuple[Case, list[str]]:
    """The case with ``drop_aux`` removed, and the auxiliaries it lacks; error when not allowed."""
    names = list(model.preprocessing.aux_scales)
    unknown = sorted(set(drop_aux) - set(names))
    if unknown:
        raise SegfuseInputError(f"drop_aux names {unknown} are not auxiliaries of this model; it has {names}")
    extra = sorted(set(case.aux) - set(names))
    if extra:
        raise SegfuseInputError(
            f"case {case.case_id!r}: auxiliary {extra} is not an input of this model; it takes {names or 'none'}"
        )
    missing = [n for n in names if n not in case.aux or n in drop_aux]
    if missing and not model.allow_missing_aux:
        raise SegfuseInputError(
            f"case {case.case_id!r}: auxiliary {', '.join(repr(n) for n in missing)} is missing, and this model "
            "was trained without modality dropout (data.aux.<name>.dropout = 0), so it needs every auxiliary "
            f"({names}); predict such cases with a model trained without it (segfuse predict --fallback CHECKPOINT)"
        )
    if missing:
        logger.warning(
            "case %s: predicting without auxiliary %s (the model was trained with modality dropout)",
            case.case_id,
            ", ".join(missing),
        )
        case = dataclasses.replace(case, aux={k: v for k, v in case.aux.items() if k not in missing})
    return case, missing


def _to_source_grid(probs: np.ndarray, affine: np.ndarray, prepared: PreparedCase) -> np.ndarray:
    """``(K, *network grid)`` → ``(K, X, Y, Z)`` on the source volume's own axes."""
    source = prepared.source
    src_shape = tuple(source.shape) + (1,) * (3 - len(source.shape))
    canon_affine, canon_shape = canonical_grid(source.affine, src_shape)
    exact = tuple(probs.shape[1:]) == canon_shape and np.allclose(affine, canon_affine, atol=1e-6)
    if not exact:
        probs = resample(probs, affine, canon_affine, canon_shape, mode="bilinear")
    return from_canonical(probs, canon_affine, source.affine)


def _labels_from(probs: np.ndarray, values: Sequence[int], regions: Mapping[str, Sequence[int]] | None = None):
    """Argmax over classes, mapped to label values, in the smallest integer dtype.

    With ``regions`` the channels are region probabilities, painted in order
    (:func:`segfuse.data.regions.labels_from_regions`).
    """
    if regions:
        from segfuse.data.regions import labels_from_regions

        return labels_from_regions(probs, regions)
    index = probs.argmax(axis=0)
    lut = np.asarray(values if len(values) == probs.shape[0] else range(probs.shape[0]))
    return lut[index].astype(smallest_label_dtype(int(lut.max())))


def default_sidecar(out_path: Path, tail: str) -> Path:
    name = out_path.name
    for suffix in (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return out_path.with_name(name[: -len(suffix)] + tail)
    return out_path.with_name(name + tail)


def _probabilities_path(out_path: Path, save_probabilities: bool | str | Path) -> Path | None:
    if not save_probabilities:
        return None
    if save_probabilities is True:
        return default_sidecar(out_path, "_probabilities.nii.gz")
    return Path(save_probabilities)


def _primary_channels(model: LoadedModel) -> int | None:
    """Channels the network's primary input takes (a 2D model's input also holds context slices)."""
    in_channels = getattr(getattr(model.net, "cfg", None), "in_channels", None)
    if in_channels is None:
        return None
    if model.cfg.spatial_dims == 2:
        return int(in_channels) // (2 * model.cfg.model.context_slices + 1)
    return int(in_channels)


def _refuse_before_work(
    model: LoadedModel, case: Case, outputs: Sequence[Path], protected: Sequence[str | Path]
) -> None:
    """Outputs that would replace an input, and scans of the wrong dimensions, are refused first.

    The inputs are the case's scans, every checkpoint of ``model`` (an ensemble's
    members too) and ``protected`` (e.g. the fallbacks not chosen for this case).
    """
    refuse_overwriting_inputs(outputs, case, [*model.checkpoints, *protected])
    check_case_dimensions(case, spatial_dims=model.cfg.spatial_dims, primary_channels=_primary_channels(model))


def predict_case(
    state_or_model: str | Path | Mapping[str, Any] | LoadedModel,
    case: Case,
    out_path: str | Path,
    *,
    save_probabilities: bool | str | Path = False,
    qc_path: str | Path | bool | None = None,
    device: str = "cpu",
    mirror: bool | Sequence[int] | None = None,
    progress: bool = False,
    drop_aux: Collection[str] = (),
    prepare: Callable[[Case], PreparedCase] | None = None,
    network_lock: contextlib.AbstractContextManager | None = None,
    protected: Sequence[str | Path] = (),
) -> PredictionResult:
    """Predict one case and write its label map on the case's exact input grid.

    Args:
        state_or_model: a checkpoint file, a loaded checkpoint dict or a :class:`LoadedModel`.
        case: the scans (a :class:`~segfuse.data.cases.Case`; its label, if any, is only drawn in the QC picture).
        out_path: the label file (``.nii.gz``, ``.nii``, ``.nrrd`` or ``.mha``; ``.seg.nrrd`` writes a
            3D Slicer segmentation with named, coloured segments); its folder must exist.
        save_probabilities: ``True`` writes ``<out>_probabilities.nii.gz`` beside ``out_path``;
            a path writes there. The map is float32 ``(*input shape, K)`` (K regions with ``data.regions``).
        qc_path: write a QC PNG there (slices with the mask over the primary and each auxiliary;
            with the reference's outline and an error column when the case has a label);
            ``True`` writes ``<out>_qc.png`` beside ``out_path``.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (used when loading a checkpoint).
        mirror: ``None`` uses the config's ``inference.mirror_axes``; ``True`` all spatial axes;
            ``False`` none; or the axes.
        progress: a progress bar over windows (3D) or slices (2D).
        drop_aux: auxiliaries to predict without, as if absent (needs modality dropout).
        prepare: returns the case prepared as ``prepare_case(case, model.preprocessing,
            with_label=False)`` would (the batch pipeline prepares cases ahead, in the background).
        network_lock: held while the network runs (the batch pipeline runs one case at a time on it).
        protected: other files no output may replace (besides the case's scans and the
            model's checkpoints): ``segfuse predict --fallback`` passes every fallback's.

    Returns:
        A :class:`PredictionResult`.

    Raises:
        SegfuseInputError: unreadable scans, an auxiliary missing for a model trained
            without modality dropout (named with the case), bad options.

    Example:
        >>> case = case_from_paths("t1.nii.gz", {"flair": "flair_lowres.nii.gz"})  # doctest: +SKIP
        >>> predict_case("ckpt.pt", case, "seg.nii.gz", qc_path="seg.png").label_path  # doctest: +SKIP
        PosixPath('seg.nii.gz')
    """
    start = time.perf_counter()
    model = load_model(state_or_model, device=device)
    out_path = Path(out_path)
    if qc_path is True:
        qc_path = default_sidecar(out_path, "_qc.png")
    elif qc_path is False:
        qc_path = None
    prob_path = _probabilities_path(out_path, save_probabilities)
    outputs = [p for p in (out_path, prob_path, qc_path) if p is not None]
    _refuse_before_work(model, case, outputs, protected)
    case, missing = _check_aux(model, case, set(drop_aux))
    axes = _mirror_axes(model.cfg, mirror)

    prepared = prepare_case(case, model.preprocessing, with_label=False) if prepare is None else prepare(case)
    with network_lock or contextlib.nullcontext():
        probs = model.probabilities(prepared, mirror_axes=axes, progress=progress).numpy()
    regions = model.cfg.data.regions
    network_labels = _labels_from(probs, model.label_values, regions) if qc_path is not None else None
    reference = None
    if qc_path is not None:  # a labelled case: the QC picture shows the reference beside the prediction
        from segfuse.inference.qc import reference_for_qc

        reference = reference_for_qc(case, prepared, model.preprocessing.labels)
    probs = _to_source_grid(probs, prepared.affine, prepared)
    source = prepared.source
    labels = _labels_from(probs, model.label_values, regions).reshape(source.shape)

    written: list[Path] = []
    try:
        write_label_map(labels, source, out_path, model.cfg)  # .seg.nrrd: a Slicer segmentation
        written.append(out_path)
        if prob_path is not None:
            channels_last = np.moveaxis(probs, 0, -1).reshape(*source.shape, probs.shape[0])
            write_image(channels_last, source, prob_path, dtype=np.float32)
            written.append(prob_path)
        del probs
        if qc_path is not None:
            from segfuse.inference.qc import save_qc_png

            save_qc_png(
                prepared.primary[0],
                {n: a[0] for n, a in prepared.aux.items() if a is not None},
                network_labels,
                qc_path,
                scales=dict(model.preprocessing.aux_scales),
                reference=reference,
            )
            written.append(Path(qc_path))
    except BaseException:
        # All or nothing: a case whose outputs are not all written leaves none behind.
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return PredictionResult(
        case_id=case.case_id,
        label_path=out_path,
        sha256=file_sha256(out_path),
        probabilities_path=prob_path,
        qc_path=None if qc_path is None else Path(qc_path),
        missing_aux=missing,
        seconds=time.perf_counter() - start,
    )


def case_from_paths(image: str | Path, aux: Mapping[str, str | Path] | None = None, case_id: str | None = None) -> Case:
    """A :class:`Case` from file paths (any format :func:`~segfuse.io.image.read_image` reads).

    Example:
        >>> case_from_paths("t1.nii.gz", {"flair": "flair.nii.gz"}).case_id
        't1'
    """
    image = Path(image)
    if case_id is None:
        case_id = image.name
        for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
            if case_id.endswith(suffix):
                case_id = case_id[: -len(suffix)]
                break
    return Case(
        case_id=case_id,
        primary=ImageRef(image),
        aux={name: ImageRef(Path(path)) for name, path in (aux or {}).items()},
    )
