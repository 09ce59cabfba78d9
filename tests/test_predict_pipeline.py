"""predict --dataset at scale: test-set layouts, the model's names for a manifest's columns, the background pipeline.

The model is trained (two iterations) on a tiny decathlon-layout dataset whose only
modality is "MRI", as a model trained on the MSD hippocampus folder is: its primary
is called ``mri``, which no test manifest or images folder spells out.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import segfuse.io.image
from segfuse.cli import main
from segfuse.config import config_from_dict
from segfuse.data.cases import Case, ImageRef
from segfuse.data.prediction_inputs import read_for_prediction
from segfuse.factory import build_model
from segfuse.inference.pipeline import RUNNING_CASES, run_pipelined
from segfuse.inference.predict import MANIFEST_NAME, predict
from segfuse.io.checkpoint import load_checkpoint, save_checkpoint
from segfuse.io.errors import SegfuseInputError
from segfuse.training.loop import train

SHAPE = (20, 18, 12)
AFFINE = np.diag([-1.0, -1.0, 1.5, 1.0])  # LPS, anisotropic


def _image(seed: int, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    centre = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    label = np.linalg.norm(grid - centre[:, None, None, None], axis=0) < 4
    image = 100 + 60 * label + rng.normal(0, 8, shape)
    return image.astype(np.float32), label.astype(np.uint8)


def _save(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, AFFINE), path)
    return path


def _msd(root: Path, n_train: int = 4, n_test: int = 2, listed: int | None = None) -> Path:
    """A decathlon folder like Task04: modality {"0": "MRI"}, imagesTs with a ``test`` list of ``listed`` files."""
    training, test = [], []
    for i in range(n_train):
        image, label = _image(i)
        _save(image, root / "imagesTr" / f"hip_{i:03d}.nii.gz")
        _save(label, root / "labelsTr" / f"hip_{i:03d}.nii.gz")
        training.append({"image": f"./imagesTr/hip_{i:03d}.nii.gz", "label": f"./labelsTr/hip_{i:03d}.nii.gz"})
    for i in range(100, 100 + n_test):
        _save(_image(i)[0], root / "imagesTs" / f"hip_{i:03d}.nii.gz")
        test.append(f"./imagesTs/hip_{i:03d}.nii.gz")
    meta = {
        "name": "Tiny",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "hippocampus"},
        "training": training,
        "test": test[: len(test) if listed is None else listed],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def msd(tmp_path_factory) -> Path:
    return _msd(tmp_path_factory.mktemp("data") / "Task99_Tiny")


@pytest.fixture(scope="module")
def ckpt(msd: Path, tmp_path_factory) -> Path:
    """A model trained (briefly) on the decathlon folder: its primary is ``mri``."""
    cfg = config_from_dict(
        {
            "experiment": {"name": "tiny", "output_dir": str(tmp_path_factory.mktemp("runs")), "seed": 0},
            "data": {"dataset": str(msd), "target_spacing": None, "val_fraction": 0.0},
            "model": {"encoder_depth": 3, "widen_factor": 0.25, "stem_kernel": 3, "decoder_channels": [16, 8, 8]},
            "training": {"patch_size": [16, 16, 8], "batch_size": 1, "iterations": 2, "iterations_per_epoch": 2,
                         "num_threads": 1, "amp": False},
            "inference": {"roi_size": [16, 16, 8], "overlap": 0.25},
        }
    )
    return train(cfg, progress=False).run_dir / "checkpoint_last.pt"


def _labels(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.nii.gz"))}


# ------------------------------------------------------------------ inputs


def test_training_on_a_decathlon_folder_records_its_modalities(ckpt: Path) -> None:
    data = load_checkpoint(ckpt)["config"]["data"]
    assert data["primary"] == "mri" and data["modalities"] == ["mri"]


def test_csv_image_column_is_the_models_primary(ckpt: Path, msd: Path, tmp_path: Path) -> None:
    rows = ["case_id,image"] + [f"t{i},{p}" for i, p in enumerate(sorted((msd / "imagesTs").iterdir()))]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    result = predict(ckpt, tmp_path / "list.csv", tmp_path / "out", progress=False)
    assert result.ok and [r.case_id for r in result.succeeded] == ["t0", "t1"]
    seg = nib.load(tmp_path / "out" / "t0.nii.gz")
    assert seg.shape == SHAPE
    np.testing.assert_allclose(seg.affine, AFFINE)


def test_manifest_columns_that_match_no_model_input_are_named(ckpt: Path, msd: Path, tmp_path: Path, capsys) -> None:
    image = sorted((msd / "imagesTs").iterdir())[0]
    (tmp_path / "aux.csv").write_text(f"case_id,image,pet\na,{image},{image}\n")
    with pytest.raises(SegfuseInputError, match=r"scan columns \['image', 'pet'\]: \['pet'\] match no input.*"
                                                 r"primary 'mri' and no auxiliary"):
        predict(ckpt, tmp_path / "aux.csv", tmp_path / "out", progress=False)
    (tmp_path / "noprimary.csv").write_text(f"case_id,mri_scan\na,{image}\n")
    code = main(["predict", "--checkpoint", str(ckpt), "--dataset", str(tmp_path / "noprimary.csv"),
                 "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "['case_id', 'mri_scan']" in err and "this model takes primary 'mri'" in err and "'image'" in err


def test_msd_imagests_reads_the_test_list(ckpt: Path, tmp_path: Path) -> None:
    root = _msd(tmp_path / "Task98", n_train=1, n_test=3, listed=2)
    result = predict(ckpt, root / "imagesTs", tmp_path / "out", progress=False)
    assert result.ok and [r.case_id for r in result.succeeded] == ["hip_100", "hip_101"]  # not hip_102
    # Without a test list, every image in the folder.
    meta = json.loads((root / "dataset.json").read_text())
    del meta["test"]
    (root / "dataset.json").write_text(json.dumps(meta))
    cases = read_for_prediction(root / "imagesTs", primary="mri").cases
    assert [c.case_id for c in cases] == ["hip_100", "hip_101", "hip_102"]


def test_nnunet_imagests_and_a_plain_folder_give_the_msd_predictions(ckpt: Path, msd: Path, tmp_path: Path) -> None:
    reference = predict(ckpt, msd / "imagesTs", tmp_path / "msd", progress=False)
    assert reference.ok and len(reference.succeeded) == 2

    nnunet = tmp_path / "Dataset099_Tiny"
    for path in sorted((msd / "imagesTs").iterdir()):
        _save(np.asarray(nib.load(path).dataobj), nnunet / "imagesTs" / path.name.replace(".nii.gz", "_0000.nii.gz"))
    (nnunet / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "hippocampus": 1},
                    "numTraining": 0, "file_ending": ".nii.gz"})
    )
    result = predict(ckpt, nnunet / "imagesTs", tmp_path / "nnunet", progress=False)
    assert result.ok
    assert _labels(tmp_path / "nnunet") == _labels(tmp_path / "msd")

    plain = tmp_path / "plain"
    plain.mkdir()
    for path in sorted((msd / "imagesTs").iterdir()):
        (plain / path.name).write_bytes(path.read_bytes())
    (plain / "notes.txt").write_text("not an image")
    code = main(["predict", "--checkpoint", str(ckpt), "--dataset", str(plain), "--out", str(tmp_path / "plain_out"),
                 "--device", "cpu", "--no-progress"])
    assert code == 0
    assert _labels(tmp_path / "plain_out") == _labels(tmp_path / "msd")


def test_plain_folder_channel_files_follow_the_training_channel_order(tmp_path: Path) -> None:
    for case in ("a", "b"):
        for channel in (0, 1):
            _save(_image(channel)[0], tmp_path / "in" / f"{case}_{channel:04d}.nii.gz")
    # Trained on a dataset declaring FLAIR as channel 0 and T1 as channel 1, with T1 the primary.
    ds = read_for_prediction(tmp_path / "in", primary="t1", aux=["flair"], channel_names=["flair", "t1"])
    assert [c.case_id for c in ds.cases] == ["a", "b"]
    assert ds.cases[0].primary.path.name == "a_0001.nii.gz"
    assert ds.cases[0].aux["flair"].path.name == "a_0000.nii.gz"
    # An older checkpoint without the order: channel 0 is the primary, then the auxiliaries.
    ds = read_for_prediction(tmp_path / "in", primary="t1", aux=["flair"])
    assert ds.cases[1].primary.path.name == "b_0000.nii.gz" and ds.cases[1].aux["flair"].path.name == "b_0001.nii.gz"
    # A channel beyond the model's: named in the error.
    _save(_image(2)[0], tmp_path / "in" / "a_0002.nii.gz")
    with pytest.raises(SegfuseInputError, match=r"beyond the model's 2 channels \(\['flair', 't1'\]\): a_0002"):
        read_for_prediction(tmp_path / "in", primary="t1", aux=["flair"], channel_names=["flair", "t1"])


def test_numbered_single_files_are_cases_not_channels(tmp_path: Path) -> None:
    for i in range(4):
        _save(_image(i)[0], tmp_path / "in" / f"patient_{i:04d}.nii.gz")
    ds = read_for_prediction(tmp_path / "in", primary="mri", channel_names=["mri"])
    assert [c.case_id for c in ds.cases] == [f"patient_{i:04d}" for i in range(4)]
    # A model with an auxiliary it was trained to do without: absent from single files.
    for name in ("x", "y"):
        _save(_image(0)[0], tmp_path / "single" / f"{name}.nii.gz")
    ds = read_for_prediction(tmp_path / "single", primary="mri", aux=["flair"], channel_names=["mri", "flair"])
    assert [c.case_id for c in ds.cases] == ["x", "y"]
    assert ds.aux_names == [] and all(c.aux == {} for c in ds.cases)


# ------------------------------------------------------------------ the background pipeline


@pytest.fixture(scope="module")
def many(msd: Path, tmp_path_factory) -> Path:
    """Five cases, two of them at another shape, in a CSV manifest."""
    folder = tmp_path_factory.mktemp("many")
    rows = ["case_id,image"]
    for i in range(5):
        shape = (24, 14, 10) if i in (1, 3) else SHAPE
        rows.append(f"c{i},{_save(_image(200 + i, shape)[0], folder / f'c{i}.nii.gz')}")
    (folder / "cases.csv").write_text("\n".join(rows) + "\n")
    return folder / "cases.csv"


def _outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
            and p.name != MANIFEST_NAME}


def _entries(out: Path) -> dict:
    cases = json.loads((out / MANIFEST_NAME).read_text())["cases"]
    return {case: {k: v for k, v in entry.items() if k != "seconds"} for case, entry in cases.items()}


@pytest.mark.parametrize(("workers", "kind"), [(2, "thread"), (1, "process")])
def test_background_pipeline_writes_exactly_what_the_sequential_path_writes(
    ckpt: Path, many: Path, tmp_path: Path, workers: int, kind: str
) -> None:
    options = dict(save_probabilities=True, qc=True, progress=False)
    sequential = predict(ckpt, many, tmp_path / "seq", workers=0, **options)
    background = predict(ckpt, many, tmp_path / "bg", workers=workers, worker_kind=kind, **options)
    assert sequential.ok and background.ok
    assert [r.case_id for r in background.succeeded] == [f"c{i}" for i in range(5)]
    seq, bg = _outputs(tmp_path / "seq"), _outputs(tmp_path / "bg")
    assert len(seq) == 15 and seq.keys() == bg.keys()
    for name in seq:
        if name.endswith(".nii.gz"):
            assert seq[name] == bg[name], name  # labels and probabilities, byte for byte
    assert _entries(tmp_path / "seq") == _entries(tmp_path / "bg")  # the same SHA-256 of every output
    assert list(json.loads((tmp_path / "bg" / MANIFEST_NAME).read_text())["cases"]) == [f"c{i}" for i in range(5)]


def test_a_failing_case_mid_run_is_reported_and_the_others_finish(
    ckpt: Path, many: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    text = many.read_text()
    for line in text.splitlines()[1:]:
        case, path = line.split(",")
        (folder / Path(path).name).write_bytes(Path(path).read_bytes())
    (folder / "c1.nii.gz").write_bytes(b"\x1f\x8b not really a gzip stream")  # fails while read ahead
    real_save = nib.save

    def failing_save(image, filename):  # c3's probability map: the disk "fails" mid-write
        if Path(filename).parent.name == "probabilities" and Path(filename).name.endswith("-c3.nii.gz"):
            Path(filename).write_bytes(b"\x1f\x8bpartial")
            raise OSError("No space left on device")
        return real_save(image, filename)

    monkeypatch.setattr(segfuse.io.image.nib, "save", failing_save)
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR):
        result = predict(ckpt, folder, out, save_probabilities=True, progress=False, workers=2)
    assert sorted(result.failed) == ["c1", "c3"]
    assert "c1.nii.gz" in result.failed["c1"] and "No space left" in result.failed["c3"]
    assert "case c1 failed" in caplog.text
    assert sorted(r.case_id for r in result.succeeded) == ["c0", "c2", "c4"]
    for case in ("c1", "c3"):  # all or nothing
        assert not (out / f"{case}.nii.gz").exists() and not (out / "probabilities" / f"{case}.nii.gz").exists()
    assert [p.name for p in out.rglob(".tmp-*")] == []
    assert sorted(_entries(out)) == ["c0", "c2", "c4"]


def test_resume_after_a_background_run(ckpt: Path, many: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert predict(ckpt, many, out, progress=False, workers=2).ok
    before = _outputs(out)
    tampered = out / "c2.nii.gz"
    img = nib.load(tampered)
    edited = np.asarray(img.dataobj).copy()
    edited[0, 0, 0] = 1 - edited[0, 0, 0]
    nib.save(nib.Nifti1Image(edited, img.affine, img.header), tampered)
    again = predict(ckpt, many, out, resume=True, progress=False, workers=2)
    assert [r.case_id for r in again.succeeded] == ["c2"] and len(again.skipped) == 4
    assert _outputs(out) == before


def test_pipeline_bounds_read_ahead_and_runs_one_case_at_a_time_on_the_network() -> None:
    cases = [Case(f"c{i}", ImageRef(Path(f"c{i}.nii.gz"))) for i in range(12)]
    state = {"held": 0, "max_held": 0, "on_network": 0, "max_on_network": 0, "read_beside_network": 0}
    guard = threading.Lock()

    def change(key: str, by: int) -> None:
        with guard:
            state[key] += by
            state["max_" + key] = max(state["max_" + key], state[key])

    def read(case: Case) -> str:
        change("held", 1)  # a prepared case exists from here until its run ends
        time.sleep(0.002)
        state["read_beside_network"] += state["on_network"]
        if case.case_id == "c4":
            raise ValueError("unreadable c4")
        return case.case_id.upper()

    def run(case: Case, prepare, network_lock) -> str:
        try:
            prepared = prepare(case)
            with network_lock:
                change("on_network", 1)
                time.sleep(0.01)
                change("on_network", -1)
            time.sleep(0.005)  # writing
            return prepared
        finally:
            change("held", -1)

    outcomes = list(run_pipelined(cases, read, run, workers=2))
    assert [c.case_id for c, _ in outcomes] == [c.case_id for c in cases]
    assert [o for _, o in outcomes if not isinstance(o, Exception)] == [f"C{i}" for i in range(12) if i != 4]
    assert str(outcomes[4][1]) == "unreadable c4"
    assert state["max_on_network"] == 1
    assert 2 < state["max_held"] <= 2 + RUNNING_CASES  # read ahead, but never more than workers + 2 cases
    assert state["read_beside_network"] > 0  # cases were read while another was on the network
    with pytest.raises(ValueError, match="workers must be >= 1"):
        next(run_pipelined(cases, read, run, workers=0))


def test_cli_workers_option(ckpt: Path, many: Path, tmp_path: Path, capsys) -> None:
    args = ["predict", "--checkpoint", str(ckpt), "--dataset", str(many), "--device", "cpu", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a"), "--workers", "0"]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--workers", "2"]) == 0
    assert _labels(tmp_path / "a") == _labels(tmp_path / "b")
    assert main([*args, "--out", str(tmp_path / "c"), "--workers", "-1"]) == 2
    assert "--workers must be >= 0, got -1" in capsys.readouterr().err


def test_a_saved_random_model_with_an_auxiliary_reads_nnunet_channels(tmp_path: Path) -> None:
    """Two channels, FLAIR first: the model's primary T1 is read from ``_0001``."""
    cfg = config_from_dict(
        {
            "data": {"primary": "t1", "modalities": ["flair", "t1"], "aux": {"flair": {"scale": [1, 1, 1]}},
                     "labels": {0: "background", 1: "lesion"}},
            "model": {"encoder_depth": 3, "widen_factor": 0.25, "stem_kernel": 3, "decoder_channels": [16, 8, 8]},
            "training": {"patch_size": [16, 16, 8]},
        }
    )
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        {"model": build_model(cfg).state_dict(), "config": cfg.to_dict(), "in_channels": 1}, tmp_path / "m.pt"
    )
    for case in ("a", "b"):
        _save(_image(1)[0] * 0.5, tmp_path / "in" / f"{case}_0000.nii.gz")
        _save(_image(2, (10, 9, 6))[0], tmp_path / "in" / f"{case}_0001.nii.gz")  # a smaller grid: the T1
    result = predict(ckpt, tmp_path / "in", tmp_path / "out", progress=False)
    assert result.ok, result.summary()
    assert nib.load(tmp_path / "out" / "a.nii.gz").shape == (10, 9, 6)  # written on the primary's (T1) grid
