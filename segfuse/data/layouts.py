"""Dataset layouts → cases: one :class:`~segfuse.data.cases.Dataset` whatever the folder looks like.

:func:`read_dataset` reads a Medical Segmentation Decathlon folder, an nnU-Net v2
raw folder, a CSV/YAML manifest or a plain images folder (the layouts:
:mod:`segfuse.data.layout_readers`), selects the primary and auxiliary modalities
and checks that every file exists, naming all missing ones at once. It only lists
files; images are opened later, by ``segfuse.io``. :func:`split_cases` makes the
training/validation split.

In every layout the scans of a case are named modalities: the primary plus the
auxiliaries. ``primary=`` picks which modality is the primary (by name) and
``aux=`` which others to keep (default: all the others, in declared order).
Labels always include ``0``; a label set without it gets ``0: "background"``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from segfuse.data.cases import Case, Dataset
from segfuse.data.layout_readers import listing, normalise_labels, read_raw
from segfuse.io.errors import SegfuseInputError

__all__ = ["DEFAULT_LABELS", "read_dataset", "split_cases"]

DEFAULT_LABELS: dict[int, str] = {0: "background", 1: "foreground"}


def read_dataset(
    source: Path | str,
    *,
    primary: str | None = None,
    aux: Sequence[str] | None = None,
    require_labels: bool = True,
    labels: Mapping[int, str] | None = None,
    channel_names: Sequence[str] | None = None,
) -> Dataset:
    """Read a decathlon folder, an nnU-Net v2 raw folder or a CSV/YAML manifest.

    The layout is detected from ``source`` (see the module docstring). Files are
    listed and checked for existence, not opened.

    Args:
        source: dataset folder (holding ``dataset.json``), that ``dataset.json``,
            or a ``.csv``/``.yaml``/``.yml`` manifest.
        primary: name of the modality to use as the primary scan; default the
            layout's first (decathlon modality ``"0"``, nnU-Net channel 0, the
            manifest's primary column). Names are lower-cased modality strings
            for decathlon/nnU-Net (``"flair"``, ``"t1w"``).
        aux: names of the auxiliary modalities to keep, in this order; default all
            modalities except the primary; ``[]`` keeps none.
        require_labels: every case must have a label map; with ``False`` cases
            without one get ``label=None``.
        labels: label value → name, for sources that declare none (a CSV manifest,
            a YAML manifest without ``labels``); default ``{0: "background",
            1: "foreground"}``. A source that declares labels must agree with it.
        channel_names: modality of each channel index, for a plain folder of
            ``{case}_{XXXX}`` files (the order a model was trained with); default
            ``channel_0000``, ``channel_0001``, ….

    Returns:
        The :class:`Dataset`, cases in the order the source lists them.

    Raises:
        SegfuseInputError: unknown layout, unknown modality name (the available
            names are listed), duplicate case ids, missing labels, or referenced
            files that do not exist (all listed at once: the first 20 and a count).

    Example:
        >>> ds = read_dataset("../shared/data/hippocampus")  # doctest: +SKIP
        >>> ds.layout, len(ds.cases), ds.labels, ds.primary_name
        ('msd', 200, {0: 'background', 1: 'Anterior', 2: 'Posterior'}, 'mri')
    """
    source = Path(source).expanduser().resolve()
    raw = read_raw(source, require_labels, channel_names, primary)

    # Labels: the source's declaration, else the argument, else the default.
    if raw.labels is not None:
        if labels is not None and normalise_labels(labels, "labels argument") != raw.labels:
            raise SegfuseInputError(
                f"{raw.source}: declares labels {raw.labels}, but the labels argument says "
                f"{dict(labels)}; drop the argument or make them agree"
            )
        dataset_labels = raw.labels
    else:
        dataset_labels = normalise_labels(
            labels if labels is not None else DEFAULT_LABELS, "labels argument"
        )

    # Modality selection.
    available = raw.modalities
    primary_name = raw.default_primary if primary is None else primary
    if primary_name not in available:
        raise SegfuseInputError(
            f"{raw.source}: unknown primary modality {primary_name!r}; available: {available}"
        )
    if aux is None:
        aux_names = [m for m in available if m != primary_name]
    else:
        if isinstance(aux, str):
            raise SegfuseInputError(f"aux must be a list of names, got the string {aux!r}")
        aux_names = list(aux)
        unknown = [a for a in aux_names if a not in available]
        if unknown:
            raise SegfuseInputError(
                f"{raw.source}: unknown auxiliary modalities {unknown}; available: {available}"
            )
        if primary_name in aux_names:
            raise SegfuseInputError(
                f"{raw.source}: {primary_name!r} is the primary and cannot also be an "
                f"auxiliary (aux={aux_names})"
            )
        repeated = sorted(a for a, n in Counter(aux_names).items() if n > 1)
        if repeated:
            raise SegfuseInputError(f"aux lists {repeated} more than once: {aux_names}")

    # Duplicate ids.
    counts = Counter(c.case_id for c in raw.cases)
    duplicates = sorted(cid for cid, n in counts.items() if n > 1)
    if duplicates:
        where = [f"{c.case_id} ({c.origin})" for c in raw.cases if c.case_id in duplicates]
        raise SegfuseInputError(
            f"{raw.source}: {len(duplicates)} case ids appear more than once:{listing(where)}"
        )
    if not raw.cases:
        raise SegfuseInputError(f"{raw.source}: the dataset lists no cases")

    # Cases lacking something the selection needs.
    no_primary = [f"{c.case_id} ({c.origin})" for c in raw.cases if primary_name not in c.scans]
    if no_primary:
        raise SegfuseInputError(
            f"{raw.source}: {len(no_primary)} cases have no {primary_name!r} scan, which is "
            f"the primary:{listing(no_primary)}"
        )
    if require_labels:
        no_label = [f"{c.case_id} ({c.origin})" for c in raw.cases if c.label is None]
        if no_label:
            raise SegfuseInputError(
                f"{raw.source}: {len(no_label)} cases have no label (pass "
                f"require_labels=False to allow this):{listing(no_label)}"
            )

    # Every referenced file must exist; report all of them at once.
    cases: list[Case] = []
    missing: dict[Path, str] = {}  # path → what it is; a 4D MSD file is listed once
    checked: dict[Path, bool] = {}

    def exists(path: Path) -> bool:
        if path not in checked:
            checked[path] = path.is_file()
        return checked[path]

    for c in raw.cases:
        refs = {name: c.scans[name] for name in aux_names if name in c.scans}
        label = c.label
        if label is not None and not exists(label):
            # nnU-Net labels are found by convention, not listed; unlabelled is fine then.
            if raw.layout == "nnunet" and not require_labels:
                label = None
            else:
                missing.setdefault(label, f"label of {c.case_id}")
        for name, ref in [(primary_name, c.scans[primary_name]), *refs.items()]:
            if not exists(ref.path):
                missing.setdefault(ref.path, f"{name} of {c.case_id}")
        cases.append(Case(c.case_id, c.scans[primary_name], refs, label))
    if missing:
        raise SegfuseInputError(
            f"{raw.source}: {len(missing)} referenced files do not exist:"
            + listing([f"{path} ({what})" for path, what in missing.items()])
        )

    return Dataset(
        root=raw.root,
        layout=raw.layout,
        cases=cases,
        labels=dataset_labels,
        primary_name=primary_name,
        aux_names=aux_names,
        modalities=list(raw.modalities),
    )


def split_cases(
    cases: Sequence[Case], n_val: int | float, seed: int
) -> tuple[list[Case], list[Case]]:
    """Split cases into ``(train, val)`` deterministically.

    Cases are sorted by id, then permuted with ``numpy.random.default_rng(seed)``;
    the first ``n_val`` of the permutation are the validation cases. The result
    depends only on the set of case ids, ``n_val`` and ``seed``, not on the order
    given. Both lists come back sorted by case id.

    Args:
        cases: the cases to split (ids must be unique).
        n_val: a number of validation cases (``int``, ``0 <= n_val < len(cases)``)
            or a fraction (``float`` in ``[0, 1)``, rounded, at least one case when
            positive).
        seed: random seed; state it with any reported result.

    Example:
        >>> train, val = split_cases(ds.cases, 0.2, seed=0)  # doctest: +SKIP
    """
    ordered = sorted(cases, key=lambda c: c.case_id)
    n = len(ordered)
    if len({c.case_id for c in ordered}) != n:
        raise SegfuseInputError("split_cases: case ids must be unique")
    if isinstance(n_val, bool) or not isinstance(n_val, (int, float, np.integer, np.floating)):
        raise SegfuseInputError(f"split_cases: n_val must be an int or a float, got {n_val!r}")
    if isinstance(n_val, (float, np.floating)):
        if not 0.0 <= float(n_val) < 1.0:
            raise SegfuseInputError(
                f"split_cases: a fractional n_val must be in [0, 1), got {n_val}"
            )
        count = round(float(n_val) * n)
        if n_val > 0:
            count = max(1, count)
    else:
        count = int(n_val)
    if not 0 <= count < n:
        raise SegfuseInputError(
            f"split_cases: n_val={n_val} needs 0 <= n_val < number of cases ({n}) so that "
            f"training keeps at least one case"
        )
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:count].tolist())
    train = [c for i, c in enumerate(ordered) if i not in val_idx]
    val = [c for i, c in enumerate(ordered) if i in val_idx]
    return train, val
