"""Pretrained encoder weights: the published files' key layouts load completely, or fail clearly.

The files are built here with exactly the published key names: torchvision's
ImageNet ``resnet18-f37072fd.pth`` (a bare state dict: ``conv1.weight``, ``bn1.*``,
``layer1.0.conv1.weight``, …, ``fc.*``; no ``num_batches_tracked``) and
MedicalNet's ``resnet_18.pth`` (``{"state_dict": {"module.conv1.weight", …}}``,
type-A shortcuts so no ``downsample`` tensors, and a ``conv_seg.*`` head).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segfuse.factory import load_pretrained
from segfuse.io.errors import SegfuseInputError
from segfuse.io.pretrained import backbone_state_from_file
from segfuse.models.encoders import ResNet18Encoder, adapt_first_conv


def _torchvision_file(path: Path, *, counters: bool) -> dict[str, torch.Tensor]:
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    for key, value in state.items():  # random statistics, so a skipped tensor would show
        if key.endswith(("running_mean", "running_var")):
            value.copy_(torch.rand_like(value) + 0.5)
    if not counters:  # as in the published file, saved before BatchNorm counted batches
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)
    return state


def _medicalnet_state(widen: float = 1.0, *, counters: bool = False, in_channels: int = 1) -> dict:
    """MedicalNet resnet_18 keys: MONAI's type-A ResNet has the same names, plus MedicalNet's head."""
    from monai.networks.nets.resnet import ResNet, ResNetBlock

    torch.manual_seed(1)
    widths = [int(w * widen) for w in (64, 128, 256, 512)]
    net = ResNet(
        block=ResNetBlock,
        layers=[2, 2, 2, 2],
        block_inplanes=widths,
        spatial_dims=3,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=2,
        shortcut_type="A",
        feed_forward=False,
    )
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    state = {k: v for k, v in net.state_dict().items() if counters or not k.endswith("num_batches_tracked")}
    assert not any("downsample" in k for k in state)
    head = {
        "conv_seg.0.weight": torch.randn(widths[-1], 32, 2, 2, 2),
        "conv_seg.0.bias": torch.randn(32),
        "conv_seg.1.weight": torch.ones(32),
        "conv_seg.1.bias": torch.zeros(32),
        "conv_seg.1.running_mean": torch.zeros(32),
        "conv_seg.1.running_var": torch.ones(32),
        "conv_seg.3.weight": torch.randn(32, 32, 3, 3, 3),
        "conv_seg.4.weight": torch.ones(32),
        "conv_seg.4.bias": torch.zeros(32),
        "conv_seg.4.running_mean": torch.zeros(32),
        "conv_seg.4.running_var": torch.ones(32),
        "conv_seg.6.weight": torch.randn(2, 32, 1, 1, 1),
    }
    return {"net": net.eval(), "state_dict": {f"module.{k}": v for k, v in {**state, **head}.items()}}


def _assert_all_loaded(encoder: ResNet18Encoder, file_state: dict[str, torch.Tensor], skip: tuple[str, ...] = ()):
    own = encoder._backbone_state_dict()
    checked = 0
    for key, value in own.items():
        if key.endswith("num_batches_tracked") or key.startswith(skip):
            continue
        expected = file_state[key]
        if key == "conv1.weight" and expected.shape != value.shape:
            expected = adapt_first_conv(expected, value.shape[1])
        assert torch.equal(value, expected), key
        checked += 1
    return checked


@pytest.mark.parametrize("counters", [False, True])
def test_torchvision_imagenet_file_loads_every_encoder_tensor(tmp_path: Path, counters: bool) -> None:
    path = tmp_path / "resnet18-f37072fd.pth"
    state = _torchvision_file(path, counters=counters)
    assert {"conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "fc.weight"} <= set(state)
    encoder = ResNet18Encoder(spatial_dims=2, in_channels=1, depth=5)
    load_pretrained(encoder, path)
    # 17 convolutions + 3 shortcut convolutions, 20 batch norms of 4 tensors: 100 tensors, each compared
    assert _assert_all_loaded(encoder, state) == 100
    assert encoder.stem[0].weight.shape == (64, 1, 7, 7)


def test_torchvision_file_into_a_shallow_encoder_uses_the_stages_it_has(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    state = _torchvision_file(path, counters=False)
    encoder = ResNet18Encoder(spatial_dims=2, in_channels=3, depth=3)
    load_pretrained(encoder, path)
    assert _assert_all_loaded(encoder, state) > 0
    assert torch.equal(encoder.stem[0].weight, state["conv1.weight"])
    assert torch.equal(encoder.stages[1][0].downsample[1].running_var, state["layer2.0.downsample.1.running_var"])


@pytest.mark.parametrize("counters", [False, True])
def test_medicalnet_file_loads_and_computes_what_medicalnet_computed(tmp_path: Path, counters: bool) -> None:
    made = _medicalnet_state(0.25, counters=counters)
    path = tmp_path / "resnet_18.pth"
    torch.save({"state_dict": made["state_dict"]}, path)
    encoder = ResNet18Encoder(spatial_dims=3, in_channels=1, depth=5, widen_factor=0.25, stem_kernel=7)
    load_pretrained(encoder, path)
    file_state = {k.removeprefix("module."): v for k, v in made["state_dict"].items()}
    assert _assert_all_loaded(encoder, file_state, skip=tuple(f"layer{i}.0.downsample" for i in (2, 3, 4))) > 0
    # The type-A shortcut (subsample, append zero channels) is reproduced exactly by the
    # bridged type-B shortcut: every feature map equals the reference network's.
    encoder.eval()
    reference = made["net"]
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        ours = encoder(x)
        y = reference.maxpool(reference.act(reference.bn1(reference.conv1(x))))
        expected = [reference.act(reference.bn1(reference.conv1(x)))]
        for layer in (reference.layer1, reference.layer2, reference.layer3, reference.layer4):
            y = layer(y)
            expected.append(y)
    assert len(ours) == 6
    for got, want in zip(ours[1:], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_medicalnet_full_width_published_shapes(tmp_path: Path) -> None:
    made = _medicalnet_state(1.0)
    state = made["state_dict"]
    assert state["module.conv1.weight"].shape == (64, 1, 7, 7, 7)
    assert state["module.layer4.1.conv2.weight"].shape == (512, 512, 3, 3, 3)
    path = tmp_path / "resnet_18.pth"
    torch.save({"state_dict": state}, path)
    encoder = ResNet18Encoder(spatial_dims=3, in_channels=2, depth=4, stem_kernel=7)
    load_pretrained(encoder, path)
    file_state = {k.removeprefix("module."): v for k, v in state.items()}
    assert _assert_all_loaded(encoder, file_state, skip=("layer2.0.downsample", "layer3.0.downsample")) > 0


def test_unknown_layout_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "vit.pth"
    torch.save({"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16), "blocks.0.attn.qkv.weight": torch.zeros(3)}, path)
    with pytest.raises(SegfuseInputError, match=r"vit\.pth: unknown weights layout.*patch_embed\.proj\.weight"):
        load_pretrained(ResNet18Encoder(spatial_dims=2, in_channels=1), path)
    with pytest.raises(SegfuseInputError, match=r"unknown weights layout"):
        backbone_state_from_file(path)


def test_2d_file_into_3d_encoder_names_the_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    _torchvision_file(path, counters=False)
    with pytest.raises(SegfuseInputError, match=r"2D \(ImageNet/torchvision\).*this encoder is 3D"):
        load_pretrained(ResNet18Encoder(spatial_dims=3, in_channels=1, widen_factor=0.25), path)


def test_missing_encoder_tensor_is_listed_not_skipped(tmp_path: Path) -> None:
    path = tmp_path / "partial.pth"
    state = _torchvision_file(path, counters=False)
    del state["layer3.1.bn2.running_var"]
    torch.save(state, path)
    with pytest.raises(SegfuseInputError, match=r"missing layer3\.1\.bn2\.running_var"):
        load_pretrained(ResNet18Encoder(spatial_dims=2, in_channels=1), path)
