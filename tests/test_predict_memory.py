"""Batch prediction keeps memory flat: no per-case accumulation across many cases.

What it would catch: a retained autograd graph, a cache of models, windows or
probability maps per case (each tens of MiB at these sizes once activations count).
"""

from __future__ import annotations

import gc
import resource

import torch
from test_training import make_dataset, tiny_config

from segfuse.config import config_from_dict
from segfuse.data.layouts import read_dataset
from segfuse.factory import build_model
from segfuse.inference.case import predict_case
from segfuse.inference.model import load_model, model_from_config


def _rss_mib() -> float:
    """Current resident set size (Linux /proc), in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def test_memory_stays_flat_over_many_cases(tmp_path):
    manifest = make_dataset(tmp_path / "data", n_cases=4, shape=(48, 48, 32))
    cfg = config_from_dict(tiny_config(manifest, tmp_path / "runs"))
    cfg.data.labels = {0: "background", 1: "lesion"}
    torch.manual_seed(0)
    model = model_from_config(cfg, build_model(cfg).eval())
    model = load_model(model)
    cases = read_dataset(manifest).cases
    (tmp_path / "out").mkdir()
    samples = []
    for i in range(24):  # 6 passes over the 4 cases, each written to its own file
        case = cases[i % len(cases)]
        predict_case(model, case, tmp_path / "out" / f"{i}_{case.case_id}.nii.gz", qc_path=(i % 6 == 0))
        gc.collect()
        samples.append(_rss_mib())
    warm = max(samples[4:8])  # after the first pass everything lazily built exists
    late = max(samples[-4:])
    assert late - warm < 40, f"RSS grew from {warm:.0f} MiB to {late:.0f} MiB over 24 predictions"
