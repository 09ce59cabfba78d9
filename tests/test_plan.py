"""``segfuse plan``: target spacing, aux scales, checks, patch/batch under a memory budget, YAML."""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from segfuse.config import load_config
from segfuse.io.errors import SegfuseInputError
from segfuse.io.geometry import aux_grid, canonical_grid, describe_affine, to_canonical
from segfuse.training.memory import activation_memory, plan_patch
from segfuse.training.plan import plan_dataset

LABELS = {0: "background", 1: "edema", 2: "core"}


def _affine(direction: np.ndarray, spacing: tuple[float, ...], origin: tuple[float, ...]) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def _rot_z(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


LPS = np.diag([-1.0, -1.0, 1.0])
# voxel axis 0 -> S, 1 -> L, 2 -> P: a permuted LPS frame (canonical spacing order differs)
PERMUTED = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])

# (direction, spacing in voxel-axis order, shape): canonical spacings 0.8x0.8x2.5 (twice)
# and 1x1x3 (oblique), so the per-axis median is 0.8x0.8x2.5.
CASES = {
    "c0": (LPS, (0.8, 0.8, 2.5), (40, 36, 16)),
    "c1": (PERMUTED, (2.5, 0.8, 0.8), (16, 40, 36)),
    "c2": (LPS @ _rot_z(12.0), (1.0, 1.0, 3.0), (32, 30, 14)),
}
AUX_SCALE_CANONICAL = (2, 2, 4)


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _scale_in_voxel_order(affine: np.ndarray, scale: tuple[int, ...]) -> tuple[int, ...]:
    """The canonical (x, y, z) scale expressed along the file's own voxel axes."""
    ornt = nib.orientations.io_orientation(affine)
    return tuple(scale[int(axis)] for axis, _ in ornt)


