"""Fixtures of the reliability suite: tiny checkpoints and one valid case to damage."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import make_checkpoint, write_valid


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """A tiny 3D model (one primary, no auxiliary, classes 0/1/2)."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint_best.pt")


@pytest.fixture
def valid(tmp_path: Path) -> Path:
    """A valid primary scan, ``valid.nii.gz`` (qform and sform set and agreeing)."""
    return write_valid(tmp_path / "valid.nii.gz")
