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
