"""Shared pytest fixtures for segfuse's tests (synthetic data only, unless marked realdata)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# ../shared/data next to the repository root (see data/README.md); absent on most machines.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The shared real-data folder; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def oblique_affine() -> np.ndarray:
    """A 20-degree oblique (about Z), LPS-oriented, anisotropic (0.8x1.2x3 mm) affine."""
    angle = np.deg2rad(20.0)
    rot = np.array(
        [
            [np.cos(angle), -np.sin(angle), 0.0],
            [np.sin(angle), np.cos(angle), 0.0],
            [0.0, 0.0, 1.0],
        ]
    )
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rot @ np.diag([0.8, 1.2, 3.0])
    affine[:3, 3] = [91.5, 120.25, -60.0]
    return affine
