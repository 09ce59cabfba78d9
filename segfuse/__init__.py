"""segfuse: medical image segmentation with auxiliary scans fused at their native resolution.

The public API is imported lazily so ``segfuse --version`` does not load torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "FusionUNet": "segfuse.models.net",
    "AuxInput": "segfuse.auxiliary",
    "FusionUNetConfig": "segfuse.models.net",
}

__all__ = ["AuxInput", "FusionUNet", "FusionUNetConfig", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segfuse' has no attribute {name!r}")
