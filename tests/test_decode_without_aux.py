"""training.decode_without_aux: every sample decoded with and without its auxiliaries, losses averaged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import make_dataset, tiny_config

from segfuse.config import config_from_dict
from segfuse.factory import build_model
from segfuse.io.checkpoint import load_checkpoint
from segfuse.io.errors import SegfuseInputError
from segfuse.training.loop import train
from segfuse.training.losses import build_loss
from segfuse.training.step import TrainingParts, optimisation_step


def _config(dropout: float, decode_without_aux: bool = True, deep_supervision: bool = False):
    return config_from_dict(
        {
            "data": {"aux": {"flair": {"scale": [2, 2, 4], "features": 4, "dropout": dropout}},
                     "labels": {0: "background", 1: "lesion"}},
            "model": {"encoder_depth": 3, "widen_factor": 0.25, "stem_kernel": 3, "decoder_channels": [16, 8, 8],
                      "deep_supervision": deep_supervision},
            "training": {"patch_size": [16, 16, 8], "decode_without_aux": decode_without_aux},
        }
    )


def test_needs_modality_dropout_and_says_so():
    with pytest.raises(SegfuseInputError, match=r"training.decode_without_aux.*dropout.*'flair': 0.0"):
        _config(dropout=0.0)
    assert _config(dropout=0.3).training.decode_without_aux


class _Recording(torch.nn.Module):
    """The real loss, remembering what it was given."""

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.loss, self.seen = loss, []

    def forward(self, outputs, target):
        self.seen.append((outputs.detach().clone(), target.clone()))
        return self.loss(outputs, target)


def test_the_step_scores_both_halves_and_averages_them():
    cfg = _config(dropout=0.3)
    torch.manual_seed(0)
    net = build_model(cfg, in_channels=1).train()
    loss = _Recording(build_loss(cfg))
    parts = TrainingParts.of(net, torch.optim.SGD(net.parameters(), lr=0.0), loss, torch.device("cpu"),
                             decode_without_aux=True)
    x = torch.randn(3, 1, 16, 16, 8)
    aux = {"flair": torch.randn(3, 1, 8, 8, 2)}
    y = (torch.rand(3, 1, 16, 16, 8) > 0.7).float()
    value = optimisation_step(parts, (x, aux, {"flair": torch.ones(3)}, y), grad_clip=12.0)
    (outputs, target), = loss.seen
    assert outputs.shape == (6, 2, 16, 16, 8)
    assert torch.equal(target, torch.cat([y, y]))
    # the second half is the missing-input path: it differs from the first where the FLAIR is present
    assert (outputs[:3] - outputs[3:]).abs().max() > 1e-6
    # Dice per sample and cross-entropy per voxel are means: the doubled batch's loss is the halves' mean
    halves = (loss.loss(outputs[:3], y) + loss.loss(outputs[3:], y)) / 2
    assert value.item() == pytest.approx(halves.item(), rel=1e-5)


def test_a_model_trained_so_records_it_and_runs_without_its_auxiliary(tmp_path: Path):
    manifest = make_dataset(tmp_path / "data", n_cases=4)
    cfg = config_from_dict(tiny_config(manifest, tmp_path / "runs", iterations=4, decode_without_aux=True))
    result = train(cfg, progress=False)
    state = load_checkpoint(result.run_dir / "checkpoint_last.pt")
    assert state["config"]["training"]["decode_without_aux"] is True
    net = build_model(config_from_dict(state["config"]), in_channels=1).eval()
    net.load_state_dict(state["model"])
    with torch.no_grad():
        out = net(torch.randn(1, 1, 16, 16, 16), aux={"flair": None})
    assert out.shape == (1, 2, 16, 16, 16) and torch.isfinite(out).all()
