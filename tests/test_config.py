"""Config: YAML + overrides, errors that name the full dotted key, round trip, repo configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segfuse.auxiliary import AuxInput, ModalityNorm
from segfuse.config import Config, load_config, save_config
from segfuse.io.errors import SegfuseInputError

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "experiment": {"name": "t", "seed": 3},
    "data": {
        "dataset": "data/ds",
        "labels": {0: "background", 1: "tumour"},
        "aux": {
            "flair_lowres": {
                "scale": [2, 2, 4],
                "mapper": "conv",
                "dropout": 0.25,
                "norm": {"kind": "ct", "clip": [-100, 300], "mean": 40, "std": 80.5},
            }
        },
    },
    "training": {"patch_size": [32, 32, 32], "lr": 0.002, "augment": {"flip_prob": 0.5}},
}


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    path = tmp_path / "sub" / "run.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(BASE))
    return path


def test_overrides_flat_and_nested(cfg_path):
    cfg = load_config(cfg_path, overrides=["training.lr=0.01", "training.augment.flip_prob=0"])
    assert cfg.training.lr == 0.01
    assert isinstance(cfg.training.lr, float)
    assert cfg.training.augment.flip_prob == 0.0
    assert isinstance(cfg.training.augment.flip_prob, float)  # int 0 accepted for a float key
    # untouched values survive the overrides
    assert cfg.training.patch_size == [32, 32, 32]
    assert cfg.experiment.seed == 3
    assert cfg.training.augment.rotate_prob == pytest.approx(0.2)  # default


def test_override_creates_a_missing_section(tmp_path):
    path = tmp_path / "min.yaml"
    path.write_text("experiment: {name: x}\n")
    cfg = load_config(path, overrides=["inference.overlap=0.25"])
    assert cfg.inference.overlap == 0.25


@pytest.mark.parametrize(
    "override, key",
    [
        ("training.lr_max=0.1", "training.lr_max"),
        ("training.augment.flip_probability=0.1", "training.augment.flip_probability"),
        ("data.aux.flair_lowres.scal=[2,2,2]", "data.aux.flair_lowres.scal"),
        ("trainin.lr=0.1", "trainin"),
    ],
)
def test_unknown_key_error_names_the_full_dotted_key(cfg_path, override, key):
    with pytest.raises(SegfuseInputError) as info:
        load_config(cfg_path, overrides=[override])
    message = str(info.value)
    assert f"{key} is not a known key" in message


@pytest.mark.parametrize(
    "override, key, value",
    [
        ("training.batch_size=two", "training.batch_size", "two"),
        ("training.lr=fast", "training.lr", "fast"),
        ("training.amp=maybe", "training.amp", "maybe"),
        ("training.augment.flip_prob=high", "training.augment.flip_prob", "high"),
        ("data.aux.flair_lowres.scale=[2,x,4]", "data.aux.flair_lowres.scale[1]", "x"),
    ],
)
def test_wrong_type_error_names_key_and_value(cfg_path, override, key, value):
    with pytest.raises(SegfuseInputError) as info:
        load_config(cfg_path, overrides=[override])
    message = str(info.value)
    assert key in message
    assert value in message


def test_aux_entries_are_parsed_into_auxspec(cfg_path):
    cfg = load_config(cfg_path)
    spec = cfg.data.aux["flair_lowres"]
    assert isinstance(spec, AuxInput)
    assert spec.scale == (2, 2, 4)
    assert spec.dropout == 0.25
    assert isinstance(spec.norm, ModalityNorm)
    assert spec.norm.kind == "ct"
    assert spec.norm.clip == (-100.0, 300.0)
    assert spec.norm.mean == 40.0 and isinstance(spec.norm.mean, float)
    assert cfg.data.labels == {0: "background", 1: "tumour"}


def test_save_then_load_round_trip_is_equal(cfg_path, tmp_path):
    cfg = load_config(cfg_path, overrides=["training.lr=0.01"])
    out = save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(out)
    assert isinstance(again, Config)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


def test_relative_dataset_is_resolved_against_the_config_file(cfg_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    cfg = load_config(cfg_path)
    assert Path(cfg.data.dataset) == (cfg_path.parent / "data" / "ds").resolve()


def _run_config_files() -> list[Path]:
    # configs/ also holds dataset manifests (a top-level ``cases`` list); those are not run configs.
    files = []
    for path in sorted((REPO / "configs").glob("*.yaml")):
        tree = yaml.safe_load(path.read_text()) or {}
        if isinstance(tree, dict) and "cases" in tree:
            continue
        files.append(path)
    return files


def test_there_are_run_configs_in_the_repo():
    assert _run_config_files(), "no run config found in configs/*.yaml"


@pytest.mark.parametrize("path", _run_config_files(), ids=lambda p: p.name)
def test_repo_configs_load(path: Path):
    cfg = load_config(path)
    raw = (yaml.safe_load(path.read_text()).get("data") or {}).get("dataset")
    if raw:
        expected = Path(raw) if Path(raw).is_absolute() else (path.parent / raw).resolve()
        assert Path(cfg.data.dataset) == expected


def test_exponent_notation_is_a_number_in_yaml_and_overrides(tmp_path):
    # PyYAML reads 3e-4 (no dot) as a string; a float key must still accept it
    path = tmp_path / "exp.yaml"
    path.write_text("training:\n  lr: 3e-4\n  weight_decay: 1E-5\n")
    cfg = load_config(path, overrides=["training.grad_clip=1e1"])
    assert cfg.training.lr == pytest.approx(3e-4)
    assert cfg.training.weight_decay == pytest.approx(1e-5)
    assert cfg.training.grad_clip == 10.0


@pytest.mark.parametrize("text", ["data:\n", "data: [1, 2]\n"])
def test_a_data_section_that_is_not_a_mapping_is_an_input_error(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SegfuseInputError, match="config key data: expected a mapping"):
        load_config(path)
