# segfuse: `make demo` and `make test` each install what they need into .venv first.
#
# torch is installed on its own, pinned, before the package: pip on this project's
# machines serves torch 2.14.1 / torchvision 0.29.1 from local disk, whereas letting
# the package's `torch>=...` range pick a torch would download several GB of CUDA
# wheels. The stamp file makes a second run skip the install until pyproject.toml
# changes.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo_output

.PHONY: help install demo test lint clean-venv

help:
	@echo "make demo   install into $(VENV) and run segfuse on the bundled hippocampus sample"
	@echo "make test   install into $(VENV) and run the whole test suite"
	@echo "make lint   ruff over the project"

$(VENV)/bin/python:
	@test -n "$(PYTHON)" || { echo "make: need python3.11 (or python3) on PATH" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --no-input $(TORCH_PINS)
	$(VENV)/bin/python -m pip install --no-input -e '.[dev]'
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# `make demo` runs `segfuse demo` (train, predict and evaluate on the bundled sample).
# Where the installed CLI has no `demo` verb yet, it runs the smallest real end-to-end
# path that exists instead: read one bundled case, run an *untrained* FusionUNet on it,
# write the mask on the input grid, evaluate it. Once `demo` is on main, this fallback
# (and SEGFUSE_DEMO_PY below) can go.
demo: $(STAMP)
	@if $(VENV)/bin/segfuse demo --help >/dev/null 2>&1; then \
		echo "$(VENV)/bin/segfuse demo"; \
		$(VENV)/bin/segfuse demo; \
	else \
		echo "segfuse has no 'demo' verb yet: running the smallest end-to-end path (untrained FusionUNet on one sample case)"; \
		$(VENV)/bin/python -c "$$SEGFUSE_DEMO_PY" $(DEMO_OUT); \
	fi

clean-venv:
	rm -rf $(VENV)

define SEGFUSE_DEMO_PY
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segfuse import AuxInput, FusionUNet
from segfuse.data.layouts import read_dataset
from segfuse.evaluation.evaluate import evaluate
from segfuse.io.image import read_image, write_image
from segfuse.sample import sample_data_path

out = Path(sys.argv[1])
ds = read_dataset(sample_data_path())
case = ds.cases[0]
print(f"sample: {ds.root} ({len(ds.cases)} cases, labels {ds.labels}); using {case.case_id}")
vol = read_image(case.primary.path)
arr = vol.array.astype(np.float32)
arr = (arr - arr.mean()) / (arr.std() + 1e-8)
x = torch.from_numpy(arr)[None, None]
# The sample has one modality, so a stand-in auxiliary shows the native-resolution path:
# the same scan block-averaged onto the edge-aligned 2x2x2 grid (never upsampled).
pad = [p for n in reversed(x.shape[2:]) for p in (0, n % 2)]
lowres = F.avg_pool3d(F.pad(x, pad, mode="replicate"), kernel_size=2)
torch.manual_seed(0)
net = FusionUNet(
    spatial_dims=3, in_channels=1, num_classes=len(ds.labels),
    aux=[AuxInput("lowres", channels=1, scale=(2, 2, 2), mapper="conv", fusion="concat")],
    allow_missing_aux=True,
).eval()
with torch.no_grad():
    logits = net(x, aux={"lowres": lowres})
    without = net(x, aux={"lowres": None})
print(f"FusionUNet (untrained): primary {tuple(x.shape)} + aux {tuple(lowres.shape)} -> logits {tuple(logits.shape)}")
print(f"missing auxiliary also runs: logits {tuple(without.shape)}")
mask = logits.argmax(1)[0].numpy().astype(np.uint8)
(out / "pred").mkdir(parents=True, exist_ok=True)
(out / "ref").mkdir(parents=True, exist_ok=True)
write_image(mask, vol, out / "pred" / f"{case.case_id}.nii.gz")
write_image(read_image(case.label).array, vol, out / "ref" / f"{case.case_id}.nii.gz", dtype=np.uint8)
labels = {k: v for k, v in ds.labels.items() if k}
result = evaluate(out / "pred", out / "ref", out / "eval", labels=labels, progress=False)
print(result.table())
print(f"wrote {out / 'pred'}, {out / 'eval'}. The network is untrained: these Dice values mean nothing yet;")
print("`segfuse demo` (train, predict, evaluate on the sample) replaces this when it lands.")
endef
export SEGFUSE_DEMO_PY
