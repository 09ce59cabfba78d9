"""Auxiliary ``level_blocks``: a small encoder of the auxiliary's own across the levels it enters."""

from __future__ import annotations

import pytest
import torch
from helpers import predict_config

from segfuse.auxiliary import AuxInput
from segfuse.config import config_from_dict
from segfuse.io.errors import SegfuseInputError
from segfuse.models.net import FusionUNet
from segfuse.models.resize import change_stride


def net(blocks: int, dims: int = 2, levels=None) -> FusionUNet:
    scale = (2, 2) if dims == 2 else (2, 2, 4)
    torch.manual_seed(0)
    return FusionUNet(
        spatial_dims=dims, in_channels=1, num_classes=2, encoder_depth=4, widen_factor=1.0 if dims == 2 else 0.25,
        allow_missing_aux=True,
        aux=[AuxInput("flair", scale=scale, features=8, level_blocks=blocks, levels=levels)],
    ).eval()


def test_blocks_sit_at_every_entered_level_after_the_first():
    model = net(2)
    levels = model.aux_levels["flair"]
    assert levels == [1, 2, 3, 4]
    assert sorted(model.level_blocks["flair"]) == [str(v) for v in levels[1:]]
    convs = [m for m in model.level_blocks["flair"]["3"].modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 and convs[0].in_channels == convs[0].out_channels == 8
    assert "flair" not in net(0).level_blocks


@pytest.mark.parametrize("dims", [2, 3])
def test_shapes_missing_auxiliary_and_rebuild_from_config(dims):
    model = net(1, dims)
    x = torch.randn(2, 1, *((32, 32) if dims == 2 else (32, 32, 16)))
    flair = torch.randn(2, 1, *((16, 16) if dims == 2 else (16, 16, 4)))
    with torch.no_grad():
        out = model(x, aux={"flair": flair})
        assert out.shape == (2, 2, *x.shape[2:])
        assert model(x, aux={"flair": None}).shape == out.shape
        rebuilt = FusionUNet.from_config(model.config).eval()
        rebuilt.load_state_dict(model.state_dict())
        torch.testing.assert_close(rebuilt(x, aux={"flair": flair}), out)


def test_coarse_levels_are_the_chain_not_the_pooled_mapping():
    model = net(1)
    flair = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        per_level = model.auxiliary_features([32, 32], {"flair": flair})
        mapped = model.mappers["flair"](flair)
        # the first level is the mapping brought to its stride, unchanged
        torch.testing.assert_close(per_level[1]["flair"], change_stride(mapped, (2, 2), (2, 2), [16, 16]))
        # the next one is that level's block on the previous level's features pooled ...
        expected = model.level_blocks["flair"]["2"](change_stride(mapped, (2, 2), (4, 4), [8, 8]))
        torch.testing.assert_close(per_level[2]["flair"], expected)
        # ... and the one after starts from those, not from the mapping
        chained = model.level_blocks["flair"]["3"](change_stride(expected, (4, 4), (8, 8), [4, 4]))
        torch.testing.assert_close(per_level[3]["flair"], chained)


def test_config_key_and_its_errors():
    tree = predict_config(mode="2d")
    tree["data"]["aux"]["flair"]["level_blocks"] = 1
    cfg = config_from_dict(tree)
    assert cfg.data.aux["flair"].level_blocks == 1
    tree["data"]["aux"]["flair"]["level_blocks"] = -1
    with pytest.raises(SegfuseInputError, match="level_blocks"):
        config_from_dict(tree)
    assert AuxInput("flair").level_blocks == 0
