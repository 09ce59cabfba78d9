"""Several auxiliaries at different scales (2×2×4 and 2×2×2), each with its own dropout, with BraTS regions:
preprocessing, sampling, augmentation, training, sliding window, prediction write-back, evaluate and ablate."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from segfuse.auxiliary import lcm_of_scales
from segfuse.config import AugmentConfig, config_from_dict
from segfuse.data.layouts import read_dataset
from segfuse.data.preprocess import PreparedCase, prepare_case, preprocessing_from_config
from segfuse.data.regions import BRATS_REGIONS, labels_from_regions
from segfuse.data.sampling import pad_case, sample_patch
from segfuse.evaluation.ablate import ablate
from segfuse.evaluation.evaluate import evaluate, reference_folder
from segfuse.inference.predict import predict
from segfuse.io.checkpoint import load_checkpoint
from segfuse.io.geometry import aux_grid
from segfuse.training.loop import train

SHAPE = (32, 32, 16)
AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS, as BraTS ships
SCALES = {"flair": (2, 2, 4), "t2": (2, 2, 2)}


def _pool(array: np.ndarray, scale) -> np.ndarray:
    return F.avg_pool3d(torch.as_tensor(array, dtype=torch.float32)[None, None], tuple(scale))[0, 0].numpy()


def make_brats_like(root: Path, n_cases: int = 5) -> Path:
    """A YAML manifest: T1ce primary, FLAIR at 2×2×4 and T2 at 2×2×2 on their edge-aligned grids, labels 0/1/2/4."""
    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")).astype(np.float32)
    cases = []
    for i in range(n_cases):
        centre = np.array(SHAPE) / 2 + rng.uniform(-4, 4, 3)
        r = np.linalg.norm((grid - centre[:, None, None, None]) * np.array([1, 1, 1.5])[:, None, None, None], axis=0)
        label = np.zeros(SHAPE, np.uint8)
        label[r < 9] = 2  # oedema
        label[r < 6] = 4  # enhancing rim
        label[r < 3.5] = 1  # necrotic core
        t1ce = 100 + 80 * (label == 4) + rng.normal(0, 5, SHAPE)
        flair = 100 + 60 * (label > 0) + rng.normal(0, 5, SHAPE)
        t2 = 100 + 50 * (label == 2) - 30 * (label == 1) + rng.normal(0, 5, SHAPE)
        folder = root / f"case{i}"
        folder.mkdir(parents=True)
        nib.save(nib.Nifti1Image(t1ce.astype(np.float32), AFFINE), folder / "t1ce.nii.gz")
        nib.save(nib.Nifti1Image(label.astype(np.int16), AFFINE), folder / "seg.nii.gz")
        aux = {}
        for name, image in (("flair", flair), ("t2", t2)):
            affine, _ = aux_grid(AFFINE, SHAPE, SCALES[name])
            nib.save(nib.Nifti1Image(_pool(image, SCALES[name]), affine), folder / f"{name}.nii.gz")
            aux[name] = f"case{i}/{name}.nii.gz"
        cases.append({"case_id": f"case{i}", "primary": f"case{i}/t1ce.nii.gz", "label": f"case{i}/seg.nii.gz",
                      "aux": aux})
    manifest = root / "manifest.yaml"
    labels = {0: "background", 1: "necrosis", 2: "oedema", 4: "enhancing"}
    manifest.write_text(yaml.safe_dump({"labels": labels, "primary_name": "t1ce", "cases": cases}))
    return manifest


def config(manifest: Path, out: Path, mode: str = "3d", **data) -> dict:
    patch = [16, 16, 16] if mode == "3d" else [16, 16]
    return {
        "experiment": {"name": f"multi_{mode}", "output_dir": str(out), "seed": 0, "deterministic": True},
        "data": {
            "dataset": str(manifest),
            "primary": "t1ce",
            "aux": {
                "flair": {"scale": [2, 2, 4], "features": 4, "dropout": 0.3},
                "t2": {"scale": [2, 2, 2], "features": 4, "dropout": 0.5, "fusion": "gated"},
            },
            "regions": dict(BRATS_REGIONS),
            "val_fraction": 0.4,
            "target_spacing": None,
            **data,
        },
        "model": {"mode": mode, "encoder_depth": 3, "widen_factor": 0.25, "stem_kernel": 3, "norm": "instance",
                  "decoder_channels": [16, 8, 8], "deep_supervision": mode == "3d"},
        "training": {"patch_size": patch, "batch_size": 2, "iterations": 4, "iterations_per_epoch": 2,
                     "lr": 0.01, "num_threads": 1, "amp": False, "device": "cpu",
                     "augment": {"rotate_prob": 0.5, "scale_prob": 0.5}},
        "inference": {"roi_size": patch, "overlap": 0.25},
    }


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return make_brats_like(tmp_path_factory.mktemp("brats_like"))


def test_preprocessing_puts_each_auxiliary_on_its_own_grid(manifest):
    cfg = config_from_dict(config(manifest, Path("unused")))
    dataset = read_dataset(cfg.data.dataset, primary="t1ce", aux=list(cfg.data.aux))
    cfg.data.labels = dict(dataset.labels)
    prepared = prepare_case(dataset.cases[0], preprocessing_from_config(cfg))
    assert prepared.shape == SHAPE
    assert prepared.aux["flair"].shape == (1, 16, 16, 4)
    assert prepared.aux["t2"].shape == (1, 16, 16, 8)
    assert sorted(np.unique(prepared.label).tolist()) == [0, 1, 2, 4]


def _ramp_case() -> PreparedCase:
    """Primary: a linear ramp (block averages and linear interpolation of it are exact); aux: block averages."""
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in (48, 48, 32)], indexing="ij")
    primary = (1.0 + 0.5 * x + 0.25 * y + 0.75 * z)[None]
    label = np.zeros(primary.shape[1:], np.uint8)
    label[20:28, 20:28, 12:20] = 4
    aux = {name: _pool(primary[0], s)[None] for name, s in SCALES.items()}
    return PreparedCase("ramp", primary, aux, label, np.diag([1.0, 1.0, 1.0, 1.0]))


def test_rotation_and_flips_keep_both_auxiliaries_aligned_with_the_primary():
    patch, margin = (16, 16, 16), [4, 4, 4]
    padded = pad_case(_ramp_case(), SCALES, patch, margin)
    augment = AugmentConfig(flip_prob=0.5, rotate_prob=1.0, rotate_degrees=20.0, scale_prob=1.0, intensity_prob=0.0)
    rng = np.random.default_rng(0)
    for _ in range(6):
        sample = sample_patch(padded, patch, margin, SCALES, {"flair": 0.0, "t2": 0.0}, rng, True, augment)
        for name, s in SCALES.items():
            assert sample[f"aux_{name}"].shape == (1, *[p // si for p, si in zip(patch, s, strict=True)])
            expected = _pool(sample["primary"][0], s)
            # a linear ramp rotates and block-averages exactly; only the far corners can touch the padding
            inner = tuple(slice(1, -1) for _ in s)
            np.testing.assert_allclose(sample[f"aux_{name}"][0][inner], expected[inner], atol=0.05)


def test_modality_dropout_is_drawn_independently_per_auxiliary():
    patch = (16, 16, 16)
    padded = pad_case(_ramp_case(), SCALES, patch, [0, 0, 0])
    none = AugmentConfig(flip_prob=0.0, rotate_prob=0.0, scale_prob=0.0, intensity_prob=0.0)
    rng = np.random.default_rng(0)
    kept = np.array(
        [
            [float(s["present_flair"]), float(s["present_t2"])]
            for s in (
                sample_patch(padded, patch, [0, 0, 0], SCALES, {"flair": 0.3, "t2": 0.6}, rng, False, none)
                for _ in range(400)
            )
        ]
    )
    assert kept[:, 0].mean() == pytest.approx(0.7, abs=0.07)
    assert kept[:, 1].mean() == pytest.approx(0.4, abs=0.07)
    both = (kept[:, 0] * kept[:, 1]).mean()
    assert both == pytest.approx(kept[:, 0].mean() * kept[:, 1].mean(), abs=0.06)  # independent draws
    combos = {tuple(row) for row in kept}
    assert combos == {(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)}


def test_regions_with_two_auxiliaries_train_predict_evaluate_and_ablate(manifest, tmp_path):
    cfg = config_from_dict(config(manifest, tmp_path))
    assert lcm_of_scales({k: v.scale for k, v in cfg.data.aux.items()}) == (2, 2, 4)
    result = train(cfg, progress=False)
    last = result.history[-1]
    for name in BRATS_REGIONS:  # validation reports Dice per region
        assert 0.0 <= last[f"val_dice_{name}"] <= 1.0
    ckpt = result.run_dir / "checkpoint_last.pt"

    dataset = read_dataset(manifest, primary="t1ce", aux=["flair", "t2"])
    val = [c for c in dataset.cases if c.case_id in ("case0", "case1")]
    preds = tmp_path / "preds"
    run = predict(ckpt, val, preds, save_probabilities=True, progress=False)
    assert run.ok
    for case in val:
        written = nib.load(preds / f"{case.case_id}.nii.gz")
        source = nib.load(case.primary.path)
        assert written.shape == source.shape and np.allclose(written.affine, source.affine)
        labels = np.asarray(written.dataobj)
        assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
        probs = np.asarray(nib.load(preds / "probabilities" / f"{case.case_id}.nii.gz").dataobj)
        assert probs.shape == (*SHAPE, 3)  # one sigmoid channel per region
        np.testing.assert_array_equal(labels, labels_from_regions(np.moveaxis(probs, -1, 0), BRATS_REGIONS))

    refs = reference_folder(val, tmp_path / "refs")
    scores = evaluate(preds, refs, tmp_path / "eval", regions=BRATS_REGIONS, progress=False)
    assert [r["name"] for r in scores.rows[:3]] == list(BRATS_REGIONS)

    sub = read_dataset(manifest, primary="t1ce", aux=["flair", "t2"])
    sub.cases = val
    ablation = ablate(ckpt, sub, tmp_path / "ablation", progress=False)
    assert [r["variant"] for r in ablation.rows] == ["all", "without_flair", "without_t2", "none"]
    assert ablation.classes == list(BRATS_REGIONS)
    assert [r["dropped"] for r in ablation.rows] == [[], ["flair"], ["t2"], ["flair", "t2"]]
    for row in ablation.rows:
        for name in BRATS_REGIONS:
            assert row["dice_drop_vs_all"][name] == pytest.approx(ablation.rows[0]["dice"][name] - row["dice"][name])
    payload = json.loads((tmp_path / "ablation" / "ablation.json").read_text())
    assert payload["regions"] == BRATS_REGIONS
    for variant in ("all", "without_flair", "without_t2", "none"):
        assert (tmp_path / "ablation" / variant / "predictions" / "case0.nii.gz").is_file()


def test_2d_mode_with_two_auxiliaries_and_regions(manifest, tmp_path):
    cfg = config_from_dict(config(manifest, tmp_path, mode="2d"))
    result = train(cfg, progress=False)
    assert "val_dice_enhancing_tumour" in result.history[-1]
    dataset = read_dataset(manifest, primary="t1ce", aux=["flair", "t2"])
    run = predict(result.run_dir / "checkpoint_last.pt", dataset.cases[:1], tmp_path / "preds", progress=False,
                  drop_aux=["t2"])
    assert run.ok and run.succeeded[0].missing_aux == ["t2"]
    labels = np.asarray(nib.load(tmp_path / "preds" / "case0.nii.gz").dataobj)
    assert labels.shape == SHAPE and set(np.unique(labels).tolist()) <= {0, 1, 2, 4}


def test_softmax_training_on_brats_label_values_without_regions_and_a_snapshot(manifest, tmp_path):
    cfg = config_from_dict(config(manifest, tmp_path, regions=None))
    cfg.training.iterations = 4
    cfg.training.snapshots = [0.5]
    result = train(cfg, progress=False)
    assert load_checkpoint(result.run_dir / "checkpoint_050pct.pt")["iteration"] == 2  # training.snapshots
    assert {"val_dice_necrosis", "val_dice_oedema", "val_dice_enhancing"} <= set(result.history[-1])
    dataset = read_dataset(manifest, primary="t1ce", aux=["flair", "t2"])
    predict(result.run_dir / "checkpoint_last.pt", dataset.cases[:1], tmp_path / "preds", progress=False)
    labels = np.asarray(nib.load(tmp_path / "preds" / "case0.nii.gz").dataobj)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
