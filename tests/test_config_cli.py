"""segfuse config show / check: the resolved config with defaults; errors that name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from segfuse.cli import main
from segfuse.config import Config
from segfuse.sample import sample_data_path

REPO = Path(__file__).resolve().parents[1]
DEBUG = REPO / "configs" / "debug.yaml"


@pytest.fixture
def minimal(tmp_path: Path) -> Path:
    path = tmp_path / "minimal.yaml"
    path.write_text(yaml.safe_dump({"data": {"dataset": str(sample_data_path())}, "training": {"lr": 0.01}}))
    return path


def test_show_prints_every_default_and_the_overrides(minimal: Path, capsys) -> None:
    assert main(["config", "show", str(minimal), "training.iterations=7", "data.fold=2"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    expected = Config().to_dict()
    expected["data"].update(dataset=str(sample_data_path()), fold=2, folds=5)  # --fold's default fold count
    expected["training"].update(lr=0.01, iterations=7)
    assert shown == expected


def test_show_of_a_config_file_is_what_training_would_save(capsys) -> None:
    assert main(["config", "show", str(DEBUG)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["data"]["dataset"] == str((REPO / "segfuse" / "sample" / "hippocampus").resolve())
    assert shown["training"]["iterations"] == 4 and shown["inference"]["blend"] == "gaussian"


def test_check_reads_the_dataset_and_describes_the_split(capsys) -> None:
    assert main(["config", "check", str(DEBUG)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: dataset") and "24 cases" in out and "6 validation cases" in out
    assert main(["config", "check", str(DEBUG), "data.fold=1", "data.folds=4"]) == 0
    assert "4 folds of 6-6 validation cases, this run trains fold 1" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["training.lr_max=1"], "config key training.lr_max is not a known key"),
        (["training.iterations=many"], "config key training.iterations: expected an integer"),
        (["data.primary=ct"], "config key data.primary: .* unknown primary modality 'ct'; available: \\['mri'\\]"),
        (["data.aux={pet: {scale: [2, 2, 2]}}"], "config key data.aux: .* unknown auxiliary modalities \\['pet'\\]"),
        (["data.folds=30", "data.fold=0"], "config key data.folds: 30 folds need at least 30 cases, .* has 24"),
        (["data.fold=5"], "config key data.fold: must be in 0 .. 4"),
        (["data.val_cases=[nope]"], "config key data.val_cases: unknown case ids \\['nope'\\]"),
        (["data.labels={0: bg, 1: a, 2: b, 3: c}"], "config key data.labels: values \\[0, 1, 2, 3\\]"),
        (["data.dataset=/no/such/folder"], "config key data.dataset: "),
    ],
)
def test_check_exits_2_naming_the_key(overrides: list[str], message: str, capsys) -> None:
    assert main(["config", "check", str(DEBUG), *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segfuse: error: ") and err.count("\n") == 1
    assert re.search(message, err), err


def test_config_needs_an_action(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["config", str(DEBUG)])
    assert exc.value.code == 2
