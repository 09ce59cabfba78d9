"""The shipped configs on the real data in ../shared/data (skipped when it is absent).

Each config is loaded as a user would (``segfuse train --config …``) with overrides
that only shrink the run (iterations, patch, validation cases), so that what is
checked is the config's data, auxiliary and model settings on real files. A golden
check trains ``configs/debug.yaml`` (bundled sample, fixed seed, deterministic) and
asserts the held-out Dice has not regressed below a measured floor.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from segfuse.cli import main
from segfuse.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def _train(config: Path, out: Path, *overrides: str) -> Path:
    args = ["train", "--config", str(config), f"experiment.output_dir={out}", *overrides, "--no-progress"]
    assert main(args) == 0
    (run,) = [p for p in out.iterdir() if p.is_dir() and p.name != "preprocessed"]  # the store sits beside runs
    assert (run / "checkpoint_last.pt").is_file()
    return run


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _brats_subset(tmp_path: Path, n: int) -> Path:
    """The first ``n`` cases of configs/brats18_manifest.yaml, paths made absolute."""
    source = CONFIGS / "brats18_manifest.yaml"
    manifest = yaml.safe_load(source.read_text())

    def absolute(p: str) -> str:
        return str((source.parent / p).resolve())

    manifest["cases"] = [
        {
            **c,
            "primary": absolute(c["primary"]),
            "label": absolute(c["label"]),
            "aux": {k: absolute(v) for k, v in c["aux"].items()},
        }
        for c in manifest["cases"][:n]
    ]
    out = tmp_path / "brats_subset.yaml"
    out.write_text(yaml.safe_dump(manifest))
    return out


def _hippocampus_subset(folder: Path, tmp_path: Path, n: int) -> Path:
    """A YAML manifest of the first ``n`` cases of an MSD folder, with its labels."""
    info = yaml.safe_load((folder / "dataset.json").read_text())  # JSON is YAML
    cases = [
        {
            "case_id": Path(e["image"]).name.removesuffix(".nii.gz"),
            "primary": str((folder / e["image"]).resolve()),
            "label": str((folder / e["label"]).resolve()),
        }
        for e in info["training"][:n]
    ]
    labels = {int(k): v for k, v in info["labels"].items()}
    out = tmp_path / "hippocampus_subset.yaml"
    out.write_text(yaml.safe_dump({"labels": labels, "primary_name": "MRI", "cases": cases}))
    return out


BRATS_CONFIGS = {  # config -> overrides that keep its own settings but make the run tiny
    "brats_t1_flair_lowres": ["training.patch_size=[64, 64, 32]", "inference.roi_size=[128, 128, 64]"],
    "brats_t1_flair_lowres_2d": ["training.schedule=iterations", "training.max_minutes=null"],
}


@pytest.mark.parametrize("name", sorted(BRATS_CONFIGS))
def test_brats_config_trains_on_real_data(shared_data, tmp_path, name):
    if not (shared_data / "brats18_t1_flair").is_dir():
        pytest.skip(f"{shared_data / 'brats18_t1_flair'} is absent")
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert Path(cfg.data.dataset) == (CONFIGS / "brats18_manifest.yaml").resolve()
    assert cfg.data.primary == "t1" and list(cfg.data.aux) == ["flair_2x2x4mm"]
    assert cfg.data.aux["flair_2x2x4mm"].scale == (2, 2, 4)
    assert (cfg.data.aux["flair_2x2x4mm"].dropout > 0) == (cfg.spatial_dims == 3)  # the 2.5D one: the study's 0
    # 2 subjects (1 train, 1 validation) instead of 10: reading and resampling whole
    # BraTS volumes dominates the time; the config's own settings are otherwise kept.
    subset = _brats_subset(tmp_path, 2)
    run = _train(
        CONFIGS / f"{name}.yaml",
        tmp_path / "runs",
        f"data.dataset={subset}",
        "data.val_cases=[Brats18_CBICA_AAB_1]",
        "training.iterations=2",
        "training.iterations_per_epoch=2",
        "training.num_threads=2",
        "inference.overlap=0.0",
        *BRATS_CONFIGS[name],
    )
    saved = load_config(run / "config.yaml")
    assert saved.data.labels == {0: "background", 1: "whole_tumour"}  # from the manifest
    (row,) = _rows(run)
    assert 0.0 <= float(row["val_mean_dice"]) <= 1.0


@pytest.mark.parametrize("name", ["hippocampus_3d", "hippocampus_2d"])
def test_hippocampus_configs_train_on_real_data(shared_data, tmp_path, name):
    if not (shared_data / "hippocampus").is_dir():
        pytest.skip(f"{shared_data / 'hippocampus'} is absent")
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert Path(cfg.data.dataset) == (shared_data / "hippocampus").resolve()
    # 6 of the 200 cases (5 train, 1 validation): the config's settings, a tiny run.
    subset = _hippocampus_subset(shared_data / "hippocampus", tmp_path, 6)
    patch = "[32, 32, 32]" if cfg.spatial_dims == 3 else "[32, 32]"
    run = _train(
        CONFIGS / f"{name}.yaml",
        tmp_path / "runs",
        f"data.dataset={subset}",
        "data.val_fraction=0.2",
        "training.iterations=2",
        "training.iterations_per_epoch=2",
        "training.batch_size=2",
        f"training.patch_size={patch}",
        "training.max_minutes=null",
        "training.num_threads=2",
    )
    (row,) = _rows(run)
    assert 0.0 <= float(row["val_mean_dice"]) <= 1.0


# Golden output (nnU-Net spirit): configs/debug.yaml with 80 iterations, seed 0,
# deterministic, 1 thread. Measured on this project's 2-core CPU after batches moved to
# per-iteration generators (commit 0b58fae): held-out mean Dice 0.3485 (Anterior 0.237,
# Posterior 0.460), ~19 s per run. Seeds 1-3 give 0.224, 0.337 and 0.207, so the floor
# sits below the worst seed, not just below seed 0: a working pipeline clears it
# whatever its random stream, a broken one (Dice ~0) does not. At 40 iterations the
# seeds spread from 0.07 to 0.25, too wide for a floor that means anything.
GOLDEN_DEBUG_DICE = 0.3485
GOLDEN_FLOOR = 0.16


def test_debug_config_golden_dice(tmp_path):
    run = _train(
        CONFIGS / "debug.yaml",
        tmp_path / "runs",
        "training.iterations=80",
        "training.iterations_per_epoch=20",
    )
    last = _rows(run)[-1]
    assert int(last["iteration"]) == 80
    dice = float(last["val_mean_dice"])
    assert dice >= GOLDEN_FLOOR, (
        f"debug-config Dice regressed: {dice:.4f} < {GOLDEN_FLOOR} (measured {GOLDEN_DEBUG_DICE})"
    )
