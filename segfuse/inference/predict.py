"""``segfuse predict``: predict every case of a dataset, a manifest or a list of cases into a folder.

:func:`predict` runs many cases through :func:`segfuse.inference.case.predict_case`: a
progress bar, per-case failures reported and skipped (the run goes on), cases read
ahead and results written behind (:mod:`segfuse.inference.pipeline`), and a
``predictions.json`` manifest in the output folder recording each finished case's
outputs with their SHA-256, which ``resume=True`` trusts only when the files on disk
still have those hashes.

Example:
    >>> result = predict("runs/x/checkpoint_best.pt", "data/Task04", "preds")  # doctest: +SKIP
    >>> result.ok, len(result.succeeded)  # doctest: +SKIP
    (True, 42)
"""

from __future__ import annotations

import functools
import gc
import json
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from segfuse.data.cases import Case, Dataset
from segfuse.data.prediction_inputs import read_for_prediction
from segfuse.inference.case import PredictionResult, predict_case
from segfuse.inference.fallback import ModelChoice
from segfuse.inference.model import LoadedModel, load_model
from segfuse.inference.paths import case_id_problem, case_inputs, output_collisions
from segfuse.inference.pipeline import prepare_planned, run_pipelined, run_sequential
from segfuse.io.atomic import atomic_write_text, file_sha256, remove_stale_temporaries
from segfuse.io.errors import SegfuseInputError

__all__ = ["MANIFEST_NAME", "BatchResult", "predict"]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "predictions.json"
_MANIFEST_FORMAT = "segfuse-predictions-1"


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


def _refused_cases(cases: Sequence[Case], out_dir: Path, checkpoints: Sequence[Path], probabilities: bool, qc: bool
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
    inputs = [p for c in cases for p in case_inputs(c)] + list(checkpoints)
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
    fallbacks: Sequence[str | Path | LoadedModel] = (),
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
        fallbacks: models (checkpoints, run folders, folders of fold runs, or loaded) trained
            without some of the main model's auxiliaries; a case lacking an auxiliary is
            predicted by the one that reads the most of what the case has
            (:mod:`segfuse.inference.fallback`). ``predictions.json`` names the model of
            every case.

    Returns:
        A :class:`BatchResult`; ``result.ok`` is ``False`` when any case failed.

    Example:
        >>> r = predict("ckpt.pt", "manifest.csv", "preds", resume=True)  # doctest: +SKIP
        >>> print(r.summary())  # doctest: +SKIP
        3 predicted, 0 skipped (resume), 0 failed; outputs in preds
    """
    model = load_model(checkpoint, device=device)
    choice = ModelChoice.of(model, [load_model(f if isinstance(f, LoadedModel) else [f], device=device)
                                    for f in fallbacks])
    cases = _cases_from(inputs, model)
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise SegfuseInputError(f"case ids must be unique to name the outputs; repeated: {duplicates}")
    out_dir = Path(out_dir)
    refused = _refused_cases(cases, out_dir, choice.checkpoints, save_probabilities, qc)
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
    checkpoint_sha = choice.checkpoint_sha256()
    previous = _read_manifest(manifest_path) if resume else {}
    if previous and previous.get("checkpoint_sha256") != checkpoint_sha:
        logger.warning("%s: recorded with another checkpoint; predicting every case again", manifest_path)
        previous = {}
    record: dict[str, Any] = {
        "format": _MANIFEST_FORMAT,
        "checkpoint": None if model.checkpoint is None else str(model.checkpoint),
        "checkpoint_sha256": checkpoint_sha,
        "checkpoints": [str(p) for p in model.checkpoints],
        "fallbacks": [[str(p) for p in f.checkpoints] for f in choice.fallbacks],
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
    # each case as its model will see it: the model chosen for it, the auxiliaries it reads, drop_aux
    planned = [choice.for_case(case, drop_aux) for case in todo]
    todo = [given for _, given, _ in planned]
    plan = {given.case_id: (chosen, drop) for chosen, given, drop in planned}

    def run(case: Case, prepare=None, network_lock=None) -> PredictionResult:
        chosen, drop = plan[case.case_id]
        return predict_case(
            chosen,
            case,
            out_dir / f"{case.case_id}.nii.gz",
            save_probabilities=(prob_dir / f"{case.case_id}.nii.gz") if save_probabilities else False,
            qc_path=(qc_dir / f"{case.case_id}.png") if qc else None,
            mirror=mirror,
            drop_aux=drop,
            prepare=prepare,
            network_lock=network_lock,
        )

    if workers > 0:
        steps = {case_id: (chosen.preprocessing, drop) for case_id, (chosen, drop) in plan.items()}
        read = functools.partial(prepare_planned, steps=steps)
        outcomes = run_pipelined(todo, read, run, workers=workers, kind=worker_kind)
    else:
        outcomes = run_sequential(todo, run)
    bar = tqdm(outcomes, desc="predict", unit="case", total=len(cases), disable=not progress)
    bar.update(len(result.skipped) + len(refused))
    # The model and the libraries live as long as the run: frozen, they are left out of the
    # per-case collection below, which then scans only what the case made (0.3 s less a case).
    gc.freeze()
    try:
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
                    "model": [str(p) for p in plan[case.case_id][0].checkpoints],
                    "seconds": round(done.seconds, 3),
                }
            del done
            # Flat memory over many cases: nothing of a case outlives its iteration.
            gc.collect()
            if model.device.type == "cuda" and workers == 0:  # beside a running case it would stall the device
                torch.cuda.empty_cache()
            _write_manifest(manifest_path, record, result)
    finally:
        gc.unfreeze()
    _write_manifest(manifest_path, record, result)
    if result.failed:
        logger.error("prediction failed for %d of %d cases: %s", len(result.failed), len(cases), sorted(result.failed))
    return result
