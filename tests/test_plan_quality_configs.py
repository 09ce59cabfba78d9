"""benchmarks/plan_quality.py's hand-made configs load as the benchmark loads them (no data needed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "plan_quality", Path(__file__).resolve().parents[1] / "benchmarks" / "plan_quality.py"
)
bench = importlib.util.module_from_spec(spec)
sys.modules["plan_quality"] = bench
spec.loader.exec_module(bench)


@pytest.mark.parametrize("dataset, variant", [(d, v) for d, hand in bench.HAND.items() for v in hand])
def test_every_hand_made_config_loads_with_its_overrides(dataset, variant):
    from segfuse.config import load_config

    path, overrides = bench.HAND[dataset][variant]
    cfg = load_config(path, [*overrides, "training.device=cpu"])
    if variant.endswith("_2d"):
        assert cfg.model.mode == "2d"
    if dataset.startswith("brats") and variant.endswith("_2d"):  # the fusion study's chosen default
        assert cfg.model.aux_slice == "linear"
        assert all(a.level_blocks == 1 and a.dropout == 0.0 for a in cfg.data.aux.values())


def _run(variant, fold, case_dice):
    return {"dataset": "brats_wt", "variant": variant, "fold": fold, "minutes": 30.0, "case_dice": case_dice}


def test_paired_lines_pair_cases_by_id_and_report_each_fold():
    plan = [_run("plan", 0, {"a": 0.9, "b": 0.7}), _run("plan", 1, {"c": 0.8})]
    hand = [_run("brats_2d", 0, {"b": 0.6, "a": 0.95}), _run("brats_2d", 1, {"c": 0.8, "d": 0.5})]
    per_fold, paired = bench.paired_lines(plan, hand, "brats_2d")
    assert per_fold == "- per fold (plan vs `brats_2d`): fold 0 0.800 vs 0.775; fold 1 0.800 vs 0.650"
    # a: -0.05, b: +0.10, c: 0; d has no plan score and is left out of the pairs
    assert paired.startswith("- paired per case (plan − `brats_2d`, 3 cases): mean +0.017, 95 % bootstrap CI [")
    assert paired.endswith("1 wins / 1 losses")
