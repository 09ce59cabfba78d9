"""The layers point down: each package imports only what docs/architecture.md allows (read from the source)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "segfuse"

#: layer → the segfuse layers it may import (every import, also inside functions).
ALLOWED: dict[str, set[str]] = {
    "io": set(),
    "auxiliary": set(),
    "machine": set(),
    "config": {"auxiliary", "io"},
    "models": {"auxiliary"},
    "data": {"auxiliary", "config", "io"},
    "factory": {"auxiliary", "config", "io", "models"},
    "inference": {"segfuse", "auxiliary", "config", "data", "factory", "io"},
    "training": {"auxiliary", "config", "data", "factory", "inference", "io", "machine", "models"},
    "evaluation": {"auxiliary", "config", "data", "inference", "io", "training"},
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "segfuse"


def _imports(path: Path) -> set[str]:
    """The segfuse modules ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "segfuse"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "segfuse":
            found.add(node.module)
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_the_layers_below(layer):
    files = sorted((PACKAGE / layer).rglob("*.py")) if (PACKAGE / layer).is_dir() else [PACKAGE / f"{layer}.py"]
    assert files and all(f.is_file() for f in files)
    wrong = {
        f"{f.relative_to(PACKAGE.parent)} imports {module}"
        for f in files
        for module in _imports(f)
        if _layer(module) != layer and _layer(module) not in ALLOWED[layer]
    }
    assert not wrong, sorted(wrong)


def test_training_reaches_inference_only_through_the_engine():
    reached = {m for f in (PACKAGE / "training").rglob("*.py") for m in _imports(f) if _layer(m) == "inference"}
    assert reached == {"segfuse.inference.engine"}


def test_the_auxiliary_description_and_the_config_load_without_torch():
    for name in ("auxiliary.py", "config.py"):
        tree = ast.parse((PACKAGE / name).read_text())
        modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in modules if m.split(".")[0] in ("torch", "monai", "numpy")}, name
