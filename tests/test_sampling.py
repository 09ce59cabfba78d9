"""Training patches: exact multi-resolution windows, lcm-aligned starts, foreground, dropout, 2D."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segfuse.auxiliary import lcm_of_scales
from segfuse.config import AugmentConfig
from segfuse.data.preprocess import PreparedCase
from segfuse.data.sampling import pad_case, sample_patch, window_start

SHAPE = (32, 28, 24)  # multiples of every scale below, so the block averages are exact
PATCH = (16, 16, 16)
NO_AUGMENT = AugmentConfig(flip_prob=0.0, rotate_prob=0.0, scale_prob=0.0, intensity_prob=0.0)
FG_BOX = (slice(28, 30), slice(1, 3), slice(21, 23))  # 8 voxels near a corner: 0.04 % of the case


def block_average(array: np.ndarray, scale) -> np.ndarray:
    return F.avg_pool3d(torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))[None], tuple(scale))[0].numpy()


def make_case(scales: dict[str, tuple[int, int, int]], seed: int = 0) -> PreparedCase:
    """Primary channels: noise (any misalignment shows), then x+1, y+1, z+1 (to decode positions)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in SHAPE], indexing="ij")
    primary = np.stack([rng.random(SHAPE, dtype=np.float32) + 0.5, x + 1, y + 1, z + 1])
    label = np.zeros(SHAPE, np.uint8)
    label[FG_BOX] = 1
    aux = {name: block_average(primary, s) for name, s in scales.items()}
    return PreparedCase("c", primary, aux, label, np.diag([0.8, 0.8, 2.5, 1.0]))


SCALE_SETS = [
    {"flair": (2, 2, 2)},
    {"flair": (2, 2, 4)},
    {"flair": (2, 2, 4), "t2": (4, 2, 1)},
]


