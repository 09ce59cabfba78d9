"""End to end through the command line only: plan → train → predict → evaluate → ablate.

Tiny synthetic data with non-trivial geometry (LPS, anisotropic 0.9 × 0.9 × 2 mm,
a FLAIR-like auxiliary at 2 × 2 × 4 on its edge-aligned grid, sphere labels), built
by :func:`test_training.make_dataset`. Every step goes through ``segfuse.cli.main``,
as a user would run it; the checks are on what lands on disk. A last test runs
``configs/debug.yaml`` on the bundled sample (no shared data needed).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from test_training import make_dataset

from segfuse.cli import main

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

TINY = [
    "experiment.name=e2e",
    "experiment.seed=3",
    "experiment.deterministic=true",
    "data.val_fraction=0.4",
    "data.aux.flair.features=4",
    "data.aux.flair.dropout=0.3",  # modality dropout: ablate needs it
    "model.encoder_depth=3",
    "model.widen_factor=0.25",
    "model.stem_kernel=3",
    "model.norm=instance",
    "model.decoder_channels=[16, 8, 8]",
    "model.deep_supervision=false",
    "training.patch_size=[16, 16, 16]",
    "training.batch_size=2",
    "training.iterations=4",
    "training.iterations_per_epoch=2",
    "training.warmup_iterations=0",
    "training.lr=0.01",
    "training.num_threads=1",
    "training.device=cpu",
    "inference.roi_size=[16, 16, 16]",
    "inference.overlap=0.25",
]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Path]:
    """Run plan → train → predict → evaluate → ablate once; the tests below read the outputs."""
    root = tmp_path_factory.mktemp("e2e")
    manifest = make_dataset(root / "data")
    # case0's primary carries distinct qform/sform codes (scanner, MNI) that predict must keep
    t1 = root / "data" / "case0" / "t1.nii.gz"
    img = nib.load(t1)
    img = nib.Nifti1Image(np.asarray(img.dataobj), None, img.header)
    img.set_qform(img.header.get_best_affine(), code=1)
    img.set_sform(img.header.get_best_affine(), code=4)
    nib.save(img, t1)

    plan = root / "plan.yaml"
    assert main(["plan", str(manifest), "--out", str(plan), "--no-progress"]) == 0
    assert plan.is_file()
    planned = yaml.safe_load(plan.read_text())
    assert planned["data"]["aux"]["flair"]["scale"] == [2, 2, 4]

    runs = root / "runs"
    assert main(["train", "--config", str(plan), f"experiment.output_dir={runs}", *TINY, "--no-progress"]) == 0
    run = runs / "e2e"

    preds = root / "preds"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(run / "checkpoint_best.pt"),
                "--dataset",
                str(manifest),
                "--out",
                str(preds),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )

    pairs = root / "pairs.csv"
    rows = ["case_id,pred,ref"] + [
        f"{c},{preds / f'{c}.nii.gz'},{root / 'data' / c / 'seg.nii.gz'}" for c in _case_ids(manifest)
    ]
    pairs.write_text("\n".join(rows) + "\n")
    evaluation = root / "eval"
    assert main(["evaluate", "--pred", str(pairs), "--out", str(evaluation)]) == 0

    ablation = root / "ablate"
    assert (
        main(
            [
                "ablate",
                "--checkpoint",
                str(run / "checkpoint_last.pt"),
                "--dataset",
                str(manifest),
                "--out",
                str(ablation),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    return {"root": root, "manifest": manifest, "run": run, "preds": preds, "eval": evaluation, "ablate": ablation}


def _case_ids(manifest: Path) -> list[str]:
    return [c["case_id"] for c in yaml.safe_load(manifest.read_text())["cases"]]


def test_train_leaves_a_complete_run_folder(pipeline):
    run = pipeline["run"]
    for name in ("config.yaml", "metrics.csv", "training_curve.png", "checkpoint_best.pt", "checkpoint_last.pt"):
        assert (run / name).is_file(), name
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["training"]["iterations"] == 4
    assert saved["data"]["aux"]["flair"]["dropout"] == 0.3


def test_predicted_masks_lie_on_the_exact_input_grid(pipeline):
    data = pipeline["manifest"].parent
    for case_id in _case_ids(pipeline["manifest"]):
        pred = nib.load(pipeline["preds"] / f"{case_id}.nii.gz")
        src = nib.load(data / case_id / "t1.nii.gz")
        assert pred.get_data_dtype() == np.uint8, case_id
        assert pred.shape == src.shape, case_id
        np.testing.assert_allclose(pred.affine, src.affine, atol=1e-6)
        assert int(pred.header["qform_code"]) == int(src.header["qform_code"]), case_id
        assert int(pred.header["sform_code"]) == int(src.header["sform_code"]), case_id
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}, case_id
    case0 = nib.load(pipeline["preds"] / "case0.nii.gz").header
    assert (int(case0["qform_code"]), int(case0["sform_code"])) == (1, 4)


def test_summary_mean_dice_is_the_mean_of_per_case_dice(pipeline):
    evaluation = pipeline["eval"]
    for name in ("per_case.csv", "summary.json", "dice_boxplot.png"):
        assert (evaluation / name).is_file(), name
    summary = json.loads((evaluation / "summary.json").read_text())
    assert summary["n_cases"] == 5
    mean = summary["mean_dice"]
    assert isinstance(mean, float) and 0.0 <= mean <= 1.0
    with open(evaluation / "per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    dice = [float(r["dice"]) for r in rows if not math.isnan(float(r["dice"]))]
    assert {r["case_id"] for r in rows} == set(_case_ids(pipeline["manifest"]))
    # one foreground class: its mean Dice over the cases is the summary's mean
    assert {r["label"] for r in rows} == {"1"}
    assert mean == pytest.approx(float(np.mean(dice)), abs=1e-9)


def test_ablate_writes_the_table_of_variants(pipeline):
    ablation = pipeline["ablate"]
    assert (ablation / "ablation.csv").is_file() and (ablation / "ablation.json").is_file()
    with open(ablation / "ablation.csv", newline="") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["all", "without_flair", "none"]
    for row in rows.values():
        assert 0.0 <= float(row["mean_dice"]) <= 1.0
    payload = json.loads((ablation / "ablation.json").read_text())
    assert [v["variant"] for v in payload["variants"]] == list(rows)
    assert payload["variants"][0]["mean_dice"] == pytest.approx(float(rows["all"]["mean_dice"]))


def test_resume_of_a_finished_run_exits_0_and_changes_nothing(pipeline):
    run = pipeline["run"]
    kept = ("checkpoint_last.pt", "checkpoint_best.pt", "metrics.csv")
    before = {name: _sha(run / name) for name in kept}
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert {name: _sha(run / name) for name in kept} == before


def test_debug_config_smoke(tmp_path):
    out = tmp_path / "runs"
    assert (
        main(
            ["train", "--config", str(REPO / "configs" / "debug.yaml"), f"experiment.output_dir={out}", "--no-progress"]
        )
        == 0
    )
    assert (out / "debug" / "checkpoint_last.pt").is_file()
    assert len((out / "debug" / "metrics.csv").read_text().splitlines()) == 1 + 2  # two epochs of two
