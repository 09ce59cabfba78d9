"""Small real datasets shipped inside the segfuse package.

``brats/`` holds 12 BraTS 2018/2019 subjects in the nnU-Net v2 raw layout: the
T1 at 2 mm (channel 0), the FLAIR as a simulated 4 × 4 × 8 mm acquisition on its
own grid (channel 1) and whole-tumour labels, written by
``data/make_brats_sample.py``; BraTS terms of use, see ``brats/LICENSE.md``.
``segfuse demo`` trains on it (config ``demo.yaml``).

``hippocampus/`` holds 24 cases of the Medical Segmentation Decathlon's Task04
Hippocampus in the decathlon layout (``dataset.json``, ``imagesTr/``,
``labelsTr/``), unmodified, under CC BY-SA 4.0; see ``hippocampus/LICENSE.md``.
``segfuse demo --hippocampus`` trains on it (config ``demo_hippocampus.yaml``).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["sample_data_path"]


def sample_data_path(name: str = "hippocampus") -> Path:
    """Folder of a bundled sample dataset, ready for :func:`segfuse.data.layouts.read_dataset`.

    Args:
        name: the sample's folder name: ``"hippocampus"`` or ``"brats"``.

    Raises:
        ValueError: no bundled sample of that name (the available ones are listed).

    Example:
        >>> from segfuse.data.layouts import read_dataset
        >>> len(read_dataset(sample_data_path()).cases)
        24
    """
    root = files(__name__)
    available = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if name not in available:
        raise ValueError(f"no bundled sample named {name!r}; available: {available}")
    # segfuse is installed from a wheel or in place (never zipped), so the resource is a real folder.
    return Path(str(root / name))
