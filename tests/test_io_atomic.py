"""Atomic writes: complete file or untouched target, never a stray temporary."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from segfuse.io import (
    atomic_output_path,
    atomic_torch_save,
    atomic_write,
    atomic_write_text,
    file_sha256,
)


def test_atomic_write_bytes_and_text(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_write(target) as handle:
        handle.write(b"\x00\x01abc")
    assert target.read_bytes() == b"\x00\x01abc"
    assert atomic_write_text(tmp_path / "note.txt", "héllo\n") == tmp_path / "note.txt"
    assert (tmp_path / "note.txt").read_text(encoding="utf-8") == "héllo\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["note.txt", "out.bin"]


def test_atomic_write_failure_leaves_no_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target, "w") as handle:
        handle.write("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_failure_keeps_previous_target(tmp_path: Path) -> None:
    target = tmp_path / "result.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as handle:
        handle.write("new")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_output_path_keeps_extension_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "seg.nii.gz"
    with pytest.raises(ValueError), atomic_output_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"half")
        raise ValueError("writer failed")
    assert list(tmp_path.iterdir()) == []
    with atomic_output_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_write_rejects_read_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"), atomic_write(tmp_path / "x", "rb"):
        pass


def test_atomic_torch_save_round_trip_and_sha256(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    state = {"weight": torch.arange(6.0).reshape(2, 3), "epoch": 3}
    atomic_torch_save(state, target)
    loaded = torch.load(target, weights_only=True)
    assert torch.equal(loaded["weight"], state["weight"]) and loaded["epoch"] == 3
    assert file_sha256(target) == hashlib.sha256(target.read_bytes()).hexdigest()
    assert list(tmp_path.iterdir()) == [target]
