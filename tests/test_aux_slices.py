"""2.5D: which auxiliary plane a primary slice gets (``model.aux_slice``), in training and inference."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch
from helpers import predict_config

import segfuse.inference.engine as engine
from segfuse.config import AugmentConfig, config_from_dict
from segfuse.data.aux_slices import aux_slice, slice_weights
from segfuse.data.preprocess import PreparedCase
from segfuse.data.sampling import pad_case, sample_patch
from segfuse.factory import build_model
from segfuse.io.errors import SegfuseInputError
from segfuse.io.geometry import aux_grid

NO_AUGMENT = AugmentConfig(flip_prob=0.0, rotate_prob=0.0, scale_prob=0.0, intensity_prob=0.0)


@pytest.mark.parametrize("scale", [1, 2, 3, 4, 5])
def test_containing_is_the_thick_slice_that_holds_z(scale):
    n_aux = 6
    for z in range(scale * n_aux):
        assert slice_weights(z, scale, n_aux, "containing") == [(z // scale, 1.0)]


@pytest.mark.parametrize("scale", [2, 3, 4, 5])
def test_linear_weights_bracket_the_slice_centre_and_sum_to_one(scale):
    n_aux = 6
    for z in range(scale * n_aux):
        parts = slice_weights(z, scale, n_aux, "linear")
        assert sum(w for _, w in parts) == pytest.approx(1.0)
        assert all(0 <= k < n_aux and 0.0 < w <= 1.0 for k, w in parts)
        # the weighted auxiliary centre is the primary slice's centre, except beyond the outer centres
        centre = sum(w * (k * scale + (scale - 1) / 2) for k, w in parts)
        first, last = (scale - 1) / 2, (n_aux - 1) * scale + (scale - 1) / 2
        assert centre == pytest.approx(min(max(z, first), last))


def test_odd_scale_slice_at_a_thick_slice_centre_takes_that_slice_alone():
    assert slice_weights(4, 3, 5, "linear") == [(1, 1.0)]


def test_unknown_mode_and_empty_auxiliary_are_errors():
    with pytest.raises(ValueError, match="nearest"):
        slice_weights(0, 4, 3, "nearest")
    with pytest.raises(ValueError, match="no slices"):
        slice_weights(0, 4, 0, "linear")


def test_linear_agrees_with_simpleitk_resampling_by_physical_coordinates():
    # an auxiliary at 1 x 1 x 4 on the edge-aligned grid of a 1 mm primary, resampled by
    # SimpleITK (linear, physical coordinates) onto the primary grid: along z this is the
    # same interpolation; in-plane the grids coincide
    primary_shape, scale = (5, 4, 24), (1, 1, 4)
    affine, aux_shape = aux_grid(np.eye(4), primary_shape, scale)
    rng = np.random.default_rng(0)
    aux = rng.random(aux_shape).astype(np.float32)  # (X, Y, Z)
    image = sitk.GetImageFromArray(np.transpose(aux, (2, 1, 0)).copy())
    image.SetSpacing([float(s) for s in scale])
    image.SetOrigin([float(v) for v in affine[:3, 3]])
    reference = sitk.Image(list(primary_shape), sitk.sitkFloat32)
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, float("nan"))
    expected = np.transpose(sitk.GetArrayFromImage(resampled), (2, 1, 0))
    checked = 0
    for z in range(primary_shape[2]):
        if np.isnan(expected[..., z]).any():  # outside the outer centres SimpleITK has no value
            continue
        got = aux_slice(lambda k: aux[None, :, :, k], z, scale[2], aux_shape[2], "linear")[0]
        np.testing.assert_allclose(got, expected[..., z], atol=1e-5)
        checked += 1
    assert checked >= primary_shape[2] - 4


def ramp_case(shape=(16, 12, 24), scale=(2, 2, 4)) -> PreparedCase:
    """Primary: z + 1 along the slice axis; auxiliary: its block average (slab k holds k*s + (s-1)/2 + 1)."""
    z = np.broadcast_to(np.arange(shape[2], dtype=np.float32) + 1, shape)
    primary = np.ascontiguousarray(z)[None]
    aux = primary.reshape(1, shape[0] // scale[0], scale[0], shape[1] // scale[1], scale[1], -1, scale[2])
    aux = aux.mean(axis=(2, 4, 6))
    return PreparedCase("ramp", primary, {"flair": aux}, np.zeros(shape, np.uint8), np.eye(4))


@pytest.mark.parametrize("mode", ["containing", "linear"])
def test_training_samples_give_the_auxiliary_plane_of_the_mode(mode):
    scales = {"flair": (2, 2, 4)}
    case = ramp_case()
    padded = pad_case(case, scales, [8, 8, 4], [0, 0, 0])
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(40):
        sample = sample_patch(
            padded, (8, 8), [0, 0], scales, {"flair": 0.0}, rng, False, NO_AUGMENT, slice_axis=2, aux_slice_mode=mode
        )
        z = int(sample["primary"][0, 0, 0]) - 1
        seen.add(z)
        # containing: the slab's centre value; linear: a ramp is reproduced exactly between the outer centres
        expected = (z // 4) * 4 + 1.5 + 1 if mode == "containing" else min(max(z, 1.5), 21.5) + 1
        np.testing.assert_allclose(sample["aux_flair"], expected, atol=1e-5)
    assert len({z % 4 for z in seen}) == 4  # every position inside a slab was drawn


@pytest.mark.parametrize("mode", ["containing", "linear"])
def test_inference_gives_each_slice_the_plane_training_gave(mode, monkeypatch):
    cfg = config_from_dict(predict_config(mode="2d", aux_slice=mode))
    case = ramp_case(shape=(16, 16, 12))
    model = build_model(cfg).eval()
    planes = []
    real = engine.sliding_window_multires

    def spy(primary, aux, *args, **kwargs):
        planes.append((float(primary[0, 0, 0, 0]) - 1, aux["flair"][0, 0].numpy().copy()))
        return real(primary, aux, *args, **kwargs)

    monkeypatch.setattr(engine, "sliding_window_multires", spy)
    probabilities = engine.predict_prepared(model, cfg, case)
    assert probabilities.shape == (2, 16, 16, 12)
    assert [z for z, _ in planes] == list(range(12))
    for z, plane in planes:
        expected = (z // 4) * 4 + 2.5 if mode == "containing" else min(max(z, 1.5), 9.5) + 1
        np.testing.assert_allclose(plane, expected, atol=1e-5)


def test_linear_and_containing_predict_differently_from_the_same_weights():
    case = ramp_case(shape=(16, 16, 12))
    outputs = []
    for mode in ("containing", "linear"):
        cfg = config_from_dict(predict_config(mode="2d", aux_slice=mode))
        torch.manual_seed(0)
        outputs.append(engine.predict_prepared(build_model(cfg).eval(), cfg, case))
    assert not torch.allclose(outputs[0], outputs[1])


def test_config_rejects_an_unknown_mode_and_linear_in_3d():
    with pytest.raises(SegfuseInputError, match=r"model\.aux_slice.*'cubic'"):
        config_from_dict(predict_config(mode="2d", aux_slice="cubic"))
    with pytest.raises(SegfuseInputError, match=r"model\.aux_slice.*only applies to mode 2d"):
        config_from_dict(predict_config(mode="3d", aux_slice="linear"))
    assert config_from_dict(predict_config(mode="3d")).model.aux_slice == "containing"
