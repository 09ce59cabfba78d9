"""``segfuse demo``: the BraTS fusion demo's code path on a tiny budget, its table and its pictures.

The full demo trains for 5 minutes; here the same code path runs through the
command line with a two-iteration schedule and a shallow network, on the bundled
BraTS sample (no shared data needed), and the checks are on what it prints and
writes. The table helper and the comparison picture are also tested on their own.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from segfuse.cli import main
from segfuse.data.layouts import read_dataset
from segfuse.demo import DEMO_CONFIG, AuxValueRow, AuxValueTable, aux_value_table
from segfuse.evaluation.ablate import AblationResult
from segfuse.evaluation.evaluate import EvaluationResult
from segfuse.inference.compare_qc import save_comparison_png
from segfuse.io.errors import SegfuseInputError
from segfuse.io.image import read_image, write_image
from segfuse.sample import sample_data_path

TINY = [
    "training.schedule=iterations",
    "training.max_minutes=null",
    "training.iterations=2",
    "training.iterations_per_epoch=2",
    "training.batch_size=4",
    "training.warmup_iterations=0",
    "training.num_threads=1",
    "model.encoder_depth=2",
    "model.decoder_channels=[16, 8]",
    "model.deep_supervision=false",
    "data.aux.flair.features=4",
]
NUMBER = r"([0-9.]+|n/a)"
SIGNED = r"([+-][0-9.]+|n/a)"


def _held_back() -> list[str]:
    return yaml.safe_load(DEMO_CONFIG.read_text())["data"]["val_cases"]


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> tuple[Path, str]:
    """Run ``segfuse demo`` once through the CLI on a tiny budget; return (output folder, stdout)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("demo") / "demo_output"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["demo", "--out", str(out), "--device", "cpu", "--no-progress", *TINY])
    assert code == 0
    return out, buffer.getvalue()


@pytest.mark.slow
def test_demo_prints_dice_with_and_without_the_flair_per_held_back_subject(tiny_demo):
    _, printed = tiny_demo
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("held-back case"))
    assert re.split(r"\s{2,}", lines[header]) == ["held-back case", "Dice with flair", "without flair", "difference"]
    rows = {}
    for line in lines[header + 1 : header + 2 + len(_held_back())]:
        match = re.fullmatch(rf"(\S+)\s+{NUMBER}\s+{NUMBER}\s+{SIGNED}", line)
        assert match, line
        rows[match[1]] = [float("nan") if v == "n/a" else float(v) for v in match.groups()[1:]]
    assert list(rows) == [*sorted(_held_back()), "mean"]
    for case, (with_flair, without, difference) in rows.items():
        if math.isnan(with_flair) or math.isnan(without):
            continue
        assert 0.0 <= with_flair <= 1.0 and 0.0 <= without <= 1.0, case
        assert difference == pytest.approx(with_flair - without, abs=1.5e-3), case
    per_case = np.array([rows[c][:2] for c in _held_back()])
    np.testing.assert_allclose(rows["mean"][:2], np.nanmean(per_case, axis=0), atol=1.5e-3)
    assert re.search(r"segfuse demo: mean Dice [0-9.]+ on 3 held-back cases, \d+ min \d+ s in all", printed)


@pytest.mark.slow
def test_demo_writes_run_ablation_and_pictures(tiny_demo):
    out, printed = tiny_demo
    run = out / "demo_run"
    for name in ("config.yaml", "metrics.csv", "training_curve.png", "checkpoint_last.pt"):
        assert (run / name).is_file(), name
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["aux"]["flair"]["scale"] == [2, 2, 4]
    assert saved["data"]["aux"]["flair"]["dropout"] > 0  # modality dropout: ablate needs it
    assert saved["training"]["iterations"] == 2
    with open(out / "ablation" / "ablation.csv", newline="") as f:
        variants = {row["variant"]: row for row in csv.DictReader(f)}
    assert {"all", "without_flair"} <= set(variants)
    mean_with = float(variants["all"]["mean_dice"])
    assert f"mean Dice {mean_with:.3f} on 3 held-back cases" in printed
    for case in _held_back():
        for variant in ("all", "without_flair"):
            prediction = read_image(out / "ablation" / variant / "predictions" / f"{case}.nii.gz")
            source = read_image(sample_data_path("brats") / "imagesTr" / f"{case}_0000.nii.gz")
            assert prediction.shape == source.shape and np.allclose(prediction.affine, source.affine)
        picture = out / "comparison" / f"{case}.png"
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture


