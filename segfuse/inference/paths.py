"""Where predictions may be written: inside the output folder, never over an input.

Checked before any work:

- a case id names its outputs (``<out>/<case_id>.nii.gz``), so it must be a plain
  file name: no folder separators, not ``.`` or ``..``, not hidden (a leading
  ``.``, which temporary files use), no control characters, at most 200
  characters. An id like ``../x`` or ``/tmp/x`` would write outside ``--out``;
- no output path may resolve (symlinks followed) to an input file of any case
  (primary, auxiliaries, label) or to the checkpoint: ``--out`` equal to
  ``--image`` would replace the scan with its label map.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from segfuse.data.cases import Case
from segfuse.io.errors import SegfuseInputError

__all__ = ["case_id_problem", "case_inputs", "output_collisions", "refuse_overwriting_inputs"]

_MAX_ID = 200


def case_id_problem(case_id: str) -> str | None:
    """Why ``case_id`` cannot name an output file inside the output folder, or ``None``.

    Example:
        >>> case_id_problem("case_001") is None, case_id_problem("../x")
        (True, "case id '../x' contains a folder separator; it must be a plain file name")
    """
    if not case_id:
        return "case id is empty"
    separators = {"/", "\\", os.sep, *([os.altsep] if os.altsep else [])}
    if any(sep in case_id for sep in separators):
        return f"case id {case_id!r} contains a folder separator; it must be a plain file name"
    if case_id in (".", ".."):
        return f"case id {case_id!r} is a folder reference; it must be a plain file name"
    if case_id.startswith("."):
        return f"case id {case_id!r} starts with '.'; hidden names are reserved for temporary files"
    if any(ord(c) < 32 or ord(c) == 127 for c in case_id):
        return f"case id {case_id!r} contains control characters"
    if len(case_id) > _MAX_ID:
        return f"case id of {len(case_id)} characters is too long for a file name (at most {_MAX_ID})"
    return None


def case_inputs(case: Case) -> list[Path]:
    """Every file a case reads: primary, auxiliaries, label."""
    paths = [case.primary.path, *(ref.path for ref in case.aux.values())]
    if case.label is not None:
        paths.append(Path(case.label))
    return [Path(p) for p in paths]


def _key(path: Path) -> Path:
    return Path(os.path.realpath(path))


def output_collisions(outputs: Mapping[str, Iterable[Path]], inputs: Iterable[Path]) -> dict[str, list[str]]:
    """Owner → descriptions of its outputs that resolve to one of ``inputs``.

    Args:
        outputs: owner (a case id) → the files it will write.
        inputs: every file read by the run (all cases, the checkpoint).
    """
    known = {_key(Path(p)): Path(p) for p in inputs}
    found: dict[str, list[str]] = {}
    for owner, paths in outputs.items():
        for path in paths:
            hit = known.get(_key(Path(path)))
            if hit is not None:
                found.setdefault(owner, []).append(f"{path} is the input {hit}")
    return found


def refuse_overwriting_inputs(outputs: Iterable[Path], case: Case, checkpoints: Iterable[str | Path] = ()) -> None:
    """Raise when any of ``outputs`` resolves to an input of ``case`` or to one of ``checkpoints``.

    Raises:
        SegfuseInputError: naming the output and the input it would replace.

    Example:
        >>> refuse_overwriting_inputs([Path("t1.nii.gz")], case_from_paths("t1.nii.gz"))  # doctest: +SKIP
        SegfuseInputError: output t1.nii.gz is the input t1.nii.gz ...
    """
    inputs = case_inputs(case) + [Path(c) for c in checkpoints]
    clashes = output_collisions({case.case_id: list(outputs)}, inputs).get(case.case_id)
    if clashes:
        raise SegfuseInputError(
            f"output {'; '.join(clashes)} (symlinks followed): writing it would replace an input; "
            "choose another output path"
        )
