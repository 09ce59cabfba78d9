"""The ``segfuse`` command line: version, the evaluate verb, one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import segfuse
from segfuse.cli import VERBS, build_parser, main

SHAPE = (12, 10, 8)
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), AFFINE), path)


def _cube(lo: int, hi: int, value: int = 1) -> np.ndarray:
    arr = np.zeros(SHAPE, np.uint8)
    arr[lo:hi, lo:hi, 2:6] = value
    return arr


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Two cases: case_a predicted exactly, case_b shifted by one voxel."""
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    _save(ref / "case_a.nii.gz", _cube(2, 6))
    _save(pred / "case_a.nii.gz", _cube(2, 6))
    _save(ref / "case_b.nii.gz", _cube(3, 7))
    _save(pred / "case_b.nii.gz", _cube(4, 8))
    return pred, ref


def test_version_via_python_m() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "segfuse", "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"segfuse {segfuse.__version__}"


def test_cli_import_does_not_load_torch() -> None:
    # `segfuse --version` and `--help` stay fast: verbs import their library lazily.
    code = "import sys, segfuse.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_no_verb_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: segfuse" in capsys.readouterr().err


def test_every_verb_has_a_subparser() -> None:
    parser = build_parser()
    for name in VERBS:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([name, "--help"])
        assert exc.value.code == 0


def test_evaluate_writes_reports(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred, ref = folders
    out = tmp_path / "eval"
    rc = main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(out), "--tolerance-mm", "2"])
    assert rc == 0
    for name in ("per_case.csv", "summary.json", "dice_boxplot.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["n_cases"] == 2
    assert summary["tolerance_mm"] == 2.0
    # case_a is exact (Dice 1); case_b is a 4x4x4 cube shifted one voxel on two axes: 3*3*4 / 64 overlap.
    dice_b = 2 * 36 / (64 + 64)
    assert summary["classes"]["label_1"]["metrics"]["dice"]["mean"] == pytest.approx((1.0 + dice_b) / 2)
    printed = capsys.readouterr().out
    assert "label_1" in printed and "mean Dice over classes" in printed


def test_evaluate_missing_prediction_is_one_line_exit_2(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred, ref = folders
    (pred / "case_b.nii.gz").unlink()
    rc = main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(tmp_path / "eval")])
    assert rc == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("segfuse: error: ")
    assert "case_b" in lines[0] and "no prediction" in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "eval").exists()


def test_bad_value_is_one_line_exit_2(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred, ref = folders
    rc = main(
        ["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(tmp_path / "e"), "--tolerance-mm", "-1"]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("segfuse: error: ") and "tolerance_mm" in err and "-1" in err
    assert "\n" not in err


def test_console_script_subprocess_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "segfuse",
            "evaluate",
            "--pred",
            str(tmp_path / "nope"),
            "--ref",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"segfuse: error: {tmp_path / 'nope'}: prediction folder does not exist or is not a folder"
    ]