def _evaluation(dice: dict[str, float]) -> EvaluationResult:
    rows = [{"case_id": case, "label": 1, "name": "tumour", "dice": value} for case, value in dice.items()]
    return EvaluationResult(rows=rows, summary={}, out_dir=Path("."))


def test_aux_value_table_pairs_cases_of_the_two_variants():
    ablation = AblationResult(
        rows=[
            {"variant": "all", "dropped": [], "dice": {}, "mean_dice": 0.7, "drop_vs_all": 0.0},
            {"variant": "without_flair", "dropped": ["flair"], "dice": {}, "mean_dice": 0.3, "drop_vs_all": 0.4},
            {"variant": "none", "dropped": ["flair"], "dice": {}, "mean_dice": 0.3, "drop_vs_all": 0.4},
        ],
        classes=["tumour"],
        out_dir=Path("."),
        evaluations={
            "all": _evaluation({"b": 0.6, "a": 0.8, "c": float("nan")}),
            "without_flair": _evaluation({"a": 0.5, "b": 0.1, "c": 0.2}),
        },
    )
    table = aux_value_table(ablation, "flair")
    assert [r.case_id for r in table.rows] == ["a", "b", "c"]
    assert [round(r.difference, 6) for r in table.rows[:2]] == [0.3, 0.5]
    assert table.mean_with == pytest.approx(0.7)  # the NaN case is left out of the mean
    assert table.mean_without == pytest.approx(0.8 / 3)
    text = table.text().splitlines()
    assert text[3].split() == ["c", "n/a", "0.200", "n/a"]
    with pytest.raises(ValueError, match="no variant without 't2'"):
        aux_value_table(ablation, "t2")


def test_aux_value_table_text_has_no_negative_zero():
    text = AuxValueTable("flair", [AuxValueRow("a", 0.5, 0.50001)]).text()
    assert "-0.000" not in text and "+0.000" in text


def test_comparison_picture_shows_scans_and_masks(tmp_path):
    case = read_dataset(sample_data_path("brats")).cases[0]
    one = save_comparison_png(case, {"reference": case.label}, tmp_path / "one.png", aux={"flair": (2, 2, 4)})
    two = save_comparison_png(case, {"reference": case.label, "again": case.label}, tmp_path / "two.png",
                              aux={"flair": (2, 2, 4)})
    from matplotlib.image import imread

    # one more column makes the picture wider by a column's width, same height
    (h1, w1), (h2, w2) = imread(one).shape[:2], imread(two).shape[:2]
    assert h1 == h2 and w2 > w1 * 1.15


def test_comparison_picture_refuses_a_mask_off_the_primary_grid(tmp_path):
    case = read_dataset(sample_data_path("brats")).cases[0]
    label = read_image(case.label)
    label.affine = label.affine.copy()
    label.affine[0, 3] += 2.0  # one voxel off
    moved = write_image(label.array, label, tmp_path / "moved.nii.gz")
    with pytest.raises(SegfuseInputError, match="not on the grid"):
        save_comparison_png(case, {"moved": moved}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_hippocampus_demo_predicts_evaluates_and_writes_qc(tmp_path, capsys):
    tiny = [
        "training.schedule=iterations",
        "training.max_minutes=null",
        "training.iterations=2",
        "training.iterations_per_epoch=2",
        "training.val_every=0",
        "training.warmup_iterations=0",
        "training.num_threads=1",
        "model.encoder_depth=3",
        "model.widen_factor=0.25",
        "model.decoder_channels=[16, 8, 8]",
        "model.deep_supervision=false",
        "training.patch_size=[32, 32, 32]",
        "inference.roi_size=[32, 32, 32]",
        "inference.overlap=0.25",
    ]
    out = tmp_path / "demo_output"
    assert main(["demo", "--hippocampus", "--out", str(out), "--device", "cpu", "--no-progress", *tiny]) == 0
    printed = capsys.readouterr().out
    held_back = sorted(p.name.removesuffix(".nii.gz") for p in (sample_data_path() / "labelsTr").iterdir())[-6:]
    assert sorted(p.name for p in (out / "predictions").glob("*.nii.gz")) == [f"{c}.nii.gz" for c in held_back]
    assert sorted(p.name for p in (out / "predictions" / "qc").glob("*.png")) == [f"{c}.png" for c in held_back]
    summary = yaml.safe_load((out / "evaluation" / "summary.json").read_text())
    assert summary["n_cases"] == 6 and 0.0 <= summary["mean_dice"] <= 1.0
    assert f"mean Dice {summary['mean_dice']:.3f} on 6 held-back cases" in printed
    assert "Dice with" not in printed  # no auxiliary: no with/without table
