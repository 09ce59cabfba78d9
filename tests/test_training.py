"""segfuse train: run folder, checkpoints, bit-exact resume, signals, batch workers, 2-process gloo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import make_dataset, tiny_config

from segfuse.auxiliary import lcm_of_scales
from segfuse.config import config_from_dict, load_config
from segfuse.io.checkpoint import load_checkpoint
from segfuse.io.errors import SegfuseInputError
from segfuse.training import batches, loop
from segfuse.training.loop import train
from segfuse.training.prefetch import iteration_rng

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


def test_training_writes_a_complete_run_folder(manifest, tmp_path):
    cfg = config_from_dict(tiny_config(manifest, tmp_path))
    result = train(cfg, progress=False)
    run = result.run_dir
    for name in ("config.yaml", "metrics.csv", "training_curve.png", "checkpoint_best.pt", "checkpoint_last.pt"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,iteration,lr,train_loss")
    assert len(rows) == 1 + 3  # three epochs of two iterations
    state = load_checkpoint(run / "checkpoint_last.pt")  # weights_only=True inside
    assert state["iteration"] == 6
    assert state["config"]["data"]["labels"] == {0: "background", 1: "lesion"}
    saved = load_config(run / "config.yaml")
    assert saved.to_dict() == state["config"]
    # a second run into the same folder refuses instead of overwriting
    with pytest.raises(ValueError, match=r"already exists.*--resume"):
        train(cfg, progress=False)


def test_val_every_zero_holds_cases_out_but_never_validates(manifest, tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(loop, "validate", lambda *a, **k: called.append(1) or {"val_mean_dice": 0.0})
    cfg = config_from_dict(tiny_config(manifest, tmp_path, val_every=0))
    result = train(cfg, progress=False)
    assert called == []
    assert all("val_mean_dice" not in row for row in result.history)
    # the held-out cases are still excluded from training, and best == last weights
    best = load_checkpoint(result.run_dir / "checkpoint_best.pt")["model"]
    last = load_checkpoint(result.run_dir / "checkpoint_last.pt")["model"]
    assert all(torch.equal(best[k], last[k]) for k in last)
    with pytest.raises(Exception, match="val_every"):
        config_from_dict(tiny_config(manifest, tmp_path, val_every=-1))


def test_resume_is_bit_identical_to_an_uninterrupted_run(manifest, tmp_path):
    full = train(config_from_dict(tiny_config(manifest, tmp_path / "a")), progress=False)
    part = train(config_from_dict(tiny_config(manifest, tmp_path / "b")), progress=False, interrupt_at=3)
    assert part.interrupted and part.iteration == 3
    resumed = train(run_dir=part.run_dir, resume=True, progress=False)
    assert resumed.iteration == 6 and not resumed.interrupted
    a = load_checkpoint(full.run_dir / "checkpoint_last.pt")["model"]
    b = load_checkpoint(resumed.run_dir / "checkpoint_last.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["train_loss"] for r in full.history] == [r["train_loss"] for r in resumed.history]


def test_sigterm_saves_a_checkpoint_and_stops_cleanly(manifest, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = batches.build_batch

    def batch_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(batches, "build_batch", batch_then_signal)
    result = train(config_from_dict(tiny_config(manifest, tmp_path)), progress=False)
    assert result.interrupted and result.iteration == 2
    assert load_checkpoint(result.run_dir / "checkpoint_last.pt")["iteration"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


def test_two_process_gloo_training(manifest, tmp_path):
    cfg = tiny_config(manifest, tmp_path, iterations=2)
    config_path = tmp_path / "cfg.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import torch.distributed as dist
        from segfuse.config import load_config
        from segfuse.training.loop import train
        result = train(load_config({str(config_path)!r}), progress=False)
        print("rank", dist.get_rank(), "world", dist.get_world_size(), "iteration", result.iteration)
        dist.destroy_process_group()
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 world 2 iteration 2" in proc.stdout and "rank 1 world 2 iteration 2" in proc.stdout
    state = load_checkpoint(tmp_path / "tiny" / "checkpoint_last.pt")
    assert state["iteration"] == 2 and isinstance(state["rng"], list) and len(state["rng"]) == 2
    # both ranks read one preprocessed store: one folder, each case once, no copy anywhere else
    (store,) = (tmp_path / "preprocessed").iterdir()
    assert sorted(p.name for p in (store / "cases").iterdir()) == [f"case{i}" for i in range(5)]
    arrays = sorted(tmp_path.rglob("primary.npy"))
    assert arrays == [store / "cases" / f"case{i}" / "primary.npy" for i in range(5)]


def test_training_with_workers_is_bit_identical_to_training_without(manifest, tmp_path):
    runs = [train(config_from_dict(tiny_config(manifest, tmp_path / str(n), num_workers=n)), progress=False)
            for n in (0, 3)]
    a, b = (load_checkpoint(r.run_dir / "checkpoint_last.pt")["model"] for r in runs)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["train_loss"] for r in runs[0].history] == [r["train_loss"] for r in runs[1].history]


def test_negative_num_workers_is_a_config_error(manifest, tmp_path):
    with pytest.raises(SegfuseInputError, match=r"training.num_workers.*got -1"):
        config_from_dict(tiny_config(manifest, tmp_path, num_workers=-1))


def test_batches_differ_between_iterations(manifest):
    """The per-iteration generator must not make every iteration draw the same patch."""
    cfg = config_from_dict(tiny_config(manifest, manifest.parent / "unused"))
    train_cases, _, cfg = loop.load_cases(cfg, progress=False)
    scales = {k: tuple(v.scale) for k, v in cfg.data.aux.items()}
    margin = batches.augmentation_margin(cfg, lcm_of_scales(scales))
    padded = [c.padded(scales, cfg.training.patch_size, margin) for c in train_cases]
    x0 = batches.build_batch(padded, cfg, iteration_rng(3, 0, 0), margin, pin=False)[0]
    x1 = batches.build_batch(padded, cfg, iteration_rng(3, 0, 1), margin, pin=False)[0]
    again = batches.build_batch(padded, cfg, iteration_rng(3, 0, 0), margin, pin=False)[0]
    assert torch.equal(x0, again)
    assert not np.allclose(x0.numpy(), x1.numpy())
