"""Tests for segfuse.inference.windows (multi-resolution sliding window)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference

from segfuse.auxiliary import lcm_of_scales
from segfuse.inference.windows import sliding_window_multires, window_starts
from segfuse.io.errors import SegfuseInputError


def _ceil_shape(shape: tuple[int, ...], scale: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(math.ceil(n / s) for n, s in zip(shape, scale, strict=True))


def _upsample(a: torch.Tensor, scale: tuple[int, ...]) -> torch.Tensor:
    """Nearest upsampling on the edge-aligned grid: aux voxel i -> primary [i*s, (i+1)*s)."""
    for axis, s in enumerate(scale):
        a = a.repeat_interleave(s, dim=axis + 2)
    return a


def _crop(a: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return a[(slice(None), slice(None), *(slice(0, n) for n in shape))]


def _plus_one(x: torch.Tensor, aux: dict[str, torch.Tensor | None]) -> torch.Tensor:
    return x + 1


# --- (1) MONAI-style exactness: x + 1 on an arange volume --------------------------------

EXACT_CASES = [
    # (spatial shape, roi_size)
    ((13, 17), (4, 6)),
    ((10, 7), (10, 7)),  # roi equal to the volume
    ((5, 3), (8, 8)),  # roi larger than the volume
    ((11, 9, 7), (4, 4, 4)),
    ((9, 10, 6), (5, 3, 4)),
    ((3, 4, 2), (6, 6, 6)),  # roi larger than the volume
]


@pytest.mark.parametrize(("shape", "roi"), EXACT_CASES)
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_plus_one_is_stitched_exactly(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float, blend: str) -> None:
    x = torch.arange(math.prod(shape), dtype=torch.float32).reshape(1, 1, *shape)
    out = sliding_window_multires(x, {}, {}, _plus_one, roi, overlap=overlap, sw_batch_size=3, blend=blend)
    assert out.shape == x.shape
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x + 1, rtol=1e-5, atol=1e-5)


# --- window layout -------------------------------------------------------------------------


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_window_starts_match_monai_without_aux(overlap: float) -> None:
    shape, roi = (23, 16, 9), (8, 8, 4)
    interval = [max(1, int(r * (1 - overlap))) if r != n else r for r, n in zip(roi, shape, strict=True)]
    expected = [tuple(b[0] for b in win) for win in dense_patch_slices(shape, roi, interval, return_slice=False)]
    assert window_starts(shape, roi, overlap) == expected


@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
def test_window_starts_on_lcm_grid_cover_volume(overlap: float) -> None:
    shape, roi, lcm = (37, 41, 29), (12, 12, 8), (6, 6, 4)
    starts = window_starts(shape, roi, overlap, lcm)
    covered = torch.zeros(shape, dtype=torch.bool)
    for p in starts:
        assert all(q % m == 0 for q, m in zip(p, lcm, strict=True))
        covered[tuple(slice(q, q + r) for q, r in zip(p, roi, strict=True))] = True
    assert covered.all()


def test_lcm_of_scales() -> None:
    assert lcm_of_scales({}, 3) == (1, 1, 1)
    assert lcm_of_scales({"a": (2, 2, 4), "b": (3, 1, 2)}, 3) == (6, 2, 4)
    assert lcm_of_scales({"a": 2}, 2) == (2, 2)


# --- (2) aux windowing exactness ----------------------------------------------------------

AUX_CASES = [
    # (scales per aux name, roi_size)
    ({"a": (1, 1, 1)}, (10, 12, 8)),
    ({"a": (2, 2, 2)}, (12, 10, 8)),
    ({"a": (2, 2, 4)}, (12, 16, 8)),
    ({"a": (2, 2, 4), "b": (3, 3, 1)}, (12, 18, 8)),
]


def _sum_aux_predictor(scales: dict[str, tuple[int, ...]]):
    def predictor(x: torch.Tensor, aux: dict[str, torch.Tensor | None]) -> torch.Tensor:
        out = x.clone()
        for name, window in aux.items():
            assert window is not None
            assert tuple(window.shape[2:]) == tuple(r // s for r, s in zip(x.shape[2:], scales[name], strict=True))
            out = out + _upsample(window, scales[name])
        return out

    return predictor


@pytest.mark.parametrize(("scales", "roi"), AUX_CASES)
@pytest.mark.parametrize("overlap", [0.0, 0.5])
def test_aux_windows_cover_same_block(scales: dict[str, tuple[int, ...]], roi: tuple[int, ...], overlap: float) -> None:
    gen = torch.Generator().manual_seed(0)
    shape = (37, 41, 29)
    x = torch.rand(1, 1, *shape, generator=gen)
    aux = {n: torch.rand(1, 1, *_ceil_shape(shape, s), generator=gen) for n, s in scales.items()}
    out = sliding_window_multires(x, aux, scales, _sum_aux_predictor(scales), roi, overlap=overlap, sw_batch_size=5)
    expected = x + sum(_crop(_upsample(a, scales[n]), shape) for n, a in aux.items())
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)

    # The data is random, so an aux window off by one aux voxel would change the result:
    # the same comparison against a one-voxel-shifted aux must fail.
    name = next(iter(aux))
    shifted = dict(aux)
    shifted[name] = torch.roll(aux[name], shifts=1, dims=2)
    wrong = x + sum(_crop(_upsample(a, scales[n]), shape) for n, a in shifted.items())
    assert not torch.allclose(out, wrong, atol=1e-3)


def test_aux_windows_2d_with_mirror_tta() -> None:
    gen = torch.Generator().manual_seed(1)
    shape, scales = (45, 38), {"a": (2, 4), "b": (3, 1)}
    x = torch.rand(1, 1, *shape, generator=gen)
    aux = {n: torch.rand(1, 1, *_ceil_shape(shape, s), generator=gen) for n, s in scales.items()}
    # x + upsampled aux is flip-equivariant only if the aux windows are flipped with the
    # primary window, so exactness here also checks the TTA flips of the aux.
    out = sliding_window_multires(x, aux, scales, _sum_aux_predictor(scales), (12, 8), overlap=0.5, mirror_axes=(0, 1))
    expected = x + sum(_crop(_upsample(a, scales[n]), shape) for n, a in aux.items())
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_aux_padding_uses_the_given_mode() -> None:
    shape, scales = (9, 7), {"a": (2, 2)}
    x = torch.rand(1, 1, *shape)
    aux = {"a": torch.rand(1, 1, *_ceil_shape(shape, (2, 2)))}
    out = sliding_window_multires(x, aux, scales, _sum_aux_predictor(scales), (4, 4), padding_mode="replicate")
    expected = x + _crop(_upsample(aux["a"], (2, 2)), shape)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# --- (3) agreement with MONAI ------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "roi", "overlap"),
    [
        ((32, 32, 16), (16, 16, 8), 0.5),
        ((32, 16, 16), (16, 16, 8), 0.25),
        ((48, 32), (16, 16), 0.5),
    ],
)
def test_matches_monai_sliding_window_inference(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> None:
    torch.manual_seed(0)
    conv_cls = torch.nn.Conv3d if len(shape) == 3 else torch.nn.Conv2d
    net = conv_cls(2, 3, kernel_size=3, padding=1).eval()
    x = torch.randn(1, 2, *shape)
    with torch.no_grad():
        expected = sliding_window_inference(x, roi, sw_batch_size=4, predictor=net, overlap=overlap, mode="gaussian")
    out = sliding_window_multires(x, {}, {}, lambda w, _aux: net(w), roi, overlap=overlap, sw_batch_size=4)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# --- (4) mirror test-time augmentation --------------------------------------------------


def test_mirror_tta_is_identity_for_equivariant_predictor() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 2, kernel_size=3, padding=1, bias=True).eval()
    with torch.no_grad():  # symmetrise the kernel so the conv commutes with every flip
        w = conv.weight
        w.copy_(sum(torch.flip(w, d) for d in ([], [2], [3], [4], [2, 3], [2, 4], [3, 4], [2, 3, 4])) / 8)
    x = torch.randn(1, 1, 20, 18, 12)
    plain = sliding_window_multires(x, {}, {}, lambda w, _a: conv(w), (8, 8, 8))
    tta = sliding_window_multires(x, {}, {}, lambda w, _a: conv(w), (8, 8, 8), mirror_axes=(0, 1, 2))
    torch.testing.assert_close(tta, plain, rtol=1e-5, atol=1e-5)


def test_mirror_tta_averages_flipped_predictions() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 2, kernel_size=3, padding=1).eval()  # not flip-equivariant
    aux_scale = (2, 2)
    x = torch.randn(1, 1, 8, 6)
    a = torch.randn(1, 1, 4, 3)

    def predictor(w: torch.Tensor, aux: dict[str, torch.Tensor | None]) -> torch.Tensor:
        return conv(w) * _upsample(aux["a"], aux_scale).cumsum(dim=2)  # direction-dependent

    # One window (roi == volume): output is the plain average over all 2^2 flip subsets.
    out = sliding_window_multires(x, {"a": a}, {"a": aux_scale}, predictor, (8, 6), mirror_axes=(0, 1))
    with torch.no_grad():
        preds = []
        for k in range(3):
            for axes in itertools.combinations((2, 3), k):
                dims = list(axes)
                p = predictor(torch.flip(x, dims), {"a": torch.flip(a, dims)})
                preds.append(torch.flip(p, dims))
        expected = torch.stack(preds).mean(0)
        plain = predictor(x, {"a": a})
    assert len(preds) == 4
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, plain, atol=1e-3)


# --- (5) errors --------------------------------------------------------------------------


def test_roi_not_divisible_by_scale_lcm() -> None:
    x = torch.zeros(1, 1, 37, 41, 29)
    aux = {"flair": torch.zeros(1, 1, 19, 21, 8)}
    with pytest.raises(ValueError, match=r"roi_size \(16, 16, 10\)") as info:
        sliding_window_multires(x, aux, {"flair": (2, 2, 4)}, _plus_one, (16, 16, 10))
    assert isinstance(info.value, SegfuseInputError)  # the CLI's one-line error type
    message = str(info.value)
    assert "flair=(2, 2, 4)" in message
    assert "(16, 16, 8)" in message and "(16, 16, 12)" in message  # nearest valid sizes


def test_wrong_aux_shape_names_aux_and_both_shapes() -> None:
    x = torch.zeros(1, 1, 37, 41, 29)
    aux = {"flair": torch.zeros(1, 1, 18, 21, 8)}  # floor instead of ceil on axis 0
    with pytest.raises(ValueError, match="flair") as info:
        sliding_window_multires(x, aux, {"flair": (2, 2, 4)}, _plus_one, (16, 16, 16))
    assert isinstance(info.value, SegfuseInputError)
    message = str(info.value)
    assert "(19, 21, 8)" in message  # expected
    assert "(18, 21, 8)" in message  # received


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"overlap": 1.0}, "overlap"),
        ({"blend": "triangle"}, "blend"),
        ({"mirror_axes": (3,)}, "mirror_axes"),
        ({"sw_batch_size": 0}, "sw_batch_size"),
    ],
)
def test_invalid_options(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        sliding_window_multires(torch.zeros(1, 1, 8, 8, 8), {}, {}, _plus_one, (4, 4, 4), **kwargs)


def test_aux_without_scale_is_an_error() -> None:
    with pytest.raises(ValueError, match="pet"):
        sliding_window_multires(torch.zeros(1, 1, 8, 8), {"pet": torch.zeros(1, 1, 4, 4)}, {}, _plus_one, (4, 4))


def test_predictor_with_wrong_output_shape_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"predictor returned shape \(1, 1, 2, 4\)"):
        sliding_window_multires(torch.zeros(1, 1, 4, 4), {}, {}, lambda x, _a: x[:, :, :2], (4, 4))


# --- (6) missing auxiliary ---------------------------------------------------------------


def test_missing_aux_is_passed_as_none() -> None:
    seen: list[dict[str, torch.Tensor | None]] = []
    gen = torch.Generator().manual_seed(2)
    shape = (20, 20, 12)
    x = torch.rand(1, 1, *shape, generator=gen)
    t2 = torch.rand(1, 1, *_ceil_shape(shape, (2, 2, 2)), generator=gen)

    def predictor(w: torch.Tensor, aux: dict[str, torch.Tensor | None]) -> torch.Tensor:
        seen.append(dict(aux))
        return w + _upsample(aux["t2"], (2, 2, 2))

    out = sliding_window_multires(
        x,
        {"flair": None, "t2": t2},
        {"flair": (2, 2, 4), "t2": (2, 2, 2)},
        predictor,
        (8, 8, 8),
        progress=True,
    )
    assert seen
    assert all(set(a) == {"flair", "t2"} and a["flair"] is None for a in seen)
    torch.testing.assert_close(out, x + _crop(_upsample(t2, (2, 2, 2)), shape))


# --- devices -----------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("output_device", ["cpu", "cuda"])
def test_cuda_predictor_matches_cpu(output_device: str) -> None:
    gen = torch.Generator().manual_seed(3)
    shape, scales = (37, 41, 29), {"flair": (2, 2, 4)}
    x = torch.rand(1, 1, *shape, generator=gen)
    aux = {"flair": torch.rand(1, 1, *_ceil_shape(shape, scales["flair"]), generator=gen)}
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 2, kernel_size=3, padding=1).eval()

    def predictor(w: torch.Tensor, a: dict[str, torch.Tensor | None]) -> torch.Tensor:
        flair = a["flair"]
        assert flair is not None and flair.device == w.device
        return conv.to(w.device)(w + _upsample(flair, scales["flair"]))

    kwargs = {"overlap": 0.5, "mirror_axes": (0, 2)}
    cpu = sliding_window_multires(x, aux, scales, predictor, (16, 16, 16), **kwargs)
    gpu = sliding_window_multires(
        x,
        aux,
        scales,
        predictor,
        (16, 16, 16),
        device="cuda",
        output_device=output_device,
        **kwargs,
    )
    assert gpu.device.type == output_device
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)
