"""``segfuse plan``: a dataset's fingerprint turned into an editable run config.

:func:`plan_dataset` reads the dataset once (:func:`segfuse.data.fingerprint.fingerprint_dataset`:
target spacing, median shape, auxiliary scales, normalisation, labels, checks) and
chooses what a training run needs from it:

* **network**: encoder depth 4 when the median shape is below 64 voxels on an axis,
  else 5; the lean ResNet18 of :mod:`segfuse.training.memory`;
* **patch and batch size** for 2D or 3D that fit a memory budget
  (:func:`~segfuse.training.memory.activation_memory`, :func:`~segfuse.training.memory.plan_patch`),
  on multiples of the encoder stride and the auxiliary scales;
* the auxiliaries (:class:`~segfuse.auxiliary.AuxInput` at the fingerprint's scales and
  normalisations).

:mod:`segfuse.training.budget` refines the choice by timing candidates for a time budget.

Example:
    >>> cfg, report = plan_dataset("../shared/data/hippocampus", out=Path("plan.yaml"))  # doctest: +SKIP
    >>> cfg.data.target_spacing, cfg.training.patch_size
    ([1.0, 1.0, 1.0], [64, 64, 64])
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from segfuse.auxiliary import PLANNED_LEVEL_BLOCKS, AuxInput, lcm_of_scales, planned_aux_slice
from segfuse.config import (
    Config,
    DataConfig,
    ExperimentConfig,
    InferenceConfig,
    ModelConfig,
    TrainingConfig,
    config_from_dict,
)
from segfuse.data.fingerprint import Fingerprint, fingerprint_dataset, format_sizes
from segfuse.data.preprocess import MIN_AUX_OVERLAP
from segfuse.io.atomic import atomic_write_text
from segfuse.io.errors import SegfuseInputError
from segfuse.training.memory import STEM_KERNEL, WIDEN_FACTOR, activation_memory, lean_network, plan_patch

__all__ = ["PlanReport", "plan_dataset", "write_plan"]

# A batch covers at most this share of all the dataset's voxels (nnU-Net's rule).
MAX_BATCH_DATASET_SHARE = 0.05
SMALL_VOLUME = 64  # median shape below this on an axis -> encoder depth 4


@dataclass(kw_only=True)
class PlanReport(Fingerprint):
    """The dataset's :class:`~segfuse.data.fingerprint.Fingerprint` and what the plan chose from it.

    :meth:`table` renders it.
    """

    patch_size: tuple[int, ...]
    batch_size: int
    encoder_depth: int
    memory_gb: float
    memory_budget_gb: float

    def min_overlap(self, name: str) -> tuple[float, str] | None:
        """``(smallest overlap fraction, case id)`` of auxiliary ``name``, or ``None``."""
        pairs = [(r.aux_overlap[name], r.case_id) for r in self.rows if name in r.aux_overlap]
        return min(pairs) if pairs else None

    def table(self) -> str:
        """A two-column text summary of the plan."""
        spacings = np.array([r.spacing for r in self.rows])
        spacing_range = ", ".join(
            f"{axis} {lo:.3g}-{hi:.3g}"
            for axis, lo, hi in zip("xyz", spacings.min(axis=0), spacings.max(axis=0), strict=True)
        )
        lines = [
            ("dataset", self.dataset),
            ("cases", str(len(self.rows))),
            ("spacing range (mm)", spacing_range),
            ("target spacing (mm)", format_sizes(self.target_spacing, ".4g")),
            ("median shape (target)", format_sizes(self.median_shape)),
            ("median object extent", "none labelled" if self.object_extent is None
             else format_sizes(self.object_extent, ".0f")),
            ("patch size", format_sizes(self.patch_size)),
            ("batch size", str(self.batch_size)),
            ("encoder depth", str(self.encoder_depth)),
            ("memory estimate", f"{self.memory_gb:.2f} of {self.memory_budget_gb:.2f} GiB"),
        ]
        for name, scale in self.aux_scales.items():
            worst = self.min_overlap(name)
            overlap = "no scans" if worst is None else f"min overlap {worst[0]:.1%} ({worst[1]})"
            lines.append(
                (
                    f"aux {name}",
                    f"scale {format_sizes(scale)} (ratio {format_sizes(self.aux_ratios[name], '.3g')}), {overlap}",
                )
            )
        lines.append(("labels declared", ", ".join(f"{k}={v}" for k, v in self.labels_declared.items())))
        lines.append(("labels found", ", ".join(str(v) for v in self.labels_found)))
        lines.append(("normalisation", ", ".join(f"{k}: {v.kind}" for k, v in self.norms.items())))
        width = max(len(k) for k, _ in lines)
        text = [f"{k.ljust(width)}  {v}" for k, v in lines]
        text += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(text)


def plan_dataset(
    source: Path | str,
    *,
    primary: str | None = None,
    aux: Sequence[str] | None = None,
    mode: str = "3d",
    memory_budget_gb: float = 4.0,
    out: Path | None = None,
    progress: bool = True,
    overlap_error_below: float = MIN_AUX_OVERLAP,
) -> tuple[Config, PlanReport]:
    """Fingerprint a dataset and return (and optionally write) its run config.

    Args:
        source: dataset folder, ``dataset.json`` or CSV/YAML manifest
            (:func:`segfuse.data.layouts.read_dataset`).
        primary, aux: modality selection, as in ``read_dataset``.
        mode: ``"3d"`` (3D patches) or ``"2d"`` (slices along the canonical Z axis;
            patch over X, Y).
        memory_budget_gb: GiB the training step may use (:func:`~segfuse.training.memory.activation_memory`).
        out: where to write the plan YAML (with a leading comment block); ``None``
            writes nothing.
        progress: show a progress bar.
        overlap_error_below: an auxiliary covering less than this fraction of the
            primary's field of view (on its expected grid) is an error.

    Returns:
        ``(config, report)``; ``config`` is validated and equals what ``out`` loads back to.

    Raises:
        SegfuseInputError: unreadable files, labels off their image's grid (both
            affines given), undeclared label values, auxiliaries below the overlap
            threshold (case, file, fraction) — all failing cases listed at once.
    """
    if mode not in ("2d", "3d"):
        raise SegfuseInputError(f"mode: expected '2d' or '3d', got {mode!r}")
    if memory_budget_gb <= 0:
        raise SegfuseInputError(f"memory_budget_gb: must be positive, got {memory_budget_gb}")
    found = fingerprint_dataset(
        source, primary=primary, aux=aux, progress=progress, overlap_error_below=overlap_error_below
    )

    # Network, patch and batch.
    dims = 2 if mode == "2d" else 3
    plane = found.median_shape[:dims]
    encoder_depth = 4 if min(plane) < SMALL_VOLUME else 5
    multiples = [math.lcm(2**encoder_depth, m) for m in lcm_of_scales(found.aux_scales, 3)[:dims]]
    patch, batch = plan_patch(
        plane, multiples, encoder_depth, memory_budget_gb,
        max_voxels_per_batch=MAX_BATCH_DATASET_SHARE * found.total_voxels,
    )
    memory = activation_memory(patch, batch, encoder_depth)

    cfg = Config(
        experiment=ExperimentConfig(name=f"{Path(found.dataset).stem}_{mode}"),
        data=DataConfig(
            dataset=found.dataset,
            primary=found.primary,
            aux={
                name: AuxInput(
                    name, scale=found.aux_scales[name], norm=found.norms[name], level_blocks=PLANNED_LEVEL_BLOCKS
                )
                for name in found.aux_names
            },
            labels=dict(found.labels_declared),
            target_spacing=list(found.target_spacing),
            primary_norm=found.norms[found.primary],
        ),
        model=ModelConfig(
            mode=mode,
            aux_slice=planned_aux_slice(mode),
            encoder_depth=encoder_depth,
            widen_factor=WIDEN_FACTOR,
            stem_kernel=STEM_KERNEL,
            decoder_channels=list(lean_network(dims, encoder_depth)[1]),
        ),
        training=TrainingConfig(patch_size=list(patch), batch_size=batch),
        inference=InferenceConfig(roi_size=list(patch)),
    )
    cfg = config_from_dict(cfg.to_dict())  # validated, and exactly what the YAML loads back to
    report = PlanReport(
        **vars(found),
        patch_size=patch,
        batch_size=batch,
        encoder_depth=encoder_depth,
        memory_gb=memory / 2**30,
        memory_budget_gb=memory_budget_gb,
    )
    if out is not None:
        write_plan(cfg, Path(out), found.dataset)
    return cfg, report


def write_plan(
    cfg: Config,
    out: Path,
    dataset: Path | str,
    *,
    notes: Sequence[str] = (),
    key_comments: dict[str, str] | None = None,
) -> Path:
    """Write ``cfg`` as YAML (what :func:`segfuse.config.save_config` writes) after a comment block.

    ``notes``: extra lines for the comment block (the measurements behind the
    choice); ``key_comments``: ``{"training.batch_size": "why"}``, written as a
    comment at the end of that key's line.
    """
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"# segfuse plan for {dataset}, {stamp}; edit freely\n"
        "# written by `segfuse plan`; train with `segfuse train --config <this file>`\n"
        "# data.dataset is absolute; a relative path is read relative to this file\n"
    )
    header += "".join(f"# {line}\n" for line in notes)
    body = yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
    return atomic_write_text(out, header + _comment_keys(body, key_comments or {}))


def _comment_keys(text: str, comments: dict[str, str]) -> str:
    """Append ``# comment`` to the lines of top-level ``section.key`` entries in YAML ``text``."""
    lines, section = [], ""
    for line in text.splitlines():
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        key = stripped.split(":", 1)[0] if ":" in stripped and not stripped.startswith("- ") else None
        if indent == 0 and key is not None:
            section = key
        elif indent == 2 and key is not None and f"{section}.{key}" in comments:
            line = f"{line}  # {comments[f'{section}.{key}']}"
        lines.append(line)
    return "\n".join(lines) + "\n"
