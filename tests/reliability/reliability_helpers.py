"""Valid synthetic inputs, and ways to damage them the way a hostile user (or a bad disk) would.

Everything is tiny: volumes of a few thousand voxels, a quarter-width network.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from segfuse.config import config_from_dict
from segfuse.factory import build_model
from segfuse.io.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[2]
SHAPE = (18, 16, 10)
AFFINE = np.array([[-1.0, 0, 0, 12.0], [0, -1.1, 0, 7.0], [0, 0, 2.0, -9.0], [0, 0, 0, 1]])
LABELS = {0: "background", 1: "core", 2: "rim"}


# ------------------------------------------------------------------ models


def model_config(*, aux: dict | None = None, labels: dict | None = None, patch=(16, 16, 8)) -> dict:
    return {
        "data": {"aux": aux or {}, "labels": dict(labels or LABELS), "target_spacing": None},
        "model": {"encoder_depth": 3, "widen_factor": 0.25, "stem_kernel": 3, "decoder_channels": [16, 8, 8]},
        "training": {"patch_size": list(patch)},
        "inference": {"roi_size": list(patch)},
    }


def make_checkpoint(path: Path, **kwargs) -> Path:
    """A randomly initialised tiny 3D model saved as a segfuse checkpoint."""
    cfg = config_from_dict(model_config(**kwargs))
    torch.manual_seed(0)
    net = build_model(cfg)
    return save_checkpoint({"model": net.state_dict(), "config": cfg.to_dict(), "in_channels": 1}, path)


# ------------------------------------------------------------------ images


def volume(seed: int = 0, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.normal(100.0, 15.0, shape).astype(np.float32)
    data[tuple(slice(s // 4, 3 * s // 4) for s in shape)] += 150.0
    return data


def write_valid(path: Path, seed: int = 0, shape=SHAPE, affine: np.ndarray = AFFINE, data=None) -> Path:
    """A well-formed NIfTI with qform and sform both set (scanner, code 1) and agreeing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(volume(seed, shape) if data is None else data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)
    return path


def gz_payload(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


def edit_header(src: Path, dst: Path, **fields) -> Path:
    """Copy ``src`` (.nii.gz) to ``dst`` with raw header fields replaced, no repairs by nibabel."""
    raw = gz_payload(src)
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:348]), check=False)
    for key, value in fields.items():
        header[key] = value
    dst.write_bytes(gzip.compress(header.binaryblock + raw[348:]))
    return dst


def flip_byte(src: Path, dst: Path, position: int) -> Path:
    data = bytearray(src.read_bytes())
    data[position] ^= 0x5A
    dst.write_bytes(bytes(data))
    return dst


def manifest(folder: Path, names: list[str], make: Callable[[Path, str, int], Path] | None = None) -> Path:
    """``cases.csv`` with one valid primary per name (``make`` may write a damaged one instead)."""
    lines = ["case_id,primary"]
    for i, name in enumerate(names):
        target = folder / "scans" / f"scan{i:03d}.nii.gz"
        (make or (lambda p, n, s: write_valid(p, s)))(target, name, i)
        lines.append(f"{name},{target.relative_to(folder)}")
    path = folder / "cases.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------ processes


def segfuse_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "segfuse", *args]


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = str(REPO) + os.pathsep + out.get("PYTHONPATH", "")
    out["OMP_NUM_THREADS"] = "1"
    return out


def run_segfuse(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(segfuse_cmd(*args), env=env(), capture_output=True, text=True, timeout=timeout, **kwargs)


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.002) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(interval)
    return False


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".tmp-")]
