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
from segfuse.training import step
from segfuse.training.loop import train
from segfuse.training.losses import build_loss
from segfuse.training.step import TrainingParts, drop_random_subsets, optimisation_step


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


@pytest.mark.parametrize("drops", ["all", "subset"])
def test_a_model_trained_so_records_it_and_runs_without_its_auxiliary(tmp_path: Path, monkeypatch, drops: str):
    draws = []
    def counted(aux, present):
        draws.append(len(aux))
        return drop_random_subsets(aux, present)
    monkeypatch.setattr(step, "drop_random_subsets", counted)
    manifest = make_dataset(tmp_path / "data", n_cases=4)
    cfg = config_from_dict(tiny_config(manifest, tmp_path / "runs", iterations=4, decode_without_aux=True,
                                       decode_without_aux_drops=drops))
    result = train(cfg, progress=False)
    assert len(draws) == (4 if drops == "subset" else 0)  # the loop hands the config's choice to the step
    state = load_checkpoint(result.run_dir / "checkpoint_last.pt")
    assert state["config"]["training"]["decode_without_aux"] is True
    assert state["config"]["training"]["decode_without_aux_drops"] == drops
    net = build_model(config_from_dict(state["config"]), in_channels=1).eval()
    net.load_state_dict(state["model"])
    with torch.no_grad():
        out = net(torch.randn(1, 1, 16, 16, 16), aux={"flair": None})
    assert out.shape == (1, 2, 16, 16, 16) and torch.isfinite(out).all()


def _two_aux_config(drops: str):
    return config_from_dict(
        {
            "data": {"aux": {"flair": {"scale": [2, 2, 4], "features": 4, "dropout": 0.3},
                             "t2": {"scale": [2, 2, 4], "features": 4, "dropout": 0.3}},
                     "labels": {0: "background", 1: "lesion"}},
            "model": {"encoder_depth": 3, "widen_factor": 0.25, "stem_kernel": 3, "decoder_channels": [16, 8, 8]},
            "training": {"patch_size": [16, 16, 8], "decode_without_aux": True, "decode_without_aux_drops": drops},
        }
    )


def test_drops_must_be_all_or_subset_and_says_so():
    with pytest.raises(SegfuseInputError, match=r"training.decode_without_aux_drops.*'all' or 'subset'.*'some'"):
        _two_aux_config("some")
    assert _two_aux_config("subset").training.decode_without_aux_drops == "subset"


def test_random_subsets_are_never_empty_cover_every_choice_and_keep_dropped_ones_absent():
    torch.manual_seed(0)
    aux = {name: torch.randn(3000, 1, 2, 2, 2) for name in ("flair", "t2", "pd")}
    masks = drop_random_subsets(aux, {name: torch.ones(3000) for name in aux})
    stacked = torch.stack([masks[name] for name in aux], dim=1)  # (B, 3): 1 kept, 0 dropped
    assert set(stacked.unique().tolist()) == {0.0, 1.0}
    assert (stacked.sum(dim=1) < 3).all()  # at least one auxiliary dropped in every sample
    choices, counts = stacked.unique(dim=0, return_counts=True)
    assert len(choices) == 7  # 2**3 - 1 non-empty subsets dropped, each drawn
    assert counts.min() > 3000 / 7 * 0.8 and counts.max() < 3000 / 7 * 1.2  # about uniformly
    # an auxiliary modality dropout already removed (present 0, zeros in the batch) stays absent
    present = {"flair": torch.zeros(3000), "t2": torch.ones(3000), "pd": torch.ones(3000)}
    assert drop_random_subsets(aux, present)["flair"].sum() == 0
    # with one auxiliary, a non-empty subset is that auxiliary: every sample drops it
    assert drop_random_subsets({"flair": aux["flair"]}, {})["flair"].sum() == 0


def test_the_subset_step_decodes_each_sample_with_the_drawn_auxiliaries_missing():
    cfg = _two_aux_config("subset")
    torch.manual_seed(0)
    net = build_model(cfg, in_channels=1).eval()  # eval: the halves' normalisation independent
    loss = _Recording(build_loss(cfg))
    parts = TrainingParts.of(net, torch.optim.SGD(net.parameters(), lr=0.0), loss, torch.device("cpu"),
                             decode_without_aux=True, absent_drops="subset")
    x = torch.randn(4, 1, 16, 16, 8)
    aux = {"flair": torch.randn(4, 1, 8, 8, 2), "t2": torch.randn(4, 1, 8, 8, 2)}
    present = {"flair": torch.ones(4), "t2": torch.ones(4)}
    y = (torch.rand(4, 1, 16, 16, 8) > 0.7).float()
    torch.manual_seed(1)
    optimisation_step(parts, (x, aux, present, y), grad_clip=12.0)
    (outputs, _), = loss.seen
    torch.manual_seed(1)
    drawn = drop_random_subsets(aux, present)  # the same draw the step made
    with torch.no_grad():
        expected = net(x, aux=aux, present=drawn)
    assert outputs.shape == (8, 2, 16, 16, 8)
    assert torch.allclose(outputs[4:], expected, atol=1e-5)
    assert torch.allclose(outputs[:4], net(x, aux=aux, present=present).detach(), atol=1e-5)
