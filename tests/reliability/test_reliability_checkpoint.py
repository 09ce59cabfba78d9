"""Checkpoints: damage, pickles, kills while writing and training, mismatched models (issue 15, failure 9)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from reliability_helpers import env, make_checkpoint, manifest, segfuse_cmd, temporaries, wait_for

from segfuse.cli import main
from segfuse.config import config_from_dict
from segfuse.factory import build_model
from segfuse.inference.model import load_model
from segfuse.io.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from segfuse.io.errors import SegfuseInputError
from segfuse.training.loop import train


def _largest_tensor(state: dict) -> tuple[str, torch.Tensor]:
    return max(state["model"].items(), key=lambda kv: kv[1].numel())


# ---------------------------------------------------------------- failure 9: a damaged checkpoint


def test_a_flipped_byte_inside_a_weight_tensor_is_refused_naming_the_file(ckpt: Path, tmp_path: Path,
                                                                         capsys) -> None:
    name, tensor = _largest_tensor(torch.load(ckpt, weights_only=True))
    raw = bytearray(ckpt.read_bytes())
    start = bytes(raw).find(tensor.numpy().tobytes())  # torch stores tensor bytes uncompressed
    assert start > 0
    raw[start + tensor.numel() * tensor.element_size() // 2] ^= 0x10
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(raw))
    # plain torch loads it without complaint, with a different weight:
    assert not torch.equal(torch.load(damaged, weights_only=True)["model"][name], tensor)
    with pytest.raises(SegfuseInputError, match="damaged") as info:
        load_checkpoint(damaged)
    assert str(damaged) in str(info.value) and "weights" in str(info.value)
    image = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((18, 16, 10), np.float32), np.eye(4)), image)
    code = main(["predict", "--checkpoint", str(damaged), "--image", str(image), "--out", str(tmp_path / "s.nii.gz"),
                 "--device", "cpu", "--no-progress"])
    assert code == 2 and str(damaged) in capsys.readouterr().err
    assert not (tmp_path / "s.nii.gz").exists()


def test_a_checkpoint_without_a_hash_still_loads_with_a_warning(ckpt: Path, tmp_path: Path, caplog) -> None:
    old = {k: v for k, v in torch.load(ckpt, weights_only=True).items() if k != "content_sha256"}
    path = tmp_path / "old.pt"
    torch.save(old, path)
    with caplog.at_level(logging.WARNING):
        state = load_checkpoint(path)
    assert state["format"] == CHECKPOINT_FORMAT
    assert any(str(path) in r.getMessage() and "no content hash" in r.getMessage() for r in caplog.records)
    load_model(path)  # usable


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": _Payload(marker), "config": {}}, path)
    with pytest.raises(SegfuseInputError, match="weights_only"):
        load_checkpoint(path)
    assert not marker.exists()


# ---------------------------------------------------------------- killed while writing a checkpoint


_WRITER = textwrap.dedent(
    """
    import sys, torch
    from segfuse.io.checkpoint import save_checkpoint
    path = sys.argv[1]
    save_checkpoint({"model": {"w": torch.ones(4)}, "config": {"version": 1}}, path)
    print("first written", flush=True)
    big = {"w": torch.arange(12_000_000, dtype=torch.float32)}
    while True:
        save_checkpoint({"model": big, "config": {"version": 2}}, path)
    """
)


def test_killed_while_writing_a_checkpoint_keeps_the_previous_one_and_never_loads_the_temporary(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    target = run / "checkpoint_last.pt"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "first written"
        assert wait_for(lambda: any(p.stat().st_size > 0 for p in temporaries(run)), timeout=300)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert temporaries(run)  # the kill left a partial temporary file behind
    state = load_checkpoint(run)  # the folder: only complete, hash-checked files are read
    assert state["path"] == str(target) and state["config"]["version"] in (1, 2)


# ---------------------------------------------------------------- a checkpoint for other classes or auxiliaries


def test_weights_for_other_classes_than_the_config_says_are_a_clear_error(tmp_path: Path) -> None:
    two = config_from_dict({"data": {"labels": {0: "bg", 1: "a"}}, "model": {"encoder_depth": 3,
                            "widen_factor": 0.25, "stem_kernel": 3, "decoder_channels": [16, 8, 8]}})
    net = build_model(two)
    three = two.to_dict()
    three["data"]["labels"] = {0: "bg", 1: "a", 2: "b"}
    path = save_checkpoint({"model": net.state_dict(), "config": three, "in_channels": 1}, tmp_path / "mixed.pt")
    with pytest.raises(SegfuseInputError, match="do not fit") as info:
        load_model(path)
    assert str(path) in str(info.value) and "3 classes" in str(info.value) and "shape mismatch" in str(info.value)


def test_weights_without_the_auxiliary_the_config_names_are_a_clear_error(tmp_path: Path) -> None:
    plain = config_from_dict({"model": {"encoder_depth": 3, "widen_factor": 0.25, "stem_kernel": 3,
                                        "decoder_channels": [16, 8, 8]}, "data": {"labels": {0: "bg", 1: "a"}}})
    with_aux = plain.to_dict()
    with_aux["data"]["aux"] = {"flair": {"scale": [2, 2, 4]}}
    path = save_checkpoint({"model": build_model(plain).state_dict(), "config": with_aux, "in_channels": 1},
                           tmp_path / "aux.pt")
    with pytest.raises(SegfuseInputError, match="missing") as info:
        load_model(path)
    assert "auxiliaries ['flair']" in str(info.value)


def test_a_dataset_with_other_auxiliaries_than_the_model_is_a_clear_error(tmp_path: Path, capsys) -> None:
    ckpt = make_checkpoint(tmp_path / "flair.pt", aux={"flair": {"scale": [2, 2, 2]}})
    cases = manifest(tmp_path / "data", ["a"])
    text = cases.read_text().replace("case_id,primary", "case_id,primary,t2").replace(
        "scan000.nii.gz", "scan000.nii.gz,scans/scan000.nii.gz"
    )
    cases.write_text(text)
    code = main(["predict", "--checkpoint", str(ckpt), "--dataset", str(cases), "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "flair" in err and "t2" in err, err


# ---------------------------------------------------------------- SIGKILL during training, then --resume


def _training_config(root: Path) -> dict:
    rng = np.random.default_rng(0)
    cases = []
    for i in range(4):
        image = rng.normal(100, 5, (16, 16, 16)).astype(np.float32)
        label = np.zeros((16, 16, 16), np.float32)
        label[4 + i : 10 + i, 5:11, 4:12] = 1
        image += 60 * label
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / f"c{i}_t1.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / f"c{i}_seg.nii.gz")
        cases.append({"case_id": f"c{i}", "primary": f"c{i}_t1.nii.gz", "label": f"c{i}_seg.nii.gz"})
    data = root / "cases.yaml"
    data.write_text(yaml.safe_dump({"labels": {0: "background", 1: "lesion"}, "cases": cases}))
    return {
        "experiment": {"name": "killed", "output_dir": str(root / "runs"), "seed": 1, "deterministic": True},
        "data": {"dataset": str(data), "target_spacing": None, "val_fraction": 0.25},
        "model": {"encoder_depth": 3, "widen_factor": 0.25, "stem_kernel": 3, "norm": "instance",
                  "decoder_channels": [16, 8, 8]},
        "training": {"patch_size": [16, 16, 16], "batch_size": 2, "iterations": 12, "iterations_per_epoch": 2,
                     "val_every": 0, "num_threads": 1, "device": "cpu"},
    }


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> dict:
    """A training run SIGKILLed after its first checkpoint and resumed, and the same run uninterrupted."""
    root = tmp_path_factory.mktemp("killed")
    cfg = _training_config(root)
    config_file = root / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    run = root / "runs" / "killed"
    proc = subprocess.Popen(segfuse_cmd("train", "--config", str(config_file), "--no-progress"), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: (run / "checkpoint_last.pt").exists() or proc.poll() is not None, timeout=600)
        proc.send_signal(signal.SIGKILL)  # no handler runs: no checkpoint is saved on the way out
    finally:
        proc.wait()
    killed_at = load_checkpoint(run / "checkpoint_last.pt")["iteration"]
    resumed = train(run_dir=run, resume=True, progress=False)
    reference = train(config_from_dict({**cfg, "experiment": {**cfg["experiment"], "name": "whole"}}),
                      progress=False)
    return {"run": run, "killed_at": killed_at, "resumed": resumed, "reference": reference}


def test_sigkill_during_training_then_resume_is_bit_identical_on_cpu(killed_run: dict) -> None:
    assert 0 < killed_run["killed_at"] < 12  # killed in the middle
    assert killed_run["resumed"].iteration == 12
    a = load_checkpoint(killed_run["run"] / "checkpoint_last.pt")["model"]
    b = load_checkpoint(killed_run["reference"].run_dir / "checkpoint_last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_resume_removes_a_checkpoint_temporary_left_by_a_kill(killed_run: dict) -> None:
    run = killed_run["reference"].run_dir
    leftover = run / ".tmp-999999999-0123456789ab-checkpoint_last.pt"  # no process has this id
    leftover.write_bytes(b"half a checkpoint")
    assert train(run_dir=run, resume=True, progress=False).iteration == 12  # finished: nothing more to do
    assert not temporaries(run)
