"""Label regions (BraTS whole tumour / tumour core / enhancing): targets, loss, write-back, config, evaluate."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from segfuse.cli import main
from segfuse.config import check_regions, config_from_dict, paint_values
from segfuse.data.regions import (
    BRATS_REGIONS,
    labels_from_regions,
    region_targets,
    regions_from_arguments,
)
from segfuse.evaluation.evaluate import evaluate
from segfuse.factory import build_model
from segfuse.io.errors import SegfuseInputError
from segfuse.training.losses import ClassLoss, RegionLoss, build_loss, class_indices


def brats_labels(shape=(12, 12, 8)) -> np.ndarray:
    """Nested boxes: oedema 2, inside it necrosis 1, inside that enhancing 4 (BraTS's values)."""
    label = np.zeros(shape, np.uint8)
    label[2:10, 2:10, 1:7] = 2
    label[3:9, 3:9, 2:6] = 1
    label[4:7, 4:7, 3:5] = 4
    return label


def test_paint_values_are_each_regions_own_label():
    assert paint_values(BRATS_REGIONS) == [2, 1, 4]
    assert paint_values({"a": [1], "b": [2]}) == [1, 2]  # disjoint regions paint their own value


@pytest.mark.parametrize(
    "regions, message",
    [
        ({"enhancing": [4], "core": [1, 4], "whole": [1, 2, 4]}, r"data\.regions\.enhancing.*broadest first"),
        ({"whole": [1, 2, 4], "core": [1, 4]}, r"data\.regions\.core.*exactly one.*\[1, 4\]"),
        ({"whole": []}, r"data\.regions\.whole: a region needs at least one"),
        ({"whole": [0, 1]}, r"must be > 0"),
        ({}, r"at least one region"),
        ({"a": [1, 2], "b": [2, 1]}, r"data\.regions\.b: holds the same labels \[1, 2\] as region .a."),
    ],
)
def test_bad_regions_are_errors_naming_the_region(regions, message):
    with pytest.raises(SegfuseInputError, match=message):
        check_regions(regions)


def test_region_values_must_be_labels_of_the_dataset():
    with pytest.raises(SegfuseInputError, match=r"regions\.whole: label values \[4\] are not labels.*\[0, 1, 2\]"):
        config_from_dict({"data": {"labels": {0: "bg", 1: "a", 2: "b"},
                                   "regions": {"whole": [1, 2, 4], "core": [1, 4], "enhancing": [4]}}})


def test_region_targets_are_multi_hot_and_paint_back_to_the_label_map():
    label = brats_labels()
    target = region_targets(torch.from_numpy(label.astype(np.float32))[None, None], BRATS_REGIONS)
    assert target.shape == (1, 3, *label.shape)
    for channel, values in enumerate(BRATS_REGIONS.values()):
        np.testing.assert_array_equal(target[0, channel].numpy(), np.isin(label, values))
    # the multi-hot targets as "probabilities" paint back exactly the BraTS label map
    np.testing.assert_array_equal(labels_from_regions(target[0].numpy(), BRATS_REGIONS), label)


def test_painting_takes_the_most_specific_region_above_one_half():
    # voxels: nothing; whole only; whole + core; all three; enhancing without whole (still 4: painted last)
    p = np.array([[0.1, 0.9, 0.9, 0.9, 0.2], [0.2, 0.4, 0.6, 0.8, 0.3], [0.3, 0.1, 0.5, 0.51, 0.7]])
    assert labels_from_regions(p, BRATS_REGIONS).tolist() == [0, 2, 1, 4, 4]


def test_region_loss_is_dice_plus_bce_on_multi_hot_targets():
    label = torch.from_numpy(brats_labels().astype(np.float32))[None, None]
    target = region_targets(label, BRATS_REGIONS)
    loss = RegionLoss(BRATS_REGIONS)
    good = loss(20.0 * (2 * target - 1), label)
    bad = loss(-20.0 * (2 * target - 1), label)
    assert good.item() < 0.01 < 1.5 < bad.item()
    logits = torch.zeros_like(target, requires_grad=True)
    value = loss(logits, label)
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # BCE at logit 0 is log 2; the Dice part of sigmoid(0) = 0.5 against the targets is known in closed form
    t = target.sum(dim=(0, 2, 3, 4))
    n = target[0, 0].numel()
    dice = 1 - (2 * 0.5 * t + 1e-5) / (t + 0.5 * n + 1e-5)
    assert value.item() == pytest.approx(dice.mean().item() + np.log(2), rel=1e-4)


def test_class_loss_maps_brats_label_values_to_class_indices():
    label = torch.from_numpy(brats_labels().astype(np.float32))[None, None]
    index = class_indices(label, [0, 1, 2, 4])
    assert sorted(index.unique().tolist()) == [0.0, 1.0, 2.0, 3.0]
    torch.manual_seed(0)
    logits = torch.randn(1, 4, *label.shape[2:])
    expected = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)(logits, index)
    assert ClassLoss([0, 1, 2, 4])(logits, label).item() == pytest.approx(expected.item())
    # contiguous labels are not touched
    assert class_indices(index, [0, 1, 2, 3]) is index


