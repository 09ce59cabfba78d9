"""The fusion network: encoder contract, mappers × fusion modes, missing inputs, alignment."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segfuse import AuxInput, FusionUNet
from segfuse.auxiliary import FUSION_MODES, MAPPER_KINDS
from segfuse.factory import load_pretrained
from segfuse.models.convolution import CHANNEL_ALIGNMENT, conv_over_parts, pointwise_conv
from segfuse.models.decoder import UNetDecoder
from segfuse.models.encoders import ResNet18Encoder, adapt_first_conv
from segfuse.models.fusion import AuxAtLevel, LevelFusion

torch.manual_seed(0)

# Small but real: the 3D encoder is MONAI's ResNet18 at a quarter of the width.
TINY_3D = dict(encoder_depth=4, widen_factor=0.25, stem_kernel=3, decoder_channels=(32, 16, 8, 8))
TINY_2D = dict(encoder_depth=4, decoder_channels=(32, 16, 8, 8))


def aux_shape(batch: int, channels: int, spatial: tuple[int, ...], scale: tuple[int, ...]) -> tuple[int, ...]:
    return (batch, channels, *[math.ceil(n / s) for n, s in zip(spatial, scale, strict=True)])


# -- encoder contract -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spatial_dims", "size", "kwargs"),
    [
        (2, (64, 64), {}),
        (2, (67, 71), {}),
        (3, (32, 32, 32), {"widen_factor": 0.25}),
        (3, (35, 41, 29), {"widen_factor": 0.25, "stem_kernel": 3}),
    ],
)
def test_encoder_contract(spatial_dims, size, kwargs):
    enc = ResNet18Encoder(spatial_dims=spatial_dims, in_channels=2, depth=5, **kwargs).eval()
    features = enc(torch.randn(1, 2, *size))
    assert len(features) == len(enc.out_channels) == len(enc.strides) == 6
    for f, channels, stride in zip(features, enc.out_channels, enc.strides, strict=True):
        assert f.shape[1] == channels
        # timm's rule: each spatial size is about ceil(size / reduction)
        for n, got, s in zip(size, f.shape[2:], stride, strict=True):
            assert abs(got - math.ceil(n / s)) <= 1, (size, f.shape, stride)
        assert torch.isfinite(f).all()
    assert enc.strides[-1] == (32,) * spatial_dims


def test_encoder_depth_truncates_stages():
    enc = ResNet18Encoder(spatial_dims=3, in_channels=1, depth=3, widen_factor=0.25)
    features = enc(torch.randn(1, 1, 16, 16, 16))
    assert [f.shape[2] for f in features] == [16, 8, 4, 2]
    assert enc.out_channels == [1, 16, 16, 32]


def test_freeze_encoder_keeps_batchnorm_frozen_in_train_mode():
    net = FusionUNet(spatial_dims=2, in_channels=1, num_classes=2, **TINY_2D)
    net.freeze_encoder()
    net.train()
    bn = net.encoder.stem[1]
    assert not bn.training
    before = bn.running_mean.clone()
    net(torch.randn(2, 1, 32, 32) * 5 + 3)
    assert torch.equal(before, bn.running_mean)
    assert not any(p.requires_grad for p in net.encoder.parameters())
    assert all(p.requires_grad for p in net.decoder.parameters())


def test_pretrained_2d_weights_adapt_first_conv(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(reference.state_dict(), path)
    enc = ResNet18Encoder(spatial_dims=2, in_channels=4, depth=5)
    load_pretrained(enc, path)
    rgb = reference.conv1.weight.detach()
    expected = rgb[:, [0, 1, 2, 0]] * (3 / 4)
    assert torch.allclose(enc.stem[0].weight, expected)
    assert torch.equal(enc.stages[0][0].conv1.weight, reference.layer1[0].conv1.weight)
    one = ResNet18Encoder(spatial_dims=2, in_channels=1, depth=5)
    load_pretrained(one, path)
    assert torch.allclose(one.stem[0].weight, rgb.sum(1, keepdim=True))


def test_pretrained_weights_that_do_not_fit_raise_clear_error(tmp_path):
    from segfuse.io.errors import SegfuseInputError

    enc3d = ResNet18Encoder(spatial_dims=3, in_channels=1, depth=5, widen_factor=0.25)
    path = tmp_path / "wrong.pth"
    state = {f"module.{k}": torch.zeros(3) for k in ["conv1.weight", "bn1.weight"]}
    torch.save(state, path)
    with pytest.raises(SegfuseInputError, match=r"wrong\.pth.*do not fit.*conv1\.weight"):
        load_pretrained(enc3d, path)
    with pytest.raises(SegfuseInputError, match="not found"):
        load_pretrained(enc3d, tmp_path / "absent.pth")


def test_pretrained_3d_medicalnet_style_round_trip(tmp_path):
    source = ResNet18Encoder(spatial_dims=3, in_channels=1, depth=5, widen_factor=0.25)
    state = {f"module.{k}": v for k, v in source._backbone_state_dict().items()}
    path = tmp_path / "medicalnet.pth"
    torch.save({"state_dict": state}, path)
    target = ResNet18Encoder(spatial_dims=3, in_channels=2, depth=5, widen_factor=0.25)
    load_pretrained(target, path)
    assert torch.allclose(target.stem[0].weight, adapt_first_conv(source.stem[0].weight, 2))


# -- every mapper × fusion mode, 2D and 3D ------------------------------------------------


SCALES_3D = [(1, 1, 1), (2, 2, 2), (2, 2, 4)]


@pytest.mark.parametrize("mapper", MAPPER_KINDS)
@pytest.mark.parametrize("fusion", FUSION_MODES)
@pytest.mark.parametrize("scale", SCALES_3D)
def test_3d_every_mapper_fusion_scale(mapper, fusion, scale):
    spatial = (35, 30, 21)
    net = FusionUNet(
        spatial_dims=3, in_channels=1, num_classes=3,
        aux=[AuxInput("flair", scale=scale, mapper=mapper, fusion=fusion, features=4, hidden=8)],
        **TINY_3D,
    )
    x = torch.randn(2, 1, *spatial)
    a = torch.randn(*aux_shape(2, 1, spatial, scale))
    out = net(x, aux={"flair": a})
    assert out.shape == (2, 3, *spatial)
    out.square().mean().backward()
    grads = [p.grad for p in net.mappers["flair"].parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("mapper", MAPPER_KINDS)
@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_2d_every_mapper_fusion(mapper, fusion):
    spatial = (45, 38)
    net = FusionUNet(
        spatial_dims=2, in_channels=1, num_classes=2,
        aux=[AuxInput("pet", scale=(2, 4), mapper=mapper, fusion=fusion, features=4)],
        **TINY_2D,
    )
    out = net(torch.randn(2, 1, *spatial), aux={"pet": torch.randn(*aux_shape(2, 1, spatial, (2, 4)))})
    assert out.shape == (2, 2, *spatial)
    out.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.mappers["pet"].parameters())


def test_two_auxiliaries_at_once_reach_their_mappers():
    spatial = (33, 40, 27)
    net = FusionUNet(
        spatial_dims=3, in_channels=2, num_classes=2,
        aux=[
            AuxInput("flair", scale=(2, 2, 4), mapper="conv", fusion="concat", features=4),
            AuxInput("pet", channels=2, scale=(4, 4, 4), mapper="linear", fusion="gated", features=4),
        ],
        **TINY_3D,
    )
    aux = {
        "flair": torch.randn(*aux_shape(1, 1, spatial, (2, 2, 4))),
        "pet": torch.randn(*aux_shape(1, 2, spatial, (4, 4, 4))),
    }
    out = net(torch.randn(1, 2, *spatial), aux=aux)
    assert out.shape == (1, 2, *spatial)
    out.mean().backward()
    for name in ("flair", "pet"):
        assert all(p.grad is not None for p in net.mappers[name].parameters())


def test_default_entry_levels_follow_the_scale():
    net = FusionUNet(
        spatial_dims=3, in_channels=1, num_classes=2,
        aux=[
            AuxInput("same", scale=(1, 1, 1), features=2),
            AuxInput("iso2", scale=(2, 2, 2), features=2),
            AuxInput("thick", scale=(2, 2, 4), features=2),
            AuxInput("chosen", scale=(2, 2, 2), levels=(8, 16), features=2),
        ],
        **TINY_3D,
    )
    # strides of the tiny encoder: 1, 2, 4, 8, 16
    assert net.aux_levels == {"same": [0, 1, 2, 3, 4], "iso2": [1, 2, 3, 4], "thick": [2, 3, 4], "chosen": [3, 4]}
    with pytest.raises(ValueError, match=r"strides \[3\].*available strides: \[1, 2, 4, 8, 16\]"):
        FusionUNet(spatial_dims=3, in_channels=1, num_classes=2, aux=[AuxInput("x", levels=(3,))], **TINY_3D)


# -- missing and wrong inputs --------------------------------------------------------------


def _flair_net(allow_missing: bool, fusion: str = "concat") -> FusionUNet:
    return FusionUNet(
        spatial_dims=3, in_channels=1, num_classes=2,
        aux=[AuxInput("flair", scale=(2, 2, 4), fusion=fusion, features=4)],
        allow_missing_aux=allow_missing, **TINY_3D,
    )


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_missing_aux_runs_when_allowed_and_equals_zero_mask(fusion):
    net = _flair_net(True, fusion).eval()
    x = torch.randn(2, 1, 32, 32, 16)
    a = torch.randn(2, 1, 16, 16, 4)
    absent = net(x, aux={"flair": None})
    assert absent.shape == (2, 2, 32, 32, 16)
    assert torch.equal(absent, net(x, aux={}))
    # a per-sample dropout mask gives exactly the missing-input path for masked samples
    masked = net(x, aux={"flair": a}, present={"flair": torch.tensor([0.0, 1.0])})
    assert torch.allclose(masked[0], absent[0], atol=1e-5)
    assert torch.allclose(masked[1], net(x, aux={"flair": a})[1], atol=1e-5)
    assert (masked[1] - absent[1]).abs().max() > 1e-6


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_with_absent_decodes_each_sample_with_and_without_its_auxiliary(fusion):
    """``with_absent``: batch 2B, the first half the ordinary output, the second the missing-input path."""
    net = _flair_net(True, fusion).eval()  # eval: normalisation from running statistics, halves independent
    x = torch.randn(2, 1, 32, 32, 16)
    a = torch.randn(2, 1, 16, 16, 4)
    present = {"flair": torch.tensor([1.0, 0.0])}
    both = net(x, aux={"flair": a}, present=present, with_absent=True)
    assert both.shape == (4, 2, 32, 32, 16)
    assert torch.allclose(both[:2], net(x, aux={"flair": a}, present=present), atol=1e-5)
    assert torch.allclose(both[2:], net(x, aux={"flair": None}), atol=1e-5)
    assert (both[0] - both[2]).abs().max() > 1e-6  # the auxiliary matters where present


def test_with_absent_deep_supervision_doubles_every_output():
    net = FusionUNet(
        spatial_dims=3, in_channels=1, num_classes=2, deep_supervision=True,
        aux=[AuxInput("flair", scale=(2, 2, 4), features=4)], allow_missing_aux=True, **TINY_3D,
    ).train()
    outputs = net(torch.randn(2, 1, 32, 32, 16), aux={"flair": torch.randn(2, 1, 16, 16, 4)}, with_absent=True)
    assert [o.shape[0] for o in outputs] == [4, 4, 4]
    assert [tuple(o.shape[2:]) for o in outputs] == [(32, 32, 16), (16, 16, 8), (8, 8, 4)]


def test_missing_aux_error_names_the_input():
    net = _flair_net(False)
    with pytest.raises(ValueError, match="auxiliary input 'flair' is missing"):
        net(torch.randn(1, 1, 32, 32, 16), aux={})
    with pytest.raises(ValueError, match=r"unknown auxiliary inputs \['t2'\]"):
        net(torch.randn(1, 1, 32, 32, 16), aux={"flair": torch.randn(1, 1, 16, 16, 4), "t2": None})


def test_wrongly_sized_aux_states_expected_and_received():
    net = _flair_net(True)
    with pytest.raises(ValueError, match=r"shape \(1, 1, 32, 32, 16\), expected \(1, 1, 16, 16, 4\)"):
        net(torch.randn(1, 1, 32, 32, 16), aux={"flair": torch.randn(1, 1, 32, 32, 16)})


def test_invalid_aux_definitions_raise_named_errors():
    with pytest.raises(ValueError, match="mapper must be one of"):
        AuxInput("a", mapper="transformer")
    with pytest.raises(ValueError, match="fusion must be one of"):
        AuxInput("a", fusion="multiply")
    with pytest.raises(ValueError, match="scale must be positive"):
        AuxInput("a", scale=(0, 1, 1))
    with pytest.raises(ValueError, match=r"scale \(2, 2\) needs 3 entries"):
        FusionUNet(spatial_dims=3, in_channels=1, num_classes=2, aux=[AuxInput("a", scale=(2, 2))])


# -- geometry: the auxiliary lands where its voxels are ----------------------------------


def test_block_average_aux_reaches_its_entry_level_aligned():
    """An auxiliary that is the 2×2×4 block average of the primary, pushed through an
    identity mapper, equals the block average of the primary at the stride-4 level it
    enters, voxel for voxel, and has the encoder feature's shape there."""
    spatial = (64, 48, 32)
    net = FusionUNet(
        spatial_dims=3, in_channels=1, num_classes=2,
        aux=[AuxInput("flair", scale=(2, 2, 4), mapper="linear", features=1)],
        **TINY_3D,
    ).eval()
    with torch.no_grad():
        net.mappers["flair"].weight.fill_(1.0)
        net.mappers["flair"].bias.zero_()
    primary = torch.randn(1, 1, *spatial).cumsum(2).cumsum(3)  # smooth-ish but not constant
    flair = F.avg_pool3d(primary, kernel_size=(2, 2, 4))
    levels = net.auxiliary_features(spatial, {"flair": flair})
    entry = net.aux_levels["flair"][0]
    assert net.encoder.strides[entry] == (4, 4, 4)
    at_entry = levels[entry]["flair"]
    encoder_features = net.encoder(primary)
    assert at_entry.shape[2:] == encoder_features[entry].shape[2:]
    expected = F.avg_pool3d(primary, kernel_size=4)
    assert torch.allclose(at_entry, expected, atol=1e-4)
    # a one-voxel shift of the auxiliary must break the alignment
    shifted = torch.roll(flair, shifts=1, dims=4)
    shifted_at_entry = net.auxiliary_features(spatial, {"flair": shifted})[entry]["flair"]
    assert not torch.allclose(shifted_at_entry, expected, atol=1e-2)
    # deeper levels are block averages too
    deepest = len(net.encoder.strides) - 1
    assert torch.allclose(levels[deepest]["flair"], F.avg_pool3d(primary, kernel_size=16), atol=1e-4)