def _label(shape: tuple[int, ...], core: bool = True) -> np.ndarray:
    """A box of 1s, with a box of 2s inside unless ``core=False``."""
    label = np.zeros(shape, np.uint8)
    c = [s // 2 for s in shape]
    label[c[0] - 4 : c[0] + 4, c[1] - 4 : c[1] + 4, c[2] - 3 : c[2] + 3] = 1
    if core:
        label[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 1 : c[2] + 1] = 2
    return label


def _write_cases(
    root: Path, aux_factor: float | None = 2.0, shift_aux: str | None = None, core: bool = False
) -> list[dict]:
    """Primary, label (values 0, 1 and, with ``core``, 2) and a 'flair' auxiliary per case.

    ``aux_factor=2`` puts the auxiliary on the edge-aligned (2, 2, 4) grid; another
    factor f uses spacing (f, f, 2f) x the primary's, edge-aligned by hand.
    """
    rng = np.random.default_rng(1)
    rows = []
    for cid, (direction, spacing, shape) in CASES.items():
        affine = _affine(direction, spacing, (10.0, -20.0, 30.0))
        primary = rng.normal(100.0, 10.0, shape).astype(np.float32)
        _save(root / cid / "t1.nii.gz", primary, affine)
        _save(root / cid / "seg.nii.gz", _label(shape, core), affine)
        row = {"case_id": cid, "primary": f"{cid}/t1.nii.gz", "label": f"{cid}/seg.nii.gz"}
        if aux_factor is not None:
            factors = np.array(_scale_in_voxel_order(affine, (aux_factor, aux_factor, 2 * aux_factor)))
            if aux_factor == 2.0:
                aux_affine, aux_shape = aux_grid(affine, shape, factors.astype(int))
            else:
                step = np.eye(4)
                step[:3, :3] = np.diag(factors)
                step[:3, 3] = (factors - 1) / 2
                aux_affine = affine @ step
                aux_shape = tuple(math.ceil(n / f) for n, f in zip(shape, factors, strict=True))
            if shift_aux == cid:
                # move the auxiliary by 3/4 of its extent along its first voxel axis
                aux_affine = aux_affine.copy()
                aux_affine[:3, 3] += aux_affine[:3, 0] * (0.75 * aux_shape[0])
            _save(root / cid / "flair.nii.gz", rng.normal(50, 5, aux_shape).astype(np.float32), aux_affine)
            row["flair"] = f"{cid}/flair.nii.gz"
        rows.append(row)
    return rows


def _csv_manifest(root: Path, **kwargs) -> Path:
    rows = _write_cases(root, **kwargs)
    path = root / "manifest.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _yaml_manifest(root: Path, **kwargs) -> Path:
    rows = _write_cases(root, core=True, **kwargs)
    cases = [
        {"case_id": r["case_id"], "primary": r["primary"], "label": r["label"], "aux": {"flair": r["flair"]}}
        for r in rows
    ]
    path = root / "manifest.yaml"
    path.write_text(yaml.safe_dump({"labels": LABELS, "primary_name": "t1", "cases": cases}))
    return path


def _msd_ct(root: Path) -> Path:
    """A decathlon folder with a 4D (CT, PET) image per case, LPS/oblique and anisotropic."""
    rng = np.random.default_rng(2)
    training = []
    for cid, (direction, spacing, shape) in CASES.items():
        affine = _affine(direction, spacing, (0.0, 0.0, 0.0))
        ct = rng.normal(40.0, 20.0, shape)
        label = _label(shape)
        ct[label > 0] = rng.normal(200.0, 30.0, int((label > 0).sum()))
        image = np.stack([ct, rng.normal(5, 1, shape)], axis=-1).astype(np.float32)
        _save(root / "imagesTr" / f"{cid}.nii.gz", image, affine)
        _save(root / "labelsTr" / f"{cid}.nii.gz", label, affine)
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    meta = {"name": "toy", "modality": {"0": "CT", "1": "PET"}, "labels": {str(k): v for k, v in LABELS.items()}}
    (root / "dataset.json").write_text(json.dumps({**meta, "training": training}))
    return root


# ---------------------------------------------------------------------- geometry


def test_canonical_grid_matches_to_canonical(oblique_affine):
    array = np.zeros((1, 7, 5, 3), np.float32)
    for affine in (oblique_affine, _affine(PERMUTED, (2.5, 0.8, 0.8), (1.0, 2.0, 3.0))):
        expected_array, expected_affine = to_canonical(array, affine)
        got_affine, got_shape = canonical_grid(affine, array.shape[1:])
        assert got_shape == expected_array.shape[1:]
        np.testing.assert_allclose(got_affine, expected_affine)


# ---------------------------------------------------------------- the whole plan


@pytest.mark.parametrize("manifest", [_csv_manifest, _yaml_manifest], ids=["csv", "yaml"])
def test_plan_manifest_spacing_scale_overlap_and_yaml(tmp_path, manifest):
    source = manifest(tmp_path / "ds")
    out = tmp_path / "plan.yaml"
    cfg, report = plan_dataset(source, out=out, progress=False)

    np.testing.assert_allclose(cfg.data.target_spacing, [0.8, 0.8, 2.5])
    assert cfg.data.aux["flair"].scale == (2, 2, 4)
    assert report.aux_scales["flair"] == AUX_SCALE_CANONICAL
    assert report.warnings == []
    assert [r.case_id for r in report.rows] == list(CASES)
    # c1's voxel axes are (S, L, P): its canonical spacing is reported in x, y, z order
    np.testing.assert_allclose(report.rows[1].spacing, (0.8, 0.8, 2.5))
    assert report.rows[1].shape == (40, 36, 16)
    for row in report.rows:
        assert row.aux_overlap["flair"] > 0.95
    assert cfg.data.primary_norm.kind == "mr" and cfg.data.aux["flair"].norm.kind == "mr"
    if manifest is _yaml_manifest:
        assert cfg.data.labels == LABELS and cfg.data.primary == "t1" and report.labels_found == [0, 1, 2]
    else:  # a CSV declares no labels: the default {0, 1}
        assert sorted(cfg.data.labels) == [0, 1] and report.labels_found == [0, 1]

    # the model and training sections
    assert cfg.model.mode == "3d" and cfg.model.widen_factor == 0.5 and cfg.model.stem_kernel == 3
    assert cfg.model.encoder_depth == 4  # median shape < 64 on some axis
    assert cfg.model.decoder_channels == [128, 64, 32, 16]
    assert all(p % 16 == 0 for p in cfg.training.patch_size)
    assert cfg.training.batch_size >= 2 and cfg.inference.roi_size == cfg.training.patch_size
    assert activation_memory(cfg.training.patch_size, cfg.training.batch_size, 4) <= 4.0 * 2**30

    # the YAML: comment block first, then exactly the returned config
    text = out.read_text()
    assert text.startswith(f"# segfuse plan for {source.resolve()}, ")
    assert "edit freely" in text.splitlines()[0]
    assert load_config(out) == cfg
    assert cfg.data.dataset == str(source.resolve())

    table = report.table()
    for needle in ("cases", "3", "0.8 x 0.8 x 2.5", "scale 2 x 2 x 4", "min overlap", "labels found"):
        assert needle in table


def test_plan_msd_ct_statistics_and_2d(tmp_path):
    root = _msd_ct(tmp_path / "msd")
    cfg, report = plan_dataset(root, mode="2d", progress=False)
    assert cfg.model.aux_slice == "linear"  # the PET beside each CT slice, interpolated to its position
    assert cfg.data.aux["pet"].level_blocks == 1  # the fusion study's default
    norm = cfg.data.primary_norm
    assert cfg.data.primary == "ct" and norm.kind == "ct"
    lo, hi = norm.clip
    assert 100.0 < lo < norm.mean < hi < 300.0  # foreground (label > 0) voxels, around 200
    assert 20.0 < norm.std < 40.0
    assert cfg.data.aux["pet"].norm.kind == "mr" and cfg.data.aux["pet"].scale == (1, 1, 1)
    assert cfg.model.mode == "2d" and len(cfg.training.patch_size) == 2
    assert all(p % 16 == 0 for p in cfg.training.patch_size)
    assert report.rows[0].aux_overlap["pet"] == 1.0


def test_rounding_warning_for_a_2_3x_auxiliary(tmp_path, caplog):
    source = _csv_manifest(tmp_path / "ds", aux_factor=2.3)
    with caplog.at_level(logging.WARNING, logger="segfuse.data.fingerprint"):
        cfg, report = plan_dataset(source, progress=False)
    assert cfg.data.aux["flair"].scale == (2, 2, 5)
    assert len(report.warnings) == 1
    assert "'flair'" in report.warnings[0] and "2.3 x 2.3 x 4.6" in report.warnings[0]
    assert "13%" in report.warnings[0]
    assert report.warnings[0] in caplog.text
    assert "WARNING" in report.table()


def test_shifted_auxiliary_is_an_overlap_error_with_the_fraction(tmp_path):
    source = _csv_manifest(tmp_path / "ds", shift_aux="c0")
    with pytest.raises(SegfuseInputError) as info:
        plan_dataset(source, progress=False)
    message = str(info.value)
    assert "c0: auxiliary 'flair'" in message
    assert str((tmp_path / "ds" / "c0" / "flair.nii.gz").resolve()) in message
    assert "covers 25.0% of the primary's field of view" in message
    assert "c1" not in message and "c2" not in message
    # with a lower threshold the plan passes and reports the fraction
    _, report = plan_dataset(source, progress=False, overlap_error_below=0.2)
    assert report.rows[0].aux_overlap["flair"] == pytest.approx(0.25)
    assert "min overlap 25.0% (c0)" in report.table()


def test_label_off_the_image_grid_names_both_affines(tmp_path):
    source = _csv_manifest(tmp_path / "ds")
    direction, spacing, shape = CASES["c2"]
    image_affine = _affine(direction, spacing, (10.0, -20.0, 30.0))
    label_affine = image_affine.copy()
    label_affine[:3, 3] += [1.5, 0.0, 0.0]
    _save(tmp_path / "ds" / "c2" / "seg.nii.gz", _label(shape, core=False), label_affine)
    with pytest.raises(SegfuseInputError) as info:
        plan_dataset(source, progress=False)
    message = str(info.value)
    assert "c2: label" in message and "is not on the grid of its image" in message
    assert describe_affine(label_affine) in message
    assert describe_affine(nib.load(str(tmp_path / "ds" / "c2" / "t1.nii.gz")).affine) in message


def test_undeclared_label_values_are_listed(tmp_path):
    source = _csv_manifest(tmp_path / "ds", core=True)  # CSV: labels default to {0, 1}; the files hold 2
    with pytest.raises(SegfuseInputError, match=r"c0: .*seg.nii.gz: label map holds values 2 that are not declared"):
        plan_dataset(source, progress=False)


# ------------------------------------------------------------ patch and memory


@pytest.mark.parametrize(
    ("median", "multiples", "depth", "budget"),
    [
        ((160, 192, 150), (32, 32, 32), 5, 4.0),
        ((160, 192, 150), (32, 32, 64), 5, 1.0),
        ((36, 50, 35), (16, 16, 16), 4, 0.3),
        ((512, 512), (32, 32), 5, 2.0),
        ((512, 512), (32, 64), 5, 0.5),
    ],
)
def test_plan_patch_respects_budget_and_multiples(median, multiples, depth, budget):
    patch, batch = plan_patch(median, multiples, depth, budget)
    assert batch >= 2
    assert all(p % m == 0 and p >= m for p, m in zip(patch, multiples, strict=True))
    assert all(p <= -(-n // m) * m for p, n, m in zip(patch, median, multiples, strict=True))
    assert activation_memory(patch, batch, depth) <= budget * 2**30
    # the batch is as large as the budget allows
    assert activation_memory(patch, batch + 1, depth) > budget * 2**30


def test_plan_patch_shrinks_the_largest_axis_first():
    full, _ = plan_patch((128, 256, 128), (32, 32, 32), 5, 100.0)
    assert full == (128, 256, 128)
    patch, _ = plan_patch((128, 256, 128), (32, 32, 32), 5, 1.0)
    assert patch[1] >= patch[0] - 32 and patch[1] < 256


def test_plan_patch_refuses_a_budget_too_small():
    with pytest.raises(SegfuseInputError, match=r"memory budget 0\.001 GiB is too small"):
        plan_patch((128, 128, 128), (32, 32, 32), 5, 0.001)


def test_memory_estimate_covers_the_measured_activations():
    from segfuse.models.net import FusionUNet

    patch, batch, depth = (32, 48, 32), 2, 4
    net = FusionUNet(
        spatial_dims=3,
        in_channels=1,
        num_classes=3,
        encoder_depth=depth,
        widen_factor=0.5,
        stem_kernel=3,
        decoder_channels=[128, 64, 32, 16],
    ).train()
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(torch.randn(batch, 1, *patch))
    params = 16 * sum(p.numel() for p in net.parameters())
    measured = sum(saved.values()) + params
    estimate = activation_memory(patch, batch, depth)
    assert measured <= estimate <= 2.0 * measured


# --------------------------------------------------------------------------- CLI


def test_cli_plan_writes_the_file(tmp_path, capsys):
    from segfuse.cli import main

    source = _yaml_manifest(tmp_path / "ds")
    out = tmp_path / "plans" / "plan.yaml"
    out.parent.mkdir()
    code = main(["plan", str(source), "--out", str(out), "--aux", "flair", "--mode", "3d", "--memory-gb", "2"])
    assert code == 0
    cfg = load_config(out)
    assert cfg.data.aux["flair"].scale == (2, 2, 4)
    assert activation_memory(cfg.training.patch_size, cfg.training.batch_size, cfg.model.encoder_depth) <= 2 * 2**30
    printed = capsys.readouterr().out
    assert "target spacing" in printed and str(out) in printed


def test_cli_plan_input_error_is_one_line(tmp_path, capsys):
    from segfuse.cli import main

    source = _csv_manifest(tmp_path / "ds", shift_aux="c1")
    code = main(["plan", str(source), "--out", str(tmp_path / "plan.yaml"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "covers 25.0%" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "plan.yaml").exists()


# ----------------------------------------------------------------------- realdata


@pytest.mark.realdata
def test_plan_hippocampus(shared_data, tmp_path):
    start = time.perf_counter()
    cfg, report = plan_dataset(shared_data / "hippocampus", out=tmp_path / "plan.yaml", progress=False)
    elapsed = time.perf_counter() - start
    assert elapsed < 60.0
    assert len(report.rows) == 200
    assert cfg.data.target_spacing == [1.0, 1.0, 1.0]
    assert sorted(cfg.data.labels) == [0, 1, 2] and report.labels_found == [0, 1, 2]
    assert cfg.data.primary_norm.kind == "mr" and cfg.data.aux == {}
    assert load_config(tmp_path / "plan.yaml") == cfg