@pytest.mark.parametrize("scales", SCALE_SETS, ids=["222", "224", "224+421"])
@pytest.mark.parametrize("margin_steps", [0, 1])
def test_aux_windows_are_exact_block_averages_of_the_primary_window(scales, margin_steps):
    lcm = lcm_of_scales(scales)
    margin = [margin_steps * m for m in lcm]
    case = make_case(scales)
    padded = pad_case(case, scales, PATCH, margin)
    rng = np.random.default_rng(1)
    dropout = {name: 0.0 for name in scales}
    for i in range(12):
        sample = sample_patch(
            padded, PATCH, margin, scales, dropout, rng, foreground=i % 2 == 0, augment_cfg=NO_AUGMENT
        )
        primary = sample["primary"]
        assert primary.shape == (4, *PATCH)
        assert sample["label"].shape == (1, *PATCH)
        # the patch origin lies inside the case: decode its index from the ramps
        origin = [int(primary[c, 0, 0, 0]) - 1 for c in (1, 2, 3)]
        assert all(o % m == 0 for o, m in zip(origin, lcm, strict=True)), (origin, lcm)
        # the label patch is the case's label at the same place (zeros where the window is padding)
        inside = tuple(slice(o, min(o + p, n)) for o, p, n in zip(origin, PATCH, SHAPE, strict=True))
        region = tuple(slice(0, r.stop - r.start) for r in inside)
        np.testing.assert_array_equal(sample["label"][0][region], case.label[inside])
        for name, s in scales.items():
            aux = sample[f"aux_{name}"]
            assert aux.shape == (4, *[p // k for p, k in zip(PATCH, s, strict=True)])
            np.testing.assert_allclose(aux, block_average(primary, s), atol=1e-5, err_msg=f"{name} {s}")
            assert sample[f"present_{name}"] == 1.0


@pytest.mark.parametrize("scales", SCALE_SETS, ids=["222", "224", "224+421"])
def test_window_starts_are_multiples_of_the_lcm(scales):
    lcm = lcm_of_scales(scales)
    margin = list(lcm)
    padded = pad_case(make_case(scales), scales, PATCH, margin)
    window = [p + 2 * m for p, m in zip(PATCH, margin, strict=True)]
    rng = np.random.default_rng(0)
    for i in range(100):
        start = window_start(padded, window, lcm, rng, foreground=i % 2 == 0)
        assert all(a % m == 0 for a, m in zip(start, lcm, strict=True)), (start, lcm)
        assert all(a >= 0 and a + w <= n for a, w, n in zip(start, window, padded.primary.shape[1:], strict=True))


def test_pad_case_keeps_aux_aligned_for_any_shape():
    # a shape that is not a multiple of the scales: padding must still keep aux index = primary index // s
    scales = {"flair": (2, 2, 4)}
    shape = (30, 26, 21)
    primary = np.random.default_rng(0).random((1, *shape), dtype=np.float32) + 0.5
    aux_shape = [-(-n // s) for n, s in zip(shape, scales["flair"], strict=True)]
    aux = np.ones((1, *aux_shape), np.float32)
    case = PreparedCase("c", primary, {"flair": aux}, None, np.eye(4))
    margin = [4, 4, 4]
    padded = pad_case(case, scales, (16, 16, 16), margin)
    for n, k in zip(padded.primary.shape[1:], lcm_of_scales(scales), strict=True):
        assert n % k == 0
    assert padded.aux["flair"].shape[1:] == tuple(
        n // s for n, s in zip(padded.primary.shape[1:], (2, 2, 4), strict=True)
    )
    # the aux's first real voxel sits at margin // s, exactly where the primary's first voxel's block is
    ones = np.argwhere(padded.aux["flair"][0] == 1.0)
    assert tuple(ones.min(axis=0)) == tuple(m // s for m, s in zip(margin, (2, 2, 4), strict=True))
    assert padded.label.shape == padded.primary.shape[1:]


def test_foreground_oversampling_finds_a_tiny_foreground():
    scales = {"flair": (2, 2, 4)}
    lcm = lcm_of_scales(scales)
    margin = list(lcm)
    padded = pad_case(make_case(scales), scales, PATCH, margin)
    rng = np.random.default_rng(3)
    hits_fg = [
        sample_patch(padded, PATCH, margin, scales, {}, rng, foreground=True, augment_cfg=NO_AUGMENT)["label"].sum()
        for _ in range(20)
    ]
    assert all(h > 0 for h in hits_fg)


def test_modality_dropout_and_missing_auxiliary():
    scales = {"flair": (2, 2, 4), "t2": (2, 2, 2)}
    case = make_case(scales)
    padded = pad_case(case, scales, PATCH, [0, 0, 0])
    rng = np.random.default_rng(0)
    dropped = sample_patch(padded, PATCH, [0, 0, 0], scales, {"flair": 1.0, "t2": 0.0}, rng, False, NO_AUGMENT)
    assert dropped["present_flair"] == 0.0
    assert dropped["aux_flair"].shape == (4, 8, 8, 4)
    assert not dropped["aux_flair"].any()
    assert dropped["present_t2"] == 1.0
    assert dropped["aux_t2"].any()

    case.aux["flair"] = None  # this case has no flair scan
    padded = pad_case(case, scales, PATCH, [0, 0, 0])
    missing = sample_patch(padded, PATCH, [0, 0, 0], scales, {"flair": 0.0, "t2": 0.0}, rng, False, NO_AUGMENT)
    assert missing["present_flair"] == 0.0
    assert missing["aux_flair"].shape[1:] == (8, 8, 4)
    assert not missing["aux_flair"].any()
    assert missing["present_t2"] == 1.0


@pytest.mark.parametrize("context", [0, 1, 2])
@pytest.mark.parametrize("foreground", [False, True])
def test_2d_slices_and_their_aux_slice(context, foreground):
    scales = {"flair": (2, 2, 4)}
    lcm = lcm_of_scales(scales)
    patch2d = (16, 12)
    padded = pad_case(make_case(scales), scales, [*patch2d, lcm[2]], [0, 0, 0])
    rng = np.random.default_rng(5)
    for _ in range(10):
        sample = sample_patch(
            padded, patch2d, [0, 0], scales, {"flair": 0.0}, rng, foreground, NO_AUGMENT, slice_axis=2, context=context
        )
        k = 2 * context + 1
        primary = sample["primary"]
        assert primary.shape == (4 * k, *patch2d)
        assert sample["label"].shape == (1, *patch2d)
        assert sample["aux_flair"].shape == (4, 8, 6)
        assert sample["present_flair"] == 1.0
        # channels are modality-major: [c0 z-k..z+k, c1 z-k..z+k, ...]; channel 3 holds z+1
        centre = primary.reshape(4, k, *patch2d)[:, context]
        z = int(centre[3, 0, 0]) - 1
        x0, y0 = int(centre[1, 0, 0]) - 1, int(centre[2, 0, 0]) - 1
        assert x0 % lcm[0] == 0 and y0 % lcm[1] == 0
        neighbours = primary.reshape(4, k, *patch2d)[3, :, 0, 0] - 1
        np.testing.assert_array_equal(neighbours, np.clip(np.arange(z - context, z + context + 1), 0, SHAPE[2] - 1))
        if foreground:
            assert sample["label"].sum() > 0
        # the aux slice is z // sz: the block average of the primary slab it covers
        sz = scales["flair"][2]
        slab = padded.primary[:, x0 : x0 + patch2d[0], y0 : y0 + patch2d[1], (z // sz) * sz : (z // sz + 1) * sz]
        expected = block_average(slab, scales["flair"])[..., 0]
        np.testing.assert_allclose(sample["aux_flair"], expected, atol=1e-5)


def test_2d_foreground_slice_lies_in_the_foreground_window():
    # two small components far apart in-plane and in z: the slice and the in-plane window must
    # come from the same foreground voxel, or half the "foreground" patches hold none
    shape = (48, 48, 24)
    label = np.zeros(shape, np.uint8)
    label[2:4, 2:4, 3] = 1
    label[44:46, 44:46, 20] = 1
    case = PreparedCase("c", np.ones((1, *shape), np.float32), {}, label, np.eye(4))
    padded = pad_case(case, {}, (16, 16, 1), (0, 0, 0))
    rng = np.random.default_rng(0)
    for _ in range(30):
        sample = sample_patch(padded, (16, 16), [0, 0], {}, {}, rng, True, NO_AUGMENT, slice_axis=2)
        assert sample["label"].sum() > 0