def test_output_size_equals_input_size_for_odd_sizes():
    net = FusionUNet(spatial_dims=2, in_channels=1, num_classes=4, **TINY_2D).eval()
    for size in [(16, 16), (19, 23), (64 + 3, 64 + 7)]:
        assert net(torch.randn(1, 1, *size)).shape == (1, 4, *size)


# -- rebuild and export --------------------------------------------------------------------


def _rich_net() -> FusionUNet:
    return FusionUNet(
        spatial_dims=3, in_channels=1, num_classes=3,
        aux=[
            AuxInput("flair", scale=(2, 2, 4), mapper="mlp", fusion="gated", features=4, hidden=6),
            AuxInput("t2", scale=(1, 1, 1), mapper="conv", fusion="add", features=4, levels=(2, 4)),
        ],
        allow_missing_aux=True, norm="instance", deep_supervision=True, **TINY_3D,
    )


def test_config_and_state_dict_round_trip_identical_outputs():
    import json

    net = _rich_net().eval()
    config = json.loads(json.dumps(net.config))  # plain data, survives JSON
    clone = FusionUNet.from_config(config).eval()
    assert clone.config == net.config
    clone.load_state_dict(net.state_dict())
    x = torch.randn(1, 1, 40, 36, 20)
    aux = {"flair": torch.randn(1, 1, 20, 18, 5), "t2": torch.randn(1, 1, 40, 36, 20)}
    assert torch.equal(net(x, aux=aux), clone(x, aux=aux))
    with pytest.raises(ValueError, match=r"unknown model config keys \['dropout'\]"):
        FusionUNet.from_config({**config, "dropout": 0.1})