def test_config_with_regions_builds_one_sigmoid_output_per_region_and_old_configs_still_load():
    base = {
        "data": {"labels": {0: "bg", 1: "necrosis", 2: "oedema", 4: "enhancing"}},
        "model": {"encoder_depth": 3, "widen_factor": 0.25, "stem_kernel": 3, "decoder_channels": [16, 8, 8]},
        "training": {"patch_size": [16, 16, 16]},
    }
    plain = config_from_dict(base)
    assert plain.data.regions is None
    assert build_model(plain).head.out_channels == 4
    assert isinstance(build_loss(plain), ClassLoss)
    with_regions = config_from_dict({**base, "data": {**base["data"], "regions": BRATS_REGIONS}})
    assert list(with_regions.data.regions) == ["whole_tumour", "tumour_core", "enhancing_tumour"]
    assert build_model(with_regions).head.out_channels == 3
    assert isinstance(build_loss(with_regions), RegionLoss)
    # a checkpoint's config from before regions existed has no such key
    old = with_regions.to_dict()
    del old["data"]["regions"]
    assert config_from_dict(old).data.regions is None


def test_regions_from_arguments(tmp_path):
    assert regions_from_arguments(["brats"]) == BRATS_REGIONS
    assert regions_from_arguments(["wt=1,2,4", "et=4"]) == {"wt": [1, 2, 4], "et": [4]}
    nnunet = tmp_path / "dataset.json"
    nnunet.write_text(json.dumps({"labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enh": 3}}))
    assert regions_from_arguments([str(nnunet)]) == {"whole": [1, 2, 3], "core": [2, 3], "enh": [3]}
    run_config = tmp_path / "config.yaml"
    run_config.write_text("data:\n  regions: {wt: [1, 2, 4], et: [4]}\n")
    assert regions_from_arguments([str(run_config)]) == {"wt": [1, 2, 4], "et": [4]}
    with pytest.raises(SegfuseInputError, match=r"NAME=V,V"):
        regions_from_arguments(["wt=1,x", "et=4"])
    with pytest.raises(SegfuseInputError, match=r"not a file"):
        regions_from_arguments([str(tmp_path / "nope.yaml")])


def _save(array: np.ndarray, path) -> None:
    nib.save(nib.Nifti1Image(array, np.diag([-1.0, -1.0, 1.0, 1.0])), path)


def test_evaluate_regions_scores_unions_of_labels(tmp_path, capsys):
    ref = brats_labels()
    pred = ref.copy()
    pred[pred == 4] = 1  # enhancing missed entirely, called necrosis: whole and core still perfect
    pred[2, 2:10, 1:7] = 0  # one oedema sheet missed: whole tumour loses a little
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    _save(pred, tmp_path / "pred" / "c1.nii.gz")
    _save(ref, tmp_path / "ref" / "c1.nii.gz")
    result = evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "eval", regions=BRATS_REGIONS, progress=False)
    by_name = {r["name"]: r for r in result.rows}
    assert list(by_name) == ["whole_tumour", "tumour_core", "enhancing_tumour"]
    wt_ref, wt_pred = np.isin(ref, [1, 2, 4]).sum(), np.isin(pred, [1, 2, 4]).sum()
    assert by_name["whole_tumour"]["dice"] == pytest.approx(2 * wt_pred / (wt_ref + wt_pred))
    assert by_name["whole_tumour"]["label"] == "1+2+4"
    assert by_name["tumour_core"]["dice"] == pytest.approx(1.0)
    assert by_name["enhancing_tumour"]["dice"] == 0.0 and by_name["enhancing_tumour"]["note"] == "prediction empty"
    assert result.summary["regions"] == BRATS_REGIONS
    assert set(result.summary["classes"]) == set(BRATS_REGIONS)
    # the CLI: --regions brats, one table line per region
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
                 "--out", str(tmp_path / "eval_cli"), "--regions", "brats"])
    assert code == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[1:4]] == list(BRATS_REGIONS)
    # a label value outside every region is an error naming it
    _save(np.full_like(ref, 3), tmp_path / "pred" / "c1.nii.gz")
    with pytest.raises(SegfuseInputError, match=r"label values \[3\]"):
        evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "eval2", regions=BRATS_REGIONS, progress=False)
