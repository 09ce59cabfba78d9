"""Synthetic datasets and configs shared by several test files (import: ``from helpers import ...``)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import yaml

from segfuse.config import config_from_dict
from segfuse.factory import build_model
from segfuse.io.checkpoint import save_checkpoint
from segfuse.io.geometry import aux_grid

# -- a tiny training dataset and config (training, cross-validation, splits, end to end) --------


def make_dataset(root: Path, n_cases: int = 5, shape=(24, 24, 16)) -> Path:
    """A tiny manifest dataset: LPS anisotropic primary, a 2×2×4 auxiliary, a sphere label."""
    rng = np.random.default_rng(0)
    affine = np.diag([-0.9, -0.9, 2.0, 1.0])
    affine[:3, 3] = [10.0, 20.0, -5.0]
    aux_affine, aux_shape = aux_grid(affine, shape, (2, 2, 4))
    cases = []
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    for i in range(n_cases):
        centre = np.array(shape) / 2 + rng.uniform(-3, 3, 3)
        label = (np.linalg.norm((grid - centre[:, None, None, None]) * [[[[1]]], [[[1]]], [[[2]]]], axis=0) < 5)
        image = 100 + 50 * label + rng.normal(0, 5, shape)
        flair = np.zeros(aux_shape, np.float32)
        pooled = torch.nn.functional.avg_pool3d(
            torch.tensor(image[None, None] + 80 * label[None, None], dtype=torch.float32), (2, 2, 4), ceil_mode=True
        )[0, 0].numpy()
        flair[:] = pooled
        case = root / f"case{i}"
        case.mkdir(parents=True)
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), case / "t1.nii.gz")
        nib.save(nib.Nifti1Image(flair, aux_affine), case / "flair.nii.gz")
        nib.save(nib.Nifti1Image(label.astype(np.float32), affine), case / "seg.nii.gz")
        cases.append({"case_id": f"case{i}", "primary": f"case{i}/t1.nii.gz", "label": f"case{i}/seg.nii.gz",
                      "aux": {"flair": f"case{i}/flair.nii.gz"}})
    manifest = root / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"labels": {0: "background", 1: "lesion"}, "primary_name": "t1",
                                        "cases": cases}))
    return manifest


def tiny_config(manifest: Path, out: Path, **training) -> dict:
    return {
        "experiment": {"name": "tiny", "output_dir": str(out), "seed": 3, "deterministic": True},
        "data": {
            "dataset": str(manifest),
            "aux": {"flair": {"scale": [2, 2, 4], "mapper": "conv", "features": 4, "dropout": 0.3}},
            "val_fraction": 0.4,
            "target_spacing": None,
        },
        "model": {"encoder_depth": 3, "widen_factor": 0.25, "stem_kernel": 3, "norm": "instance",
                  "decoder_channels": [16, 8, 8], "deep_supervision": True},
        "training": {"patch_size": [16, 16, 16], "batch_size": 2, "iterations": 6, "iterations_per_epoch": 2,
                     "lr": 0.01, "warmup_iterations": 2, "num_threads": 1, **training},
        "inference": {"roi_size": [16, 16, 16], "overlap": 0.25},
    }


# -- the prediction tests' cases: a primary and a 2 × 2 × 4 FLAIR on an LPS, anisotropic grid ---------


SHAPE = (18, 16, 10)  # not a multiple of the 2x2x4 scale: the aux grid is ceil(SHAPE / scale)
SCALE = (2, 2, 4)
AFFINE = np.array([[-1.0, 0, 0, 10.0], [0, -1.2, 0, 5.0], [0, 0, 2.0, -8.0], [0, 0, 0, 1]])


def predict_config(dropout: float = 0.0, mode: str = "3d", aux: bool = True, **model) -> dict:
    """A tiny network's config: T1 with a FLAIR at ``SCALE`` (``aux=False``: T1 only)."""
    return {
        "data": {
            "aux": {"flair": {"scale": list(SCALE), "dropout": dropout}} if aux else {},
            "labels": {0: "background", 1: "foreground"},
        },
        "model": {
            "mode": mode,
            "encoder_depth": 3,
            "widen_factor": 0.25,
            "stem_kernel": 3,
            "decoder_channels": [16, 8, 8],
            **model,
        },
        "training": {"patch_size": [16, 16, 8] if mode == "3d" else [16, 16]},
    }


def write_case(folder: Path, name: str, seed: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    t1 = rng.normal(100.0, 20.0, SHAPE).astype(np.float32)
    t1[4:12, 3:11, 2:7] += 120.0
    folder.mkdir(parents=True, exist_ok=True)
    t1_path = folder / f"{name}_t1.nii.gz"
    nib.save(nib.Nifti1Image(t1, AFFINE), t1_path)
    flair_affine, flair_shape = aux_grid(AFFINE, SHAPE, SCALE)
    flair = rng.normal(50.0, 10.0, flair_shape).astype(np.float32)
    flair_path = folder / f"{name}_flair.nii.gz"
    nib.save(nib.Nifti1Image(flair, flair_affine), flair_path)
    return t1_path, flair_path


def write_manifest(folder: Path, names: list[str]) -> Path:
    lines = ["case_id,primary,flair"]
    for i, name in enumerate(names):
        t1, flair = write_case(folder / "scans", name, i)
        lines.append(f"{name},{t1.relative_to(folder)},{flair.relative_to(folder)}")
    path = folder / "cases.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def random_checkpoint(path: Path, dropout: float = 0.0, seed: int = 0, **kwargs) -> Path:
    """A checkpoint of a tiny random network of :func:`predict_config` (``mode``, ``aux``, model keys in ``kwargs``)."""
    cfg = config_from_dict(predict_config(dropout, **kwargs))
    torch.manual_seed(seed)
    net = build_model(cfg)
    return save_checkpoint({"model": net.state_dict(), "config": cfg.to_dict(), "in_channels": 1}, path)
