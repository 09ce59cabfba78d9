"""``segfuse config check``: a config checked against its dataset before any training starts.

:func:`segfuse.config.load_config` already checks keys, types and cross-field
rules. :func:`check_config` adds what needs the dataset: that it can be read
(every referenced file exists), that the primary and auxiliary modality names
exist in it, that the label values agree with the dataset's, and that the validation
split (``val_cases``, ``val_fraction`` or ``folds``) can be made. Every error
names the config key.

Example:
    >>> print(check_config(load_config("configs/debug.yaml")))  # doctest: +SKIP
    ok: dataset .../hippocampus (msd, 24 cases), primary 'mri', no auxiliaries, ...
"""

from __future__ import annotations

from segfuse.config import DEFAULT_FOLDS, Config
from segfuse.data.layouts import read_dataset, split_cases
from segfuse.data.splits import kfold_splits
from segfuse.io.errors import SegfuseInputError

__all__ = ["check_config"]


def _key_for(message: str) -> str:
    if "primary modality" in message:
        return "data.primary"
    if "auxiliary modalities" in message or "cannot also be an auxiliary" in message:
        return "data.aux"
    return "data.dataset"


def check_config(cfg: Config) -> str:
    """Check ``cfg`` against its dataset; returns a one-line description, raises naming the key.

    Raises:
        SegfuseInputError: ``config key <key>: <problem>``.
    """
    data = cfg.data
    if not data.dataset:
        raise SegfuseInputError("config key data.dataset: not set (a dataset folder, dataset.json or manifest)")
    try:
        dataset = read_dataset(data.dataset, primary=data.primary, aux=list(data.aux))
    except SegfuseInputError as exc:
        raise SegfuseInputError(f"config key {_key_for(str(exc))}: {exc}") from exc
    if data.labels and sorted(data.labels) != sorted(dataset.labels):
        raise SegfuseInputError(
            f"config key data.labels: values {sorted(data.labels)} but the dataset declares {dict(dataset.labels)}; "
            "set data.labels to {} to take the dataset's"
        )
    ids = [c.case_id for c in dataset.cases]
    if data.fold is not None or data.folds is not None:
        n_folds = data.folds or DEFAULT_FOLDS
        sizes = [len(s["val"]) for s in kfold_splits(ids, n_folds, data.split_seed)]
        split = f"{n_folds} folds of {min(sizes)}-{max(sizes)} validation cases"
        if data.fold is not None:
            split += f", this run trains fold {data.fold}"
    elif data.val_cases is not None:
        unknown = sorted(set(data.val_cases) - set(ids))
        if unknown:
            raise SegfuseInputError(f"config key data.val_cases: unknown case ids {unknown}")
        split = f"{len(set(data.val_cases))} validation cases named"
    else:
        try:
            _, val = split_cases(dataset.cases, data.val_fraction, data.split_seed)
        except SegfuseInputError as exc:
            raise SegfuseInputError(f"config key data.val_fraction: {exc}") from exc
        split = f"{len(val)} validation cases (val_fraction {data.val_fraction})"
    aux = f"auxiliaries {dataset.aux_names}" if dataset.aux_names else "no auxiliaries"
    return (
        f"ok: dataset {dataset.root} ({dataset.layout}, {len(ids)} cases), primary {dataset.primary_name!r}, "
        f"{aux}, labels {dict(dataset.labels)}; {split}; model {cfg.model.mode}, patch {cfg.training.patch_size}"
    )
