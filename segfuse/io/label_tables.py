"""Label names and colours that viewers read: ITK-SNAP label descriptions and Slicer colour tables.

One palette serves every picture and file segfuse writes, so a class has the
same colour in a QC picture, in ITK-SNAP and in 3D Slicer. Background (0) is
black and transparent.

- ITK-SNAP's *label description file* (``Segmentation → Import Label Descriptions``):
  ``IDX R G B A VIS MSH "LABEL"`` per line, colours 0–255, opacity 0–1.
- Slicer's *colour table* (``.ctbl``, loaded with ``Add Data``; a ``.txt`` reads the same):
  ``index name R G B A`` per line, colours and opacity 0–255; names have no spaces
  (Slicer's own writer replaces them with ``_``, as here).

Example:
    >>> paths = write_label_tables("preds", {0: "background", 1: "Anterior", 2: "Posterior"})  # doctest: +SKIP
    >>> sorted(p.name for p in paths.values())  # doctest: +SKIP
    ['labels_itksnap.txt', 'labels_slicer.ctbl']
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from segfuse.io.atomic import atomic_write_text
from segfuse.io.errors import SegfuseInputError

__all__ = [
    "ITKSNAP_NAME",
    "PALETTE",
    "SLICER_NAME",
    "integer_labels",
    "label_colour_hex",
    "label_colours",
    "read_itksnap_labels",
    "read_slicer_color_table",
    "write_itksnap_labels",
    "write_label_tables",
    "write_slicer_color_table",
]

ITKSNAP_NAME = "labels_itksnap.txt"
SLICER_NAME = "labels_slicer.ctbl"

#: Foreground colours (RGB 0–255), in label order: ColorBrewer Set1, then Dark2.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (228, 26, 28), (77, 175, 74), (55, 126, 184), (255, 127, 0),  # Set1
    (152, 78, 163), (255, 255, 51), (166, 86, 40), (247, 129, 191),
    (27, 158, 119), (217, 95, 2), (117, 112, 179), (231, 41, 138),  # Dark2
)


def label_colours(values: Mapping[int, str] | list[int] | tuple[int, ...]) -> dict[int, tuple[int, int, int]]:
    """Value → RGB (0–255): black for 0, ``PALETTE[(value - 1) % len(PALETTE)]`` for the others.

    A value has the same colour whatever else is present (QC pictures use it too).

    Example:
        >>> label_colours([0, 1, 2])
        {0: (0, 0, 0), 1: (228, 26, 28), 2: (77, 175, 74)}
    """
    return {
        int(v): (0, 0, 0) if int(v) == 0 else PALETTE[(int(v) - 1) % len(PALETTE)]
        for v in sorted(int(v) for v in values)
    }


def label_colour_hex(value: int) -> str:
    """``#rrggbb`` of :func:`label_colours` for one value."""
    r, g, b = label_colours([value])[value]
    return f"#{r:02x}{g:02x}{b:02x}"


def integer_labels(labels: Mapping[Any, Any]) -> dict[int, str]:
    """``labels`` with integer keys and string names, in the given order.

    Raises:
        SegfuseInputError: a key that is not an integer label value, naming it.
    """
    out: dict[int, str] = {}
    for key, name in labels.items():
        try:
            value = int(key)
        except (TypeError, ValueError) as err:
            raise SegfuseInputError(f"labels: keys must be integer label values, got {key!r}") from err
        out[value] = str(name)
    return out


def _checked(labels: Mapping[int, str]) -> dict[int, str]:
    out = integer_labels(labels)
    negative = [value for value in out if value < 0]
    if negative:
        raise SegfuseInputError(f"labels: label values must be >= 0, got {negative[0]}")
    out.setdefault(0, "background")
    return dict(sorted(out.items()))


# ------------------------------------------------------------------ ITK-SNAP

_ITKSNAP_HEADER = """\
################################################
# ITK-SnAP Label Description File
# File format:
# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
# Fields:
#    IDX:   Zero-based index
#    -R-:   Red color component (0..255)
#    -G-:   Green color component (0..255)
#    -B-:   Blue color component (0..255)
#    -A-:   Label transparency (0.00 .. 1.00)
#    VIS:   Label visibility (0 or 1)
#    MSH:   Label mesh visibility (0 or 1)
#  LABEL:   Label description
# Written by segfuse.
################################################
"""


def write_itksnap_labels(path: str | Path, labels: Mapping[int, str]) -> Path:
    """Write an ITK-SNAP label description file; background is ``"Clear Label"``, invisible."""
    lines = [_ITKSNAP_HEADER.rstrip("\n")]
    colours = label_colours(list(_checked(labels)))
    for value, name in _checked(labels).items():
        r, g, b = colours[value]
        if value == 0:
            lines.append(f'{0:5d} {0:5d} {0:4d} {0:4d} {0.0:8.2f} {0:2d} {0:2d}    "Clear Label"')
            continue
        text = name.replace('"', "'")
        lines.append(f'{value:5d} {r:5d} {g:4d} {b:4d} {1.0:8.2f} {1:2d} {1:2d}    "{text}"')
    return atomic_write_text(Path(path), "\n".join(lines) + "\n")


def read_itksnap_labels(path: str | Path) -> dict[int, tuple[str, tuple[int, int, int], float]]:
    """Value → ``(name, (r, g, b), opacity)`` from an ITK-SNAP label description file."""
    out: dict[int, tuple[str, tuple[int, int, int], float]] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = shlex.split(line)
        if len(fields) != 8:
            raise SegfuseInputError(f"{path}: line {number} is not 'IDX R G B A VIS MSH \"LABEL\"': {line!r}")
        out[int(fields[0])] = (fields[7], (int(fields[1]), int(fields[2]), int(fields[3])), float(fields[4]))
    return out


# ------------------------------------------------------------------ Slicer


def _slicer_name(name: str) -> str:
    return re.sub(r"\s+", "_", name.strip()) or "unnamed"


def write_slicer_color_table(path: str | Path, labels: Mapping[int, str]) -> Path:
    """Write a 3D Slicer colour table (``.ctbl`` or ``.txt``): ``index name R G B A`` per label."""
    path = Path(path)
    checked = _checked(labels)
    colours = label_colours(list(checked))
    lines = [f"# Color table file {path.name}", f"# {len(checked)} values"]
    for value, name in checked.items():
        r, g, b = colours[value]
        alpha = 0 if value == 0 else 255
        lines.append(f"{value} {_slicer_name(name)} {r} {g} {b} {alpha}")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def read_slicer_color_table(path: str | Path) -> dict[int, tuple[str, tuple[int, int, int], int]]:
    """Value → ``(name, (r, g, b), alpha)`` from a Slicer colour table."""
    out: dict[int, tuple[str, tuple[int, int, int], int]] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 6:
            raise SegfuseInputError(f"{path}: line {number} is not 'index name R G B A': {line!r}")
        out[int(fields[0])] = (fields[1], (int(fields[2]), int(fields[3]), int(fields[4])), int(fields[5]))
    return out


def write_label_tables(folder: str | Path, labels: Mapping[int, str]) -> dict[str, Path]:
    """Write :data:`ITKSNAP_NAME` and :data:`SLICER_NAME` into ``folder``; viewer → path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SegfuseInputError(f"{folder}: folder for the label tables does not exist")
    return {
        "itksnap": write_itksnap_labels(folder / ITKSNAP_NAME, labels),
        "slicer": write_slicer_color_table(folder / SLICER_NAME, labels),
    }
