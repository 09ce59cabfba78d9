"""Soft ensembles (several checkpoints, averaged probabilities) and predict's window options."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import SHAPE, predict_config, write_case, write_manifest

from segfuse.cli import main
from segfuse.config import config_from_dict
from segfuse.factory import build_model
from segfuse.inference.case import case_from_paths, predict_case
from segfuse.inference.checkpoints import expand_checkpoints
from segfuse.inference.model import Ensemble, load_model
from segfuse.inference.options import set_inference_options
from segfuse.inference.predict import predict
from segfuse.io.checkpoint import save_checkpoint
from segfuse.io.errors import SegfuseInputError
from segfuse.models.net import FusionUNet


def _save(path: Path, seed: int, raw: dict | None = None, **kwargs) -> Path:
    cfg = config_from_dict(raw or predict_config(**kwargs))
    torch.manual_seed(seed)
    net = build_model(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint({"model": net.state_dict(), "config": cfg.to_dict(), "in_channels": 1}, path)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"a": _save(root / "a.pt", 0), "b": _save(root / "b.pt", 1), "2d": _save(root / "m2d.pt", 2, mode="2d")}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    t1, flair = write_case(tmp_path_factory.mktemp("case"), "c0", 0)
    return case_from_paths(t1, {"flair": flair})


def _probabilities(model, case, out: Path, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    result = predict_case(model, case, out, save_probabilities=True, **kwargs)
    labels = np.asarray(nib.load(result.label_path).dataobj)
    return labels, np.asarray(nib.load(result.probabilities_path).dataobj)


def test_an_ensemble_of_a_model_with_itself_equals_the_model(models, case, tmp_path: Path) -> None:
    labels, probs = _probabilities(models["a"], case, tmp_path / "one.nii.gz")
    twice = load_model([models["a"], models["a"]])
    assert isinstance(twice, Ensemble) and len(twice.members) == 2
    labels2, probs2 = _probabilities(twice, case, tmp_path / "two.nii.gz")
    np.testing.assert_array_equal(probs2, probs)  # (p + p) / 2 is p exactly in floating point
    np.testing.assert_array_equal(labels2, labels)
    _, probs3 = _probabilities(load_model([models["a"]] * 3), case, tmp_path / "three.nii.gz")
    np.testing.assert_allclose(probs3, probs, atol=1e-6)


@pytest.mark.slow
def test_an_ensemble_averages_its_members_probabilities(models, case, tmp_path: Path) -> None:
    _, pa = _probabilities(models["a"], case, tmp_path / "a.nii.gz")
    _, pb = _probabilities(models["b"], case, tmp_path / "b.nii.gz")
    _, p2d = _probabilities(models["2d"], case, tmp_path / "2d.nii.gz")
    assert np.abs(pa - pb).max() > 1e-3  # the members differ, so the test can fail
    labels, pe = _probabilities(load_model([models["a"], models["b"]]), case, tmp_path / "ab.nii.gz")
    np.testing.assert_allclose(pe, (pa + pb) / 2, atol=1e-6)
    np.testing.assert_array_equal(labels, pe.argmax(-1))
    # a 2D and a 3D model share preprocessing and labels: they ensemble too
    _, pm = _probabilities(load_model([models["a"], models["2d"]]), case, tmp_path / "mixed.nii.gz")
    np.testing.assert_allclose(pm, (pa + p2d) / 2, atol=1e-6)


def test_checkpoints_that_differ_in_inputs_or_labels_are_refused_by_name(models, tmp_path: Path) -> None:
    raw = predict_config()
    raw["data"]["labels"] = {0: "background", 1: "foreground", 2: "edge"}
    three = _save(tmp_path / "three_classes.pt", 0, raw)
    with pytest.raises(SegfuseInputError, match=rf"{models['a']}.*{three}.*labels \(data\.labels\) differ"):
        load_model([models["a"], three])
    raw = predict_config()
    raw["data"]["aux"]["flair"]["scale"] = [2, 2, 2]
    scale = _save(tmp_path / "scale.pt", 0, raw)
    with pytest.raises(SegfuseInputError, match=r"scale.pt: their auxiliaries and scales"):
        load_model([models["a"], scale])
    raw = predict_config()
    raw["data"]["target_spacing"] = [1.0, 1.0, 1.0]
    spacing = _save(tmp_path / "spacing.pt", 0, raw)
    with pytest.raises(SegfuseInputError, match=r"preprocessing.*differ"):
        load_model([models["a"], spacing])
    assert main(["predict", "--checkpoint", str(models["a"]), "--checkpoint", str(scale), "--image", "x.nii.gz",
                 "--out", str(tmp_path / "o.nii.gz")]) == 2


def test_a_folder_of_fold_runs_means_each_folds_last_weights(models, tmp_path: Path) -> None:
    runs = tmp_path / "runs" / "unet"
    for k in (1, 0):
        (runs / f"fold_{k}").mkdir(parents=True)
        for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
            (runs / f"fold_{k}" / name).write_bytes(models["a"].read_bytes())
    (runs / "fold_x").mkdir()  # not a fold: ignored
    assert expand_checkpoints([runs]) == [runs / f"fold_{k}" / "checkpoint_last.pt" for k in (0, 1)]
    assert expand_checkpoints([runs / "fold_1", models["b"]]) == [runs / "fold_1", models["b"]]
    with pytest.raises(SegfuseInputError, match=r"empty: not a checkpoint file, a run folder .* fold runs"):
        expand_checkpoints([tmp_path / "empty"])
    ensemble = load_model([runs])
    assert [p.name for p in ensemble.checkpoints] == ["checkpoint_last.pt", "checkpoint_last.pt"]


@pytest.mark.slow
def test_cli_ensemble_over_a_dataset_records_every_checkpoint_and_resumes(models, tmp_path: Path, capsys) -> None:
    manifest = write_manifest(tmp_path / "data", ["a", "b"])
    args = ["predict", "--checkpoint", str(models["a"]), "--checkpoint", str(models["b"]), "--dataset", str(manifest),
            "--out", str(tmp_path / "o"), "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    record = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert record["checkpoints"] == [str(models["a"]), str(models["b"])]
    assert record["checkpoint_sha256"] and sorted(record["cases"]) == ["a", "b"]
    assert main([*args, "--resume"]) == 0
    assert "2 skipped" in capsys.readouterr().out
    # another ensemble (other members) does not trust the first one's outputs
    args[4] = str(models["a"])
    assert main([*args, "--resume"]) == 0
    assert "2 predicted, 0 skipped" in capsys.readouterr().out


# ------------------------------------------------------------------ window options


@contextlib.contextmanager
def forward_inputs() -> Iterator[list[tuple[int, ...]]]:
    """Shapes ``(B, C, *roi)`` of every FusionUNet forward call in the block (a real torch hook)."""
    calls: list[tuple[int, ...]] = []

    def hook(module, args):
        if isinstance(module, FusionUNet):
            calls.append(tuple(args[0].shape))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def _cli_predict(ckpt: Path, case, out: Path, *options: str) -> list[tuple[int, ...]]:
    t1, flair = case.primary.path, case.aux["flair"].path
    with forward_inputs() as calls:
        code = main(["predict", "--checkpoint", str(ckpt), "--image", str(t1), "--aux", f"flair={flair}",
                     "--out", str(out), "--device", "cpu", "--no-progress", *options])
    assert code == 0
    return calls


@pytest.mark.slow
def test_roi_overlap_and_batch_size_options_shape_the_windows(models, case, tmp_path: Path) -> None:
    default = _cli_predict(models["a"], case, tmp_path / "d.nii.gz")
    assert {c[2:] for c in default} == {(16, 16, 8)}  # the checkpoint's patch size
    one = _cli_predict(models["a"], case, tmp_path / "1.nii.gz", "--roi", "8", "8", "8", "--overlap", "0",
                       "--batch-size", "1")
    assert {c[2:] for c in one} == {(8, 8, 8)} and {c[0] for c in one} == {1}
    windows = len(one)
    four = _cli_predict(models["a"], case, tmp_path / "4.nii.gz", "--roi", "8", "8", "8", "--overlap", "0",
                        "--batch-size", "4")
    assert max(c[0] for c in four) == 4 and sum(c[0] for c in four) == windows
    assert len(four) == -(-windows // 4)
    half = _cli_predict(models["a"], case, tmp_path / "h.nii.gz", "--roi", "8", "8", "8", "--overlap", "0.5",
                        "--batch-size", "1")
    assert len(half) > windows  # more overlap, more windows


def test_no_mirror_overrides_the_checkpoints_mirror_axes(case, tmp_path: Path) -> None:
    raw = predict_config()
    raw["inference"] = {"mirror_axes": [0, 1, 2]}
    mirrored = _save(tmp_path / "mirrored.pt", 0, raw)
    plain = _cli_predict(mirrored, case, tmp_path / "p.nii.gz", "--no-mirror")
    tta = _cli_predict(mirrored, case, tmp_path / "m.nii.gz")
    assert len(tta) == 8 * len(plain)  # every flip combination of three axes
    with pytest.raises(SystemExit):  # argparse: not both
        main(["predict", "--checkpoint", str(mirrored), "--image", "x", "--out", "y", "--mirror", "--no-mirror"])


def test_bad_window_options_are_one_line_errors(models, case, tmp_path: Path, capsys) -> None:
    t1, flair = case.primary.path, case.aux["flair"].path
    base = ["predict", "--checkpoint", str(models["a"]), "--image", str(t1), "--aux", f"flair={flair}",
            "--out", str(tmp_path / "o.nii.gz")]
    assert main([*base, "--roi", "8", "8", "6"]) == 2
    assert "--roi [8, 8, 6]: every size must be a multiple of [2, 2, 4]" in capsys.readouterr().err
    assert main([*base, "--roi", "8", "8"]) == 2
    assert "is a 3d model and needs 3 positive sizes" in capsys.readouterr().err
    assert main([*base, "--overlap", "1"]) == 2
    assert "--overlap must be in [0, 1)" in capsys.readouterr().err
    assert main([*base, "--batch-size", "0"]) == 2
    assert "--batch-size must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()
    with pytest.raises(SegfuseInputError, match=r"m2d.pt is a 2d model and needs 2"):
        set_inference_options(load_model([models["a"], models["2d"]]), roi=[8, 8, 8])


def test_2d_prediction_shows_a_progress_bar_over_slices(models, case, tmp_path: Path, capsys) -> None:
    predict_case(models["2d"], case, tmp_path / "s.nii.gz", progress=True)
    err = capsys.readouterr().err
    assert "slices" in err and f"{SHAPE[2]}/{SHAPE[2]}" in err
    predict_case(models["2d"], case, tmp_path / "q.nii.gz", progress=False)
    assert "slices" not in capsys.readouterr().err


def test_predict_accepts_an_ensemble_object(models, case, tmp_path: Path) -> None:
    result = predict(load_model([models["a"], models["b"]]), [case], tmp_path / "o", progress=False)
    assert result.ok and (tmp_path / "o" / "c0_t1.nii.gz").is_file()