def test_deep_supervision_outputs_in_training_only():
    net = _rich_net().train()
    outs = net(torch.randn(2, 1, 40, 36, 20), aux={})
    assert [tuple(o.shape[2:]) for o in outs] == [(40, 36, 20), (20, 18, 10), (10, 9, 5)]
    assert net.eval()(torch.randn(1, 1, 40, 36, 20), aux={}).shape == (1, 3, 40, 36, 20)


def test_torch_export_matches_eager():
    net = FusionUNet(
        spatial_dims=3, in_channels=1, num_classes=2,
        aux=[AuxInput("flair", scale=(2, 2, 4), mapper="conv", fusion="concat", features=4)],
        **TINY_3D,
    ).eval()
    x = torch.randn(1, 1, 32, 32, 16)
    aux = {"flair": torch.randn(1, 1, 16, 16, 4)}
    exported = torch.export.export(net, (x,), {"aux": aux})
    assert torch.allclose(exported.module()(x, aux=aux), net(x, aux=aux), atol=1e-5)


def test_a_fused_skip_in_parts_decodes_as_the_concatenated_skip():
    """The decoder takes a level in parts; the result must equal decoding the concatenation."""
    torch.manual_seed(0)
    fusion = LevelFusion(8, [AuxAtLevel("flair", 4, "concat"), AuxAtLevel("pet", 3, "concat")], spatial_dims=3)
    skip, deep = torch.randn(2, 8, 8, 8, 4), torch.randn(2, 16, 4, 4, 2)
    aux = {"flair": torch.randn(2, 4, 8, 8, 4), "pet": torch.randn(2, 3, 8, 8, 4)}
    parts = fusion.parts(skip, aux)
    assert len(parts) == 3
    assert torch.equal(torch.cat(parts, dim=1), fusion(skip, aux))
    decoder = UNetDecoder(3, [fusion.out_channels, 16], [6], norm="instance").eval()
    with torch.no_grad():
        torch.testing.assert_close(decoder([parts, deep])[0], decoder([fusion(skip, aux), deep])[0])


