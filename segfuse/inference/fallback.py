"""Fallback models: a case that lacks an auxiliary is predicted by a model trained without it.

``segfuse predict --checkpoint full.pt --fallback t1_only.pt`` predicts every case
that has all of ``full.pt``'s auxiliaries with it, and every case that lacks one
with the fallback whose auxiliaries the case does have. The fusion study (issue
12, ``docs/benchmarks.md``) is why this exists: a model trained with modality
dropout and run without its FLAIR scored below a model trained without the FLAIR
(whole tumour 0.455 against 0.496 with T1 alone; 0.649 against 0.720 for T1ce + T2),
so a cohort with gaps is best served by one model per set of auxiliaries, and this
makes that one command.

The choice, per case, among the main model and the fallbacks (:meth:`ModelChoice.for_case`):

1. a model is *usable* when the case has all its auxiliaries, or when it was trained
   with modality dropout (it can run without the missing ones);
2. among usable models, the one that reads the most of the case's auxiliaries wins;
3. on a tie, a model that has all its auxiliaries beats one that would run without
   some (a dedicated model beats the missing-auxiliary path), and the main model
   beats a fallback.

When no model is usable, the main model is returned and
:func:`~segfuse.inference.case.predict_case` refuses the case as it always did,
naming the missing auxiliary. The case handed back holds only the auxiliaries the
chosen model reads (a T1-only fallback never sees the T2 the case has).

Every fallback must write the same labels (values, names and regions) from the
same primary modality, and read only auxiliaries the main model reads (cases are
read with the main model's inputs); two fallbacks may not read the same set of
auxiliaries (one would never be chosen). Violations are refused before any case is
read, naming both checkpoints and the values.

Example:
    >>> choice = ModelChoice.of(load_model("full.pt"), [load_model("t1_only.pt")])  # doctest: +SKIP
    >>> model, case, drop_aux = choice.for_case(case_without_flair)  # doctest: +SKIP
    >>> model.checkpoint  # doctest: +SKIP
    PosixPath('t1_only.pt')
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from segfuse.data.cases import Case
from segfuse.inference.model import LoadedModel, first_difference, model_name
from segfuse.io.errors import SegfuseInputError

__all__ = ["ModelChoice"]


def _aux_names(model: LoadedModel) -> frozenset[str]:
    return frozenset(model.preprocessing.aux_scales)


def _outputs(model: LoadedModel) -> dict[str, object]:
    """What a fallback must share with the main model: the scan it reads first and the labels it writes."""
    data = model.cfg.data
    return {
        "primary modality (data.primary)": data.primary,
        "labels (data.labels)": dict(sorted(data.labels.items())),
        "regions (data.regions)": data.regions,
    }


@dataclass
class ModelChoice:
    """The main model and its fallbacks; :meth:`for_case` picks the one that predicts a case.

    Attributes:
        main: the model named by ``--checkpoint`` (a single model or an ensemble).
        fallbacks: models trained without some of the main model's auxiliaries.
    """

    main: LoadedModel
    fallbacks: list[LoadedModel] = field(default_factory=list)

    @classmethod
    def of(cls, main: LoadedModel, fallbacks: Sequence[LoadedModel] = ()) -> ModelChoice:
        """Check ``fallbacks`` against ``main`` and each other (see the module docstring); raise naming the values."""
        fallbacks = list(fallbacks)
        main_aux = _aux_names(main)
        reference = _outputs(main)
        seen: dict[frozenset[str], LoadedModel] = {}
        for fallback in fallbacks:
            if difference := first_difference(_outputs(fallback), reference):
                key, theirs, ours = difference
                raise SegfuseInputError(
                    f"fallback {model_name(fallback)} cannot stand in for {model_name(main)}: their {key} differ "
                    f"({theirs!r} vs {ours!r})"
                )
            aux = _aux_names(fallback)
            if aux - main_aux:
                raise SegfuseInputError(
                    f"fallback {model_name(fallback)} reads auxiliary {sorted(aux - main_aux)}, which "
                    f"{model_name(main)} does not (it reads {sorted(main_aux) or 'none'}); cases are read with the "
                    "main model's inputs"
                )
            if aux == main_aux:
                raise SegfuseInputError(
                    f"fallback {model_name(fallback)} reads the same auxiliaries as {model_name(main)} "
                    f"({sorted(aux) or 'none'}), so it would never be chosen; a fallback is a model trained "
                    "without some of them (to average models of the same inputs, repeat --checkpoint)"
                )
            if aux in seen:
                raise SegfuseInputError(
                    f"fallbacks {model_name(seen[aux])} and {model_name(fallback)} both read "
                    f"{sorted(aux) or 'no auxiliaries'}; give one (a folder of fold runs is one fallback, averaged)"
                )
            seen[aux] = fallback
        return cls(main=main, fallbacks=fallbacks)

    @property
    def models(self) -> list[LoadedModel]:
        """The main model, then the fallbacks."""
        return [self.main, *self.fallbacks]

    @property
    def checkpoints(self) -> list[Path]:
        """Every checkpoint file behind the main model and the fallbacks."""
        return [p for m in self.models for p in m.checkpoints]

    def checkpoint_sha256(self) -> str | None:
        """The main model's hash, or one hash over every model's when there are fallbacks (``resume`` compares it)."""
        if not self.fallbacks:
            return self.main.checkpoint_sha256()
        hashes = [m.checkpoint_sha256() for m in self.models]
        if any(h is None for h in hashes):
            return None
        return hashlib.sha256("\n".join(hashes).encode()).hexdigest()  # type: ignore[arg-type]

    def for_case(self, case: Case, drop_aux: Collection[str] = ()) -> tuple[LoadedModel, Case, frozenset[str]]:
        """``(model, case, drop_aux)`` to hand to ``predict_case`` for ``case`` (rule in the module docstring).

        Without fallbacks this is ``(main, case, drop_aux)`` unchanged. With them, the case
        returned holds only the auxiliaries the chosen model reads, and ``drop_aux`` (names
        of the main model's auxiliaries to predict without, as if absent) has been applied.
        """
        drop = frozenset(drop_aux)
        if not self.fallbacks:
            return self.main, case, drop
        main_aux = _aux_names(self.main)
        unknown = sorted(drop - main_aux)
        if unknown:
            raise SegfuseInputError(
                f"drop_aux names {unknown} are not auxiliaries of {model_name(self.main)}; it has {sorted(main_aux)}"
            )
        extra = sorted(set(case.aux) - main_aux)
        if extra:
            raise SegfuseInputError(
                f"case {case.case_id!r}: auxiliary {extra} is not an input of {model_name(self.main)}; "
                f"it takes {sorted(main_aux) or 'none'}"
            )
        available = frozenset(case.aux) - drop

        def rank(indexed: tuple[int, LoadedModel]) -> tuple[int, bool, bool]:
            index, model = indexed
            aux = _aux_names(model)
            return len(aux & available), aux <= available, index == 0

        usable = [(i, m) for i, m in enumerate(self.models) if _aux_names(m) <= available or m.allow_missing_aux]
        if not usable:
            return self.main, case, drop
        _, chosen = max(usable, key=rank)
        kept = {k: v for k, v in case.aux.items() if k in available and k in _aux_names(chosen)}
        return chosen, dataclasses.replace(case, aux=kept), frozenset()
