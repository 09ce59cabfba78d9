"""segfuse ablate: Dice with all auxiliaries, without each, without any; only for dropout-trained models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from segfuse.cli import main
from segfuse.config import config_from_dict
from segfuse.evaluation.ablate import ablate
from segfuse.factory import build_model
from segfuse.io.checkpoint import save_checkpoint
from segfuse.io.errors import SegfuseInputError
from segfuse.io.geometry import aux_grid

SHAPE = (16, 16, 8)
SCALE = (2, 2, 4)
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def _checkpoint(path: Path, dropout: float) -> Path:
    cfg = config_from_dict(
        {
            "data": {
                "aux": {"flair": {"scale": list(SCALE), "dropout": dropout}},
                "labels": {0: "background", 1: "lesion"},
            },
            "model": {"encoder_depth": 3, "widen_factor": 0.25, "stem_kernel": 3, "decoder_channels": [16, 8, 8]},
            "training": {"patch_size": [16, 16, 8]},
        }
    )
    torch.manual_seed(0)
    net = build_model(cfg)
    return save_checkpoint({"model": net.state_dict(), "config": cfg.to_dict(), "in_channels": 1}, path)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = ["case_id,primary,label,flair"]
    flair_affine, flair_shape = aux_grid(AFFINE, SHAPE, SCALE)
    for name in ("a", "b"):
        label = np.zeros(SHAPE, np.uint8)
        label[4:10, 5:12, 2:6] = 1
        t1 = rng.normal(100.0, 10.0, SHAPE).astype(np.float32) + 80.0 * label
        flair = rng.normal(50.0, 10.0, flair_shape).astype(np.float32)
        for kind, array, affine in (("t1", t1, AFFINE), ("seg", label, AFFINE), ("flair", flair, flair_affine)):
            nib.save(nib.Nifti1Image(array, affine), tmp_path / f"{name}_{kind}.nii.gz")
        lines.append(f"{name},{name}_t1.nii.gz,{name}_seg.nii.gz,{name}_flair.nii.gz")
    manifest = tmp_path / "cases.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_ablate_reports_all_without_each_and_none(dataset: Path, tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "dropout.pt", dropout=0.5)
    result = ablate(ckpt, dataset, tmp_path / "ablation", progress=False)
    assert [r["variant"] for r in result.rows] == ["all", "without_flair", "none"]
    assert result.classes == ["lesion"]
    assert result.rows[0]["drop_vs_all"] == 0.0
    for row in result.rows:
        assert 0.0 <= row["mean_dice"] <= 1.0
        assert row["mean_dice"] == pytest.approx(row["dice"]["lesion"])
    assert result.rows[1]["dice"] == result.rows[2]["dice"]  # one auxiliary: same set removed
    table = result.table()
    assert table.splitlines()[0].split() == ["variant", "lesion", "mean", "Dice", "drop", "vs", "all"]
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["all", "without_flair", "none"]
    with open(tmp_path / "ablation" / "ablation.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["variant"] for r in rows] == ["all", "without_flair", "none"]
    assert set(rows[0]) == {"variant", "dropped", "dice_lesion", "mean_dice", "drop_vs_all"}
    payload = json.loads((tmp_path / "ablation" / "ablation.json").read_text())
    assert [v["dropped"] for v in payload["variants"]] == [[], ["flair"], ["flair"]]
    assert (tmp_path / "ablation" / "without_flair" / "predictions" / "a.nii.gz").is_file()
    assert (tmp_path / "ablation" / "all" / "evaluation" / "summary.json").is_file()


def test_ablate_refuses_a_model_without_modality_dropout(dataset: Path, tmp_path: Path, capsys) -> None:
    ckpt = _checkpoint(tmp_path / "plain.pt", dropout=0.0)
    with pytest.raises(SegfuseInputError, match=r"trained with modality dropout.*dropout 0 for \['flair'\]"):
        ablate(ckpt, dataset, tmp_path / "ablation", progress=False)
    code = main(["ablate", "--checkpoint", str(ckpt), "--dataset", str(dataset), "--out", str(tmp_path / "x")])
    assert code == 2
    assert "modality dropout" in capsys.readouterr().err