@pytest.mark.parametrize(
    "channels",
    [(32,), (32, 1), (16, 16), (16, 8, 8), (32, 16, 1), (3, 5), (1, 32, 16), (48, 3, 16, 2)],
)
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_conv_over_parts_is_the_convolution_of_the_concatenation(channels, spatial_dims, bias):
    """Same output and same gradients as ``conv(cat(parts))``: aligned totals exactly, others to rounding."""
    torch.manual_seed(0)
    conv_cls = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    conv = conv_cls(sum(channels), 5, kernel_size=3, padding=1, bias=bias)
    size = (6, 7, 5)[:spatial_dims]
    parts = [torch.randn(2, c, *size, requires_grad=True) for c in channels]

    expected = conv(torch.cat(parts, dim=1))
    expected_grads = torch.autograd.grad(expected.square().sum(), [*parts, conv.weight])
    got = conv_over_parts(conv, parts)
    got_grads = torch.autograd.grad(got.square().sum(), [*parts, conv.weight])

    if sum(channels) % CHANNEL_ALIGNMENT == 0:
        assert torch.equal(got, expected)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)



@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_pointwise_conv_is_the_1x1_convolution(spatial_dims, bias):
    """Same output and gradients as the layer itself, for any batch and a non-contiguous input."""
    torch.manual_seed(0)
    conv = (nn.Conv3d if spatial_dims == 3 else nn.Conv2d)(16, 3, kernel_size=1, bias=bias)
    x = torch.randn(3, 16, *(9, 6, 5)[:spatial_dims], requires_grad=True)
    x_strided = x.transpose(2, 3)  # a view with other strides
    for inp in (x, x_strided):
        expected = conv(inp)
        expected_grads = torch.autograd.grad(expected.square().sum(), [x, conv.weight])
        got = pointwise_conv(conv, inp)
        got_grads = torch.autograd.grad(got.square().sum(), [x, conv.weight])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        for g, e in zip(got_grads, expected_grads, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "conv",
    [nn.Conv3d(4, 2, kernel_size=3), nn.Conv3d(4, 2, kernel_size=1, stride=2), nn.Conv3d(4, 2, 1, padding=1),
     nn.Conv2d(4, 2, kernel_size=1, groups=2)],
)
def test_pointwise_conv_refuses_other_convolutions(conv):
    with pytest.raises(ValueError, match="pointwise_conv needs"):
        pointwise_conv(conv, torch.zeros(1, 4, 5, 5, 5))
