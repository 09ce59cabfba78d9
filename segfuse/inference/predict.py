"""Predict label maps for new scans: checkpoint → preprocessing → sliding window → input grid.

For one case (:func:`predict_case`):

1. the checkpoint alone rebuilds the network and its preprocessing (the config
   travels inside it, read with ``weights_only=True``);
2. the case goes through :func:`segfuse.data.preprocess.prepare_case` — the
   same code path as training — onto the network grid (canonical RAS, target
   spacing, auxiliaries on their edge-aligned grids);
3. :func:`segfuse.inference.engine.predict_prepared` (also used by training's
   validation) runs :func:`~segfuse.inference.windows.sliding_window_multires`
   over the primary and every auxiliary together and blends softmax
   probabilities (AMP on CUDA only). A 2D model runs slice by slice along the
   last axis: each primary slice with ``context_slices`` neighbours on each
   side (clamped at the edges) as channels, with auxiliary slice ``z // scale_z``
   at the in-plane scale ``(sx, sy)``;
4. the probabilities go back to the **exact input grid**: when the network grid
   is the canonical reorientation of the source grid they are only un-permuted
   and un-flipped (:func:`~segfuse.io.geometry.from_canonical`); otherwise
   they are first resampled by physical coordinates onto the canonical source
   grid. Outside the network's field of view the probabilities are 0 and the
   label is background;
5. the argmax becomes label values (with ``data.regions``: the regions above 0.5
   are painted in order, :func:`segfuse.data.regions.labels_from_regions`), written on the source volume's grid
   (shape, affine, qform/sform codes) in the smallest integer dtype, atomically;
   optionally the probability map (float32, channels last) and a QC picture.

:func:`predict` runs many cases: a progress bar, per-case failures reported
and skipped (the run goes on), and a ``predictions.json`` manifest in the output
folder recording each finished case's outputs with their SHA-256, which
``resume=True`` trusts only when the files on disk still have those hashes.

Example:
    >>> result = predict("runs/x/checkpoint_best.pt", "data/Task04", "preds")  # doctest: +SKIP
    >>> result.ok, len(result.succeeded)  # doctest: +SKIP
    (True, 42)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import json
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from segfuse.auxiliary import allows_missing
from segfuse.config import Config, config_from_dict
from segfuse.data.layouts import Case, Dataset, ImageRef
from segfuse.data.prediction_inputs import read_for_prediction
from segfuse.data.preprocess import (
    PreparedCase,
    Preprocessing,
    prepare_case,
    preprocessing_from_config,
    resample,
)
from segfuse.inference.dimensions import check_case_dimensions
from segfuse.inference.engine import predict_prepared
from segfuse.inference.label_outputs import write_label_map
from segfuse.inference.paths import case_id_problem, case_inputs, output_collisions, refuse_overwriting_inputs
from segfuse.inference.pipeline import prepare_ahead, run_pipelined, run_sequential
from segfuse.io.atomic import atomic_write_text, file_sha256, remove_stale_temporaries
from segfuse.io.checkpoint import load_checkpoint
from segfuse.io.errors import SegfuseInputError
from segfuse.io.geometry import canonical_grid, from_canonical
from segfuse.io.image import smallest_label_dtype, write_image

__all__ = [
    "MANIFEST_NAME",
    "BatchResult",
    "LoadedModel",
    "PredictionResult",
    "case_from_paths",
    "load_model",
    "predict",
    "predict_case",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "predictions.json"
_MANIFEST_FORMAT = "segfuse-predictions-1"


# ------------------------------------------------------------------ the model


@dataclass
class LoadedModel:
    """A network with everything needed to run it on raw scans.

    Attributes:
        cfg: the run config saved in the checkpoint.
        net: called as ``net(x, aux)`` with ``x`` ``(B, C, *roi)`` and
            ``aux`` ``name → (B, C_a, *roi / scale)`` or ``None``; returns logits
            ``(B, K, *roi)``. In eval mode on ``device``.
        preprocessing: the :class:`Preprocessing` the config describes.
        device: where ``net`` runs.
        checkpoint: the checkpoint file, when loaded from one.
    """

    cfg: Config
    net: torch.nn.Module
    preprocessing: Preprocessing
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    checkpoint: Path | None = None

    @property
    def allow_missing_aux(self) -> bool:
        """Trained with modality dropout: auxiliaries may be absent at inference."""
        return allows_missing(self.cfg.data.aux)

    @property
    def label_values(self) -> list[int]:
        """Label value of each output class (class index ``i`` → ``label_values[i]``)."""
        values = sorted(self.cfg.data.labels) if self.cfg.data.labels else [0, 1]
        return values if len(values) >= 2 else [0, 1]

    @property
    def checkpoints(self) -> list[Path]:
        """The checkpoint files behind this model (several for an ensemble)."""
        return [] if self.checkpoint is None else [self.checkpoint]

    def checkpoint_sha256(self) -> str | None:
        """SHA-256 of the checkpoint file (``None`` for an in-memory model); ``resume`` compares it."""
        return file_sha256(self.checkpoint) if self.checkpoint is not None else None

    def probabilities(
        self, prepared: PreparedCase, *, mirror_axes: Sequence[int], progress: bool = False
    ) -> torch.Tensor:
        """Class probabilities ``(K, *prepared.shape)`` float32 on the CPU (an ensemble averages its members')."""
        return predict_prepared(
            self.net, self.cfg, prepared, device=self.device, mirror_axes=mirror_axes, progress=progress
        )


def _resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise SegfuseInputError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SegfuseInputError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return torch.device(device)


def load_model(
    checkpoint: str | Path | Mapping[str, Any] | LoadedModel | Sequence[str | Path], device: str = "cpu"
) -> LoadedModel:
    """Rebuild the network and its preprocessing from a checkpoint file or loaded dict.

    A list of checkpoints (or run folders, or a folder of fold runs) gives an
    :class:`~segfuse.inference.ensemble.Ensemble` that averages their probabilities.

    Example:
        >>> model = load_model("runs/x/checkpoint_best.pt", device="auto")  # doctest: +SKIP
    """
    if isinstance(checkpoint, LoadedModel):
        return checkpoint
    if isinstance(checkpoint, list | tuple):
        from segfuse.inference.ensemble import load_ensemble

        return load_ensemble(checkpoint, device=device)
    from segfuse.factory import model_from_checkpoint

    path = None
    if isinstance(checkpoint, str | Path):
        path = Path(checkpoint)
        state = load_checkpoint(path)
        path = Path(state.get("path", path))
    else:
        state = dict(checkpoint)
    dev = _resolve_device(device)
    cfg, net = model_from_checkpoint(state, device=str(dev))
    return LoadedModel(cfg=cfg, net=net, preprocessing=preprocessing_from_config(cfg), device=dev, checkpoint=path)


def model_from_config(cfg: Config | Mapping[str, Any], net: torch.nn.Module, device: str = "cpu") -> LoadedModel:
    """Wrap an in-memory network and its config (tests, notebooks) as a :class:`LoadedModel`."""
    if not isinstance(cfg, Config):
        cfg = config_from_dict(dict(cfg))
    dev = _resolve_device(device)
    return LoadedModel(cfg=cfg, net=net.to(dev).eval(), preprocessing=preprocessing_from_config(cfg), device=dev)


# ------------------------------------------------------------------ one case


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
            f"({names})"
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


def _default_sidecar(out_path: Path, tail: str) -> Path:
    name = out_path.name
    for suffix in (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return out_path.with_name(name[: -len(suffix)] + tail)
    return out_path.with_name(name + tail)


def _probabilities_path(out_path: Path, save_probabilities: bool | str | Path) -> Path | None:
    if not save_probabilities:
        return None
    if save_probabilities is True:
        return _default_sidecar(out_path, "_probabilities.nii.gz")
    return Path(save_probabilities)


def _primary_channels(model: LoadedModel) -> int | None:
    """Channels the network's primary input takes (a 2D model's input also holds context slices)."""
    in_channels = getattr(getattr(model.net, "cfg", None), "in_channels", None)
    if in_channels is None:
        return None
    if model.cfg.spatial_dims == 2:
        return int(in_channels) // (2 * model.cfg.model.context_slices + 1)
    return int(in_channels)


def _refuse_before_work(model: LoadedModel, case: Case, outputs: Sequence[Path]) -> None:
    """Outputs that would replace an input, and scans of the wrong dimensions, are refused first."""
    refuse_overwriting_inputs(outputs, case, model.checkpoint)
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
) -> PredictionResult:
    """Predict one case and write its label map on the case's exact input grid.

    Args:
        state_or_model: a checkpoint file, a loaded checkpoint dict or a :class:`LoadedModel`.
        case: the scans (a :class:`~segfuse.data.layouts.Case`; its label, if any, is only drawn in the QC picture).
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
        qc_path = _default_sidecar(out_path, "_qc.png")
    elif qc_path is False:
        qc_path = None
    prob_path = _probabilities_path(out_path, save_probabilities)
    _refuse_before_work(model, case, [p for p in (out_path, prob_path, qc_path) if p is not None])
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


# ------------------------------------------------------------------ many cases


@dataclass
class BatchResult:
    """What :func:`predict` did.

    Attributes:
        out_dir: the output folder (label maps ``<case_id>.nii.gz``).
        manifest_path: ``predictions.json`` recording every finished case.
        succeeded: results of the cases predicted in this run.
        skipped: case ids skipped by ``resume`` (outputs present with matching hashes).
        failed: case id → error message.
        errors: problems not tied to one case (``predictions.json`` not written).
    """

    out_dir: Path
    manifest_path: Path
    succeeded: list[PredictionResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No case failed and every file was written."""
        return not self.failed and not self.errors

    def summary(self) -> str:
        """One line of counts, then one line per failed case and per other error."""
        lines = [
            f"{len(self.succeeded)} predicted, {len(self.skipped)} skipped (resume), "
            f"{len(self.failed)} failed; outputs in {self.out_dir}"
        ]
        lines += [f"FAILED {case}: {message}" for case, message in self.failed.items()]
        lines += [f"ERROR: {message}" for message in self.errors]
        return "\n".join(lines)


def _cases_from(inputs: Any, model: LoadedModel) -> list[Case]:
    if isinstance(inputs, Case):
        return [inputs]
    if isinstance(inputs, Dataset):
        return list(inputs.cases)
    if isinstance(inputs, str | Path):
        dataset = read_for_prediction(
            inputs,
            primary=model.cfg.data.primary,
            aux=list(model.cfg.data.aux),
            channel_names=model.cfg.data.modalities,
        )
        return list(dataset.cases)
    cases = list(inputs)
    if not all(isinstance(c, Case) for c in cases):
        raise SegfuseInputError("inputs must be a dataset folder, a manifest, a Dataset, a Case or a list of Cases")
    return cases


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("%s: unreadable prediction manifest (%s); predicting every case", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("format") != _MANIFEST_FORMAT:
        logger.warning("%s: not a segfuse prediction manifest; predicting every case", path)
        return {}
    return data


def _finished(entry: Any, out_dir: Path, wanted: Collection[str]) -> bool:
    """Every wanted output is recorded and the file on disk has the recorded hash."""
    if not isinstance(entry, dict):
        return False
    outputs = entry.get("outputs", {})
    for role in wanted:
        record = outputs.get(role)
        if not isinstance(record, dict):
            return False
        path = out_dir / str(record.get("path", ""))
        if not path.is_file() or file_sha256(path) != record.get("sha256"):
            return False
    return True


def _refused_cases(cases: Sequence[Case], out_dir: Path, checkpoint: Path | None, probabilities: bool, qc: bool
                   ) -> dict[str, str]:
    """Case id → reason, for cases whose outputs would land outside ``out_dir`` or on an input."""
    refused = {c.case_id: problem for c in cases if (problem := case_id_problem(c.case_id)) is not None}
    outputs = {
        c.case_id: [out_dir / f"{c.case_id}.nii.gz"]
        + ([out_dir / "probabilities" / f"{c.case_id}.nii.gz"] if probabilities else [])
        + ([out_dir / "qc" / f"{c.case_id}.png"] if qc else [])
        for c in cases
        if c.case_id not in refused
    }
    inputs = [p for c in cases for p in case_inputs(c)] + ([checkpoint] if checkpoint is not None else [])
    for case_id, clashes in output_collisions(outputs, inputs).items():
        refused[case_id] = f"output {'; '.join(clashes)}: writing it would replace an input"
    return refused


def _write_manifest(path: Path, record: dict[str, Any], result: BatchResult) -> None:
    """Write ``predictions.json``; a failure (disk full) is recorded once, not raised."""
    try:
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    except OSError as exc:
        message = " ".join(str(exc).split())
        if message not in result.errors:
            logger.error("%s", message)
            result.errors.append(message)


def predict(
    checkpoint: str | Path | Mapping[str, Any] | LoadedModel,
    inputs: str | Path | Dataset | Case | Sequence[Case],
    out_dir: str | Path,
    *,
    resume: bool = False,
    save_probabilities: bool = False,
    qc: bool = False,
    device: str = "cpu",
    mirror: bool | Sequence[int] | None = None,
    drop_aux: Collection[str] = (),
    progress: bool = True,
    workers: int = 1,
    worker_kind: str = "thread",
) -> BatchResult:
    """Predict every case of a dataset folder, a manifest or a list of cases into ``out_dir``.

    Writes ``<case_id>.nii.gz`` per case (plus ``probabilities/<case_id>.nii.gz``
    and ``qc/<case_id>.png`` on request) and ``predictions.json``, which maps each
    finished case to its outputs and their SHA-256. A failing case is logged
    with its message and recorded in :attr:`BatchResult.failed`; the others go on.

    Args:
        checkpoint: checkpoint file, loaded checkpoint dict or :class:`LoadedModel`.
        inputs: any layout :func:`~segfuse.data.layouts.read_dataset` reads, a
            :class:`Dataset`, a :class:`Case` or a list of them.
        out_dir: output folder (created).
        resume: skip cases whose recorded outputs are on disk with the recorded hash
            (and that were predicted by the same checkpoint file).
        save_probabilities, qc, device, mirror, drop_aux: see :func:`predict_case`.
        progress: a progress bar over cases.
        workers: cases read and preprocessed ahead, in the background, while the network
            runs on the current one (whose predecessor's results are written meanwhile);
            see :mod:`segfuse.inference.pipeline`. ``0``: one case after the other. The
            outputs are the same either way.
        worker_kind: ``"thread"`` or ``"process"`` background readers.

    Returns:
        A :class:`BatchResult`; ``result.ok`` is ``False`` when any case failed.

    Example:
        >>> r = predict("ckpt.pt", "manifest.csv", "preds", resume=True)  # doctest: +SKIP
        >>> print(r.summary())  # doctest: +SKIP
        3 predicted, 0 skipped (resume), 0 failed; outputs in preds
    """
    model = load_model(checkpoint, device=device)
    cases = _cases_from(inputs, model)
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise SegfuseInputError(f"case ids must be unique to name the outputs; repeated: {duplicates}")
    out_dir = Path(out_dir)
    refused = _refused_cases(cases, out_dir, model.checkpoint, save_probabilities, qc)
    out_dir.mkdir(parents=True, exist_ok=True)
    if save_probabilities:
        (out_dir / "probabilities").mkdir(exist_ok=True)
    if qc:
        (out_dir / "qc").mkdir(exist_ok=True)
    manifest_path = out_dir / MANIFEST_NAME
    if resume:  # temporary files of killed runs (never those of a live process)
        for folder in (out_dir, out_dir / "probabilities", out_dir / "qc"):
            for stale in remove_stale_temporaries(folder):
                logger.info("removed %s, left by an interrupted run", stale)
    checkpoint_sha = model.checkpoint_sha256()
    previous = _read_manifest(manifest_path) if resume else {}
    if previous and previous.get("checkpoint_sha256") != checkpoint_sha:
        logger.warning("%s: recorded with another checkpoint; predicting every case again", manifest_path)
        previous = {}
    record: dict[str, Any] = {
        "format": _MANIFEST_FORMAT,
        "checkpoint": None if model.checkpoint is None else str(model.checkpoint),
        "checkpoint_sha256": checkpoint_sha,
        "checkpoints": [str(p) for p in model.checkpoints],
        "labels": {str(v): str(n) for v, n in sorted(model.cfg.data.labels.items())},
        "cases": dict(previous.get("cases", {})) if resume else {},
    }
    wanted = ["label"] + (["probabilities"] if save_probabilities else []) + (["qc"] if qc else [])
    result = BatchResult(out_dir=out_dir, manifest_path=manifest_path)
    for case_id, reason in refused.items():  # listed with the failures; never touched
        logger.error("case %s refused: %s", case_id, reason)
        result.failed[case_id] = reason

    prob_dir, qc_dir = out_dir / "probabilities", out_dir / "qc"
    todo = []
    for case in cases:
        if case.case_id in refused:
            continue
        if resume and _finished(record["cases"].get(case.case_id), out_dir, wanted):
            result.skipped.append(case.case_id)
            continue
        record["cases"].pop(case.case_id, None)
        todo.append(case)

    def run(case: Case, prepare=None, network_lock=None) -> PredictionResult:
        return predict_case(
            model,
            case,
            out_dir / f"{case.case_id}.nii.gz",
            save_probabilities=(prob_dir / f"{case.case_id}.nii.gz") if save_probabilities else False,
            qc_path=(qc_dir / f"{case.case_id}.png") if qc else None,
            mirror=mirror,
            drop_aux=drop_aux,
            prepare=prepare,
            network_lock=network_lock,
        )

    if workers > 0:
        read = functools.partial(prepare_ahead, spec=model.preprocessing, drop_aux=frozenset(drop_aux))
        outcomes = run_pipelined(todo, read, run, workers=workers, kind=worker_kind)
    else:
        outcomes = run_sequential(todo, run)
    bar = tqdm(outcomes, desc="predict", unit="case", total=len(cases), disable=not progress)
    bar.update(len(result.skipped) + len(refused))
    for case, done in bar:
        if isinstance(done, Exception):  # one bad case must not stop the others
            message = " ".join(str(done).split()) or type(done).__name__
            logger.error("case %s failed: %s", case.case_id, message)
            result.failed[case.case_id] = message
        else:
            result.succeeded.append(done)
            record["cases"][case.case_id] = {
                "outputs": {
                    role: {
                        "path": str(path.relative_to(out_dir)),
                        "sha256": done.sha256 if role == "label" else file_sha256(path),
                    }
                    for role, path in done.outputs().items()
                },
                "missing_aux": done.missing_aux,
                "seconds": round(done.seconds, 3),
            }
        del done
        # Flat memory over many cases: nothing of a case outlives its iteration.
        gc.collect()
        if model.device.type == "cuda" and workers == 0:  # beside a running case it would stall the device
            torch.cuda.empty_cache()
        _write_manifest(manifest_path, record, result)
    _write_manifest(manifest_path, record, result)
    if result.failed:
        logger.error("prediction failed for %d of %d cases: %s", len(result.failed), len(cases), sorted(result.failed))
    return result
