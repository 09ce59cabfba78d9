"""segfuse predict: outputs, dtypes, auxiliaries, batch failures, resume, atomic writes, CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import AFFINE, SHAPE, random_checkpoint, write_case, write_manifest

import segfuse.io.image
from segfuse.cli import main
from segfuse.inference.case import case_from_paths, predict_case
from segfuse.inference.predict import MANIFEST_NAME, predict
from segfuse.io.errors import SegfuseInputError


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def ckpt_dropout(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "dropout.pt", dropout=0.3)


def test_labels_probabilities_and_qc_on_the_input_grid(ckpt: Path, tmp_path: Path) -> None:
    t1, flair = write_case(tmp_path, "c0", 0)
    assert nib.load(flair).shape == (9, 8, 3)
    result = predict_case(
        ckpt,
        case_from_paths(t1, {"flair": flair}),
        tmp_path / "seg.nii.gz",
        save_probabilities=True,
        qc_path=tmp_path / "seg.png",
    )
    seg = nib.load(result.label_path)
    assert seg.shape == SHAPE and seg.get_data_dtype() == np.uint8
    np.testing.assert_allclose(seg.affine, AFFINE, atol=1e-6)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1}
    probs = nib.load(tmp_path / "seg_probabilities.nii.gz")
    assert probs.shape == (*SHAPE, 2) and probs.get_data_dtype() == np.float32
    p = np.asarray(probs.dataobj)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(p.argmax(-1), np.asarray(seg.dataobj))
    assert (tmp_path / "seg.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.missing_aux == []
    assert not list(tmp_path.glob(".tmp-*"))


def test_2d_model_with_context_slices_predicts_slice_by_slice(tmp_path: Path) -> None:
    ckpt = random_checkpoint(tmp_path / "m2d.pt", mode="2d", context_slices=1)
    t1, flair = write_case(tmp_path, "c0", 0)
    result = predict_case(ckpt, case_from_paths(t1, {"flair": flair}), tmp_path / "seg.nii.gz", mirror=[0])
    seg = nib.load(result.label_path)
    assert seg.shape == SHAPE
    np.testing.assert_allclose(seg.affine, AFFINE, atol=1e-6)


def test_missing_aux_is_an_error_naming_it_without_dropout(ckpt: Path, tmp_path: Path) -> None:
    t1, _ = write_case(tmp_path, "c0", 0)
    with pytest.raises(SegfuseInputError, match=r"case 'c0_t1': auxiliary 'flair' is missing.*modality dropout"):
        predict_case(ckpt, case_from_paths(t1), tmp_path / "seg.nii.gz")
    assert not (tmp_path / "seg.nii.gz").exists()


def test_missing_aux_is_a_warning_with_dropout(ckpt_dropout: Path, tmp_path: Path, caplog) -> None:
    t1, _ = write_case(tmp_path, "c0", 0)
    with caplog.at_level(logging.WARNING, logger="segfuse.inference.case"):
        result = predict_case(ckpt_dropout, case_from_paths(t1), tmp_path / "seg.nii.gz")
    assert result.missing_aux == ["flair"]
    assert "without auxiliary flair" in caplog.text
    assert nib.load(result.label_path).shape == SHAPE


def test_batch_goes_on_after_a_corrupt_case(ckpt: Path, tmp_path: Path, caplog) -> None:
    manifest = write_manifest(tmp_path, ["a", "b", "c"])
    (tmp_path / "scans" / "b_t1.nii.gz").write_bytes(b"\x1f\x8b not really a gzip stream")
    with caplog.at_level(logging.ERROR):
        result = predict(ckpt, manifest, tmp_path / "out", progress=False)
    assert not result.ok and list(result.failed) == ["b"]
    assert sorted(r.case_id for r in result.succeeded) == ["a", "c"]
    assert (tmp_path / "out" / "a.nii.gz").is_file() and (tmp_path / "out" / "c.nii.gz").is_file()
    assert not (tmp_path / "out" / "b.nii.gz").exists()
    assert "FAILED b:" in result.summary() and "b_t1.nii.gz" in result.summary()
    assert "case b failed" in caplog.text
    recorded = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["cases"]
    assert sorted(recorded) == ["a", "c"]


def test_resume_skips_only_hashed_unchanged_outputs(ckpt: Path, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, ["a", "b", "c"])
    out = tmp_path / "out"
    first = predict(ckpt, manifest, out, progress=False)
    assert first.ok and len(first.succeeded) == 3

    again = predict(ckpt, manifest, out, resume=True, progress=False)
    assert sorted(again.skipped) == ["a", "b", "c"] and not again.succeeded

    tampered = out / "b.nii.gz"
    img = nib.load(tampered)
    edited = np.asarray(img.dataobj).copy()
    edited[0, 0, 0] = 1 - edited[0, 0, 0]
    nib.save(nib.Nifti1Image(edited, img.affine, img.header), tampered)
    third = predict(ckpt, manifest, out, resume=True, progress=False)
    assert [r.case_id for r in third.succeeded] == ["b"] and sorted(third.skipped) == ["a", "c"]
    assert np.asarray(nib.load(tampered).dataobj)[0, 0, 0] != edited[0, 0, 0]  # re-predicted

    # Files on disk without a manifest entry are never trusted.
    (out / MANIFEST_NAME).unlink()
    fourth = predict(ckpt, manifest, out, resume=True, progress=False)
    assert len(fourth.succeeded) == 3 and not fourth.skipped

    # Asking for outputs that were not recorded (probabilities) predicts again.
    fifth = predict(ckpt, manifest, out, resume=True, save_probabilities=True, progress=False)
    assert len(fifth.succeeded) == 3
    assert (out / "probabilities" / "a.nii.gz").is_file()


def test_no_partial_file_after_a_failure_inside_the_write(ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    manifest = write_manifest(tmp_path, ["a", "b"])
    real_save = nib.save

    def failing_save(image, filename):
        # Case a's probability map (written after its label map): half written, then the disk "fails".
        if Path(filename).parent.name == "probabilities" and Path(filename).name.endswith("-a.nii.gz"):
            Path(filename).write_bytes(b"\x1f\x8bpartial")
            raise OSError("No space left on device")
        return real_save(image, filename)

    monkeypatch.setattr(segfuse.io.image.nib, "save", failing_save)
    out = tmp_path / "out"
    result = predict(ckpt, manifest, out, save_probabilities=True, progress=False)
    assert list(result.failed) == ["a"] and "No space left" in result.failed["a"]
    # Case a: neither its label map (written first) nor the half-written probabilities remain.
    assert not (out / "a.nii.gz").exists() and not (out / "probabilities" / "a.nii.gz").exists()
    assert (out / "b.nii.gz").is_file() and (out / "probabilities" / "b.nii.gz").is_file()
    leftovers = [p.name for p in out.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_cli_round_trip(ckpt: Path, ckpt_dropout: Path, tmp_path: Path, capsys) -> None:
    t1, flair = write_case(tmp_path / "one", "c0", 0)
    out = tmp_path / "one" / "seg.nrrd"
    code = main(
        [
            "predict",
            "--checkpoint",
            str(ckpt),
            "--image",
            str(t1),
            "--aux",
            f"flair={flair}",
            "--out",
            str(out),
            "--probabilities",
            "--qc",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert out.is_file() and (tmp_path / "one" / "seg_probabilities.nii.gz").is_file()
    assert (tmp_path / "one" / "seg_qc.png").is_file()

    assert main(["predict", "--checkpoint", str(ckpt), "--image", str(t1), "--out", str(out)]) == 2
    assert "auxiliary 'flair' is missing" in capsys.readouterr().err
    assert (
        main(["predict", "--checkpoint", str(ckpt), "--image", str(t1), "--aux", "pet=x.nii.gz", "--out", str(out)])
        == 2
    )
    assert "pet" in capsys.readouterr().err

    manifest = write_manifest(tmp_path / "many", ["a", "b", "c"])
    (tmp_path / "many" / "scans" / "c_flair.nii.gz").write_bytes(b"garbage")
    code = main(
        ["predict", "--checkpoint", str(ckpt), "--dataset", str(manifest), "--out", str(tmp_path / "o"), "--qc"]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "FAILED c:" in captured.err + captured.out
    assert (tmp_path / "o" / "a.nii.gz").is_file() and (tmp_path / "o" / "qc" / "b.png").is_file()
    code = main(
        [
            "predict",
            "--checkpoint",
            str(ckpt),
            "--dataset",
            str(manifest),
            "--out",
            str(tmp_path / "o"),
            "--qc",
            "--resume",
        ]
    )
    assert code == 1
    assert "2 skipped" in capsys.readouterr().out
