"""Benchmark: is native-resolution fusion worth it? 23 BraTS subjects, 5 folds, two tasks (issue 12 §3).

Data (``--prepare-only`` makes it; every run makes what it lacks): the 10 subjects of
``../shared/data/brats18_t1_flair`` and the 13 of ``../shared/data/brats19_multimodal``.
Every low-resolution auxiliary is made by code, the same way for all 23 subjects:
:func:`segfuse.data.lowres.simulate_low_resolution` (anti-alias Gaussian, then the
edge-aligned 2 × 2 × 4 mm grid over the same field of view; ``--scale`` studies
another). The FLAIRs shipped as ``flair_2x2x4mm.nii.gz`` with the brats18 subjects are
*not* used (the utility reproduces them to 0.09 %, see ``segfuse/data/lowres.py``), so
both datasets go through one code path. BraTS 2019's ``seg`` (0/1/2/4) gives the whole
tumour (> 0) for task A.

- **Task A** (whole tumour, comparable with the issue-5 study): primary T1, auxiliary
  FLAIR; all 23 subjects; one softmax class.
- **Task B** (the three BraTS regions): primary T1ce, auxiliaries FLAIR and T2;
  the 13 brats19 subjects; trained on the regions of ``data.regions``, one sigmoid each.

Variants (each trained per fold from the same base config,
``configs/brats_t1ce_flair_t2_lowres.yaml``; "segfuse" is that config's auxiliary
settings — mapper, fusion, features, levels — applied to every auxiliary, with
``level_blocks: 0`` and, in 2.5D, ``model.aux_slice: containing`` pinned: the design the
study started from, whatever the config ships since):

- ``primary_only``: no auxiliary;
- ``early_1mm``: the 1 mm auxiliaries stacked with the primary as input channels;
- ``early_lowres``: the 2 × 2 × 4 mm auxiliaries upsampled (trilinear, by physical
  coordinates) to the primary grid and stacked as input channels;
- ``segfuse``: the 2 × 2 × 4 mm auxiliaries at native resolution, no dropout;
- ``segfuse_dropout``: the same with modality dropout (the config's, drawn
  independently per auxiliary), evaluated with every auxiliary present, each absent
  and all absent (``segfuse ablate``);
- on request (``--variants``), the design space of issue 12 part 2: ``segfuse_add`` and
  ``segfuse_gated`` (``segfuse`` with add or gated fusion instead of the config's), and
  ``segfuse_linear`` (2.5D: each auxiliary interpolated along the slice axis to the
  primary slice's position, ``model.aux_slice: linear``, instead of the thick slice
  that contains it), ``segfuse_pyramid`` (each auxiliary with one conv block at every
  level it enters after the first, ``level_blocks: 1``: a small encoder of its own) and
  ``segfuse_pyramid_linear`` (both), and ``segfuse_pyramid_fine`` (``segfuse_pyramid_linear``
  whose auxiliaries also enter one skip level finer than their scale: stride 2 in 3D);
  each with a dropout twin ``<variant>_dropout``
  (modality dropout, evaluated like ``segfuse_dropout``; goal 3 is judged on the chosen
  default's twin) and, for ``segfuse`` and each design, a pairs twin
  ``<variant>_dropout_pairs`` (the dropout twin trained with
  ``training.decode_without_aux``: every sample also decoded without its auxiliaries)
  and a subsets twin ``<variant>_dropout_subsets`` (the same, the second decode dropping
  a random non-empty subset of the auxiliaries, ``decode_without_aux_drops: subset``);
- task B only, ``segfuse_no_<aux>``: the default's design (``--default``, else ``segfuse``)
  trained without that auxiliary (the reference of goal 3 for one auxiliary absent).

Protocol: subjects sorted by id, subject ``i`` → fold ``i mod 5`` (per task); each
fold trains on the others and predicts its own subjects, so every subject has one
prediction per variant. Every run gets the same optimisation-time budget
(``--minutes``, ``training.schedule=time``: the poly decay spans the budget), and the
weights are also kept at ``--snapshots`` fractions of it and evaluated, so the tables
show whether the ranking changes between the last two checkpoints. A run may instead be
given the iteration count its reference made in that budget (``--match-iterations``, for a
variant with the reference's network, when the machine's speed has changed since the
reference ran; the poly decay then spans the iterations). Dice and HD95 per
region come from ``segfuse evaluate``. Statistics: per-subject paired differences
against early fusion (mean, 95 % percentile bootstrap CI over subjects, 10 000
resamples, seed 0, wins/losses); cost: seconds per iteration of each run and the peak
memory of one training step of each variant's network on its batch (a separate
subprocess: the resident high-water mark ``VmHWM``, restarted after building the model
and batch, minus the RSS at that point, over 5 steps, glibc ``MALLOC_MMAP_THRESHOLD_``
1 MiB), plus the runs' peak RSS (``VmHWM``; not ``ru_maxrss``, which Linux carries
over from the spawning parent).

``--mode 2d`` (default) trains 2.5D on axial slices (patch 128 × 128, batch 8, smp
ResNet18, depth 4), the setting that fits a 2-core CPU; ``--mode 3d`` keeps the
config's 3D settings; there a ``_linear`` design trains its counterpart's network (a 3D model
sees every auxiliary whole at its own scale, so there is no slice to choose):
``segfuse_pyramid_linear`` is the shipped 3D config's design. ``--gpu`` runs the three key
variants (primary only, early low-res, the chosen default ``--default``, else segfuse) of task
B in 3D at 128³ on fold 0 on CUDA (``benchmarks/brats_fusion_gpu.sh``).

Usage:
    python benchmarks/brats_fusion.py --prepare-only            # the low-resolution copies and manifests
    python benchmarks/brats_fusion.py --quick                   # smoke run: a few minutes
    python benchmarks/brats_fusion.py --minutes 6               # the study (both tasks, every variant, 5 folds)
    python benchmarks/brats_fusion.py --mode 3d --tasks B --default segfuse_pyramid_linear \
        --variants primary_only early_lowres segfuse_pyramid_linear --minutes 15   # the 3D trio
    python benchmarks/brats_fusion.py --mode 3d --tasks B --default segfuse_pyramid_fine \
        --variants early_lowres segfuse_pyramid_fine --minutes 30 --snapshots 0.5 0.75   # the 3D follow-up
    python benchmarks/brats_fusion.py --tasks B --minutes 4 --variants <all of the report's> \
        --reuse docs/results/<earlier study>.json    # train only the runs that file lacks
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from segfuse.io.atomic import atomic_write_text
from segfuse.machine import machine_line

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BASE_CONFIG = REPO / "configs" / "brats_t1ce_flair_t2_lowres.yaml"
DATA_DIR = REPO / "runs" / "brats_lowres"
FOLDS = 5
BOOTSTRAP = 10_000
VARIANTS = ("primary_only", "early_1mm", "early_lowres", "segfuse", "segfuse_dropout")

# -- pre-registered goals (issue 12 §3), written before any run of this script ---------------------
# "headline" is whole-tumour Dice for task A and the mean Dice over the three regions for task B.
# Goal 1 and 2 are checked on task A whole tumour, task B whole tumour and task B mean over regions;
# goal 3 on every auxiliary-absent setting of both tasks (headline); goal 4 in both tasks.
GOALS = {
    1: "segfuse (native 2x2x4) >= early fusion with the same auxiliaries upsampled: mean paired difference >= 0 "
       "and the 95 % CI's lower bound >= -0.01, on whole tumour and on the mean over regions",
    2: "segfuse mean Dice >= 98 % of early fusion with the 1 mm auxiliaries (same metrics as goal 1)",
    3: "with an auxiliary absent, the dropout-trained model >= the model trained without that auxiliary - 0.02 "
       "(mean headline Dice; task A: FLAIR absent vs primary_only; task B: each auxiliary absent vs "
       "segfuse_no_<aux>, both absent vs primary_only)",
    4: "segfuse's peak training-step memory <= 0.85 x early fusion's (early_lowres) and its seconds per "
       "iteration <= 1.0 x early fusion's",
}
CI_FLOOR, RATIO_1MM, ABSENT_MARGIN, MEMORY_RATIO, TIME_RATIO = -0.01, 0.98, 0.02, 0.85, 1.0


@dataclass(frozen=True)
class Task:
    """One study task: which subjects, which primary, which auxiliaries, regions or classes."""

    key: str
    primary: str
    aux: tuple[str, ...]
    sources: tuple[str, ...]  # shared data folders whose subjects take part
    regions: bool  # True: the base config's data.regions; False: whole tumour, one softmax class


TASKS = {
    "A": Task("A", "t1", ("flair",), ("brats18_t1_flair", "brats19_multimodal"), regions=False),
    "B": Task("B", "t1ce", ("flair", "t2"), ("brats19_multimodal",), regions=True),
}


# design-space variants (issue 12 part 2), run on request with --variants: segfuse with another fusion, or
# (2.5D only) with each auxiliary interpolated along the slice axis to the primary slice's position
# (``model.aux_slice: linear``) instead of the thick slice containing it; segfuse_linear was added on
# 2026-12-06, after the 4-minute task-A result and before any run of it, to test the hypothesis that
# nearest-slab sampling is what early fusion's trilinear upsampling beats
# segfuse_pyramid (each auxiliary with one conv block per level it enters after the first,
# ``level_blocks: 1``: its own small encoder) and segfuse_pyramid_linear were added on 2026-12-06 after
# the 4-minute task-A result, before any run of them: segfuse lost most on subjects whose tumour needs the
# FLAIR read with context, and the coarse levels saw only pooled 2-layer features of it
# segfuse_pyramid_fine was added on 2026-12-07 (23:10 UTC) after the 3D 30-minute result of folds 0-2 (early
# fusion ahead at 22.5 and 30 min, whole tumour -0.077) and before any run of it: the shipped 3D design
# (segfuse_pyramid_linear) whose auxiliaries also enter the next finer skip level than their scale allows
# (fine_levels; issue 12 part 2's "levels finer than their scale"), the mapped features interpolated there.
# Hypothesis: in 3D the FLAIR's finest entry is stride 4 (4 mm), so the stride-2 and stride-1 decoder blocks
# draw the whole tumour's border from the T1ce alone, while early fusion's encoder reads the upsampled FLAIR at
# 1 mm. Cost: +7.6 % training FLOPs over the shipped design (3D, 48 x 48 x 32, two auxiliaries); entering
# stride 1 as well would cost +40 %, too much for a fixed-time budget. Rule: judged by goals 1 and 4 as
# written (the report with --default segfuse_pyramid_fine) in 3D on task B at 30 min on folds 0-4 against the
# same early_lowres runs; the 3D config takes its levels only if goal 1 is met on whole tumour and on the mean
# over regions. Secondary, reported beside it: its paired difference to segfuse_pyramid_linear and whole-tumour
# HD95 (the border).
DESIGN_VARIANTS = ("segfuse_add", "segfuse_gated", "segfuse_linear", "segfuse_pyramid", "segfuse_pyramid_linear",
                   "segfuse_pyramid_fine")
LINEAR_DESIGNS = ("segfuse_linear", "segfuse_pyramid_linear", "segfuse_pyramid_fine")


def fine_levels(scale: Sequence[int], mode: str, encoder_depth: int) -> list[int]:
    """The skip strides segfuse_pyramid_fine's auxiliaries enter: from one level finer than the network's default
    first level (:meth:`FusionUNet.entry_levels`) up. At 2 x 2 x 4 with depth 4: ``[2, 4, 8, 16]`` in 3D (default
    first stride 4), ``[1, 2, 4, 8, 16]`` in 2.5D (in-plane 2 x 2: default first stride 2)."""
    from segfuse.auxiliary import AuxInput
    from segfuse.models.net import FusionUNet

    dims = 2 if mode == "2d" else 3
    strides = [(2**i,) * dims for i in range(encoder_depth + 1)]
    first = FusionUNet.entry_levels(AuxInput("aux", scale=tuple(scale[:dims])), strides)[0]
    return [s[0] for s in strides[max(first - 1, 0):]]


def key_variants(default: str | None) -> tuple[str, ...]:
    """The three key variants of the 3D comparison: primary only, early low-res, the chosen default."""
    return "primary_only", "early_lowres", default or "segfuse"


def same_network_in_3d(variants: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of listed variants that train one network in 3D: ``x_linear`` and ``x`` (no slice to choose)."""
    listed = set(variants)
    pairs = ((v, v.replace("_linear", "")) for v in sorted(listed) if "_linear" in v)
    return [(linear, plain) for linear, plain in pairs if plain in listed]


# every design variant has a dropout twin, ``<variant>_dropout`` (the config's modality dropout, evaluated with each
# auxiliary present and absent like ``segfuse_dropout``, the twin of ``segfuse``): the issue's "segfuse's chosen
# default ... the same trained with modality dropout". Added on 2026-12-06 after Part 2 chose
# segfuse_pyramid_linear and before any run of its twin; goal 3 is judged on the chosen default's twin (the
# starting design's segfuse_dropout is listed beside it and does not count once the default is another variant)
DROPOUT = "_dropout"
# every design (and ``segfuse``) also has a pairs twin, ``<variant>_dropout_pairs``: its dropout twin trained with
# ``training.decode_without_aux`` (each sample decoded with and without its auxiliaries, one encoder pass, the
# two losses averaged). Added on 2026-12-06 before any run of it, after the 4-minute task-A study missed goal 3
# (the dropout twin without FLAIR 0.286 vs primary_only 0.404: modality dropout at 0.3 trains the primary-only
# path on under a third of the samples). For a study begun after this date (the crop fix of 818ae5e needs a
# fresh --out anyway), goal 3 is judged on the chosen default's pairs twin when it ran on every fold of the
# task, else on its dropout twin; both are listed.
PAIRS = "_pairs"
# and a subsets twin, ``<variant>_dropout_subsets``: the pairs twin whose second decode drops a random non-empty
# subset of the auxiliaries per sample (``training.decode_without_aux_drops: subset``) instead of all of them.
# Added on 2026-12-07 before any run of it, after task B missed goal 3 with one auxiliary absent (the pairs twin
# never decodes "FLAIR absent, T2 present" but by modality dropout). Listed beside the pairs twin; goal 3 stays
# judged on the pairs twin, as pre-registered.
SUBSETS = "_subsets"


def design_of(variant: str, default: str | None = None) -> str:
    """The fusion design a variant trains: ``segfuse_pyramid_linear_dropout[_pairs]`` -> ``segfuse_pyramid_linear``.

    ``segfuse_no_<aux>`` (goal 3's reference: a model trained without that auxiliary) has the default's
    design (``--default``), so goal 3 compares one thing, how the model was trained; without ``--default``
    it is ``segfuse``. (Since 2026-12-07, before any task-B run of it; before, always ``segfuse``.)
    """
    if variant.startswith("segfuse_no_"):
        return default or "segfuse"
    return _without_second_decode(variant).removesuffix(DROPOUT)


def _without_second_decode(variant: str) -> str:
    """``x_dropout_pairs`` or ``x_dropout_subsets`` -> ``x_dropout``; any other name unchanged."""
    return variant.removesuffix(PAIRS).removesuffix(SUBSETS)


def dropout_twin(variant: str) -> str:
    return variant + DROPOUT


def pairs_twin(variant: str) -> str:
    return variant + DROPOUT + PAIRS


def subsets_twin(variant: str) -> str:
    return variant + DROPOUT + SUBSETS


def stale_design(record: dict[str, Any], path: Path, default: str | None) -> str | None:
    """Why a saved run or memory record of another design must not be reused, or ``None`` when it may be.

    Files are keyed by variant name, and ``segfuse_no_<aux>``'s design follows ``--default``: a record
    saved under another ``--default`` (a record without the key predates it: ``segfuse``) would mix designs.
    """
    variant = record["variant"]
    saved, wanted = design_of(variant, record.get("default")), design_of(variant, default)
    if saved == wanted:
        return None
    return (f"{path}: {variant} was made with the design {saved} (--default {record.get('default')}), "
            f"this study's --default {default} needs {wanted}; use another --out or remove that file")


def trained_with_dropout(variant: str) -> bool:
    """A dropout, pairs or subsets twin: evaluated with each auxiliary present and absent (``segfuse ablate``)."""
    return _without_second_decode(variant).endswith(DROPOUT)


DROPOUT_TWINS = tuple(dropout_twin(v) for v in DESIGN_VARIANTS)
PAIRS_TWINS = tuple(pairs_twin(v) for v in ("segfuse", *DESIGN_VARIANTS))
SUBSETS_TWINS = tuple(subsets_twin(v) for v in ("segfuse", *DESIGN_VARIANTS))


# Part 2's choice of the default, pre-registered on 2026-12-04 before the 23-subject run: among ``segfuse``
# (the config's fusion) and the design variants that were run on every fold of a task, the default is the
# one with the highest out-of-fold mean headline Dice at the final checkpoint. Goals 1 and 2 are judged on
# that variant (chosen on the same subjects: a two-way choice, stated with the result), and the config's
# own ``segfuse`` is listed beside it when it is not the one chosen.
DEFAULT_CANDIDATES = ("segfuse", *DESIGN_VARIANTS)


def chosen_default(
    results: list[dict[str, Any]], task: str, fixed: str | None = None
) -> tuple[str, dict[str, float]]:
    """The pre-registered default of ``task`` and every complete candidate's mean headline Dice.

    ``fixed`` (``--default``) is a default an earlier study of the task chose by this rule: a follow-up
    study that does not rerun the candidates judges its goals on it.
    """
    table = per_subject(results)
    folds = {r["fold"] for r in results if r["task"] == task}
    means = {}
    for v in DEFAULT_CANDIDATES:
        done = {r["fold"] for r in results if r["task"] == task and r["variant"] == v}
        scores = dice_of(table, task, v, headline(task))
        if scores and done == folds:
            means[v] = float(np.mean(list(scores.values())))
    if fixed:
        return fixed, means
    return (max(means, key=means.get) if means else "segfuse"), means


def variants_of(task: Task) -> tuple[str, ...]:
    extra = tuple(f"segfuse_no_{a}" for a in task.aux) if len(task.aux) > 1 else ()
    return VARIANTS + extra + DESIGN_VARIANTS + DROPOUT_TWINS + PAIRS_TWINS + SUBSETS_TWINS


# -- data ------------------------------------------------------------------------------------------


def _subjects(task: Task) -> list[tuple[str, Path]]:
    """``(case_id, folder)`` of the task's subjects, sorted by id."""
    found = []
    for source in task.sources:
        root = SHARED / source
        found += [(p.name, p) for p in root.iterdir() if p.is_dir()]
    return sorted(found)


def _lowres_path(data_dir: Path, case_id: str, modality: str, tag: str) -> Path:
    return data_dir / case_id / f"{modality}_{tag}.nii.gz"


def _tag(scale: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in scale) + "mm"


def prepare(task: Task, data_dir: Path, scale: tuple[int, ...], subjects: list[tuple[str, Path]],
            portable: bool = False, suffix: str = "") -> Path:
    """Low-resolution copies (made by code), whole-tumour masks and the task's manifest; returns it.

    The manifest is ``task_<key><suffix>.yaml`` (``--quick`` writes ``task_a_quick.yaml``, so a
    smoke run never replaces the manifest a study or ``plan_quality.py`` is reading); it is
    written to a temporary file and renamed into place.

    ``portable`` (for a GPU machine without the shared data): the primary and label files are
    copied beside the low-resolution copies, which are rounded to int16 like their sources, the
    1 mm auxiliaries are left out, and the manifest's paths are relative to it (about 45 MB for task B).
    """
    import nibabel as nib
    import yaml

    from segfuse.data.lowres import simulate_low_resolution
    from segfuse.io.image import read_image, write_image

    tag = _tag(scale)
    cases = []
    for case_id, folder in subjects:
        out = data_dir / case_id
        out.mkdir(parents=True, exist_ok=True)
        aux: dict[str, str] = {}
        for modality in task.aux:
            low = _lowres_path(data_dir, case_id, modality, tag)
            if not low.is_file():
                coarse = simulate_low_resolution(read_image(folder / f"{modality}.nii.gz"), scale)
                array = np.rint(coarse.array).astype(np.int16) if portable else coarse.array
                write_image(array, coarse, low, dtype=array.dtype)
            if not portable:
                aux[modality] = str(folder / f"{modality}.nii.gz")
            aux[f"{modality}_{tag}"] = str(low)
        if task.regions:
            label = folder / "seg.nii.gz"
        elif (folder / "whole_tumour.nii.gz").is_file():
            label = folder / "whole_tumour.nii.gz"
        else:  # brats19: whole tumour = every tumour label
            label = out / "whole_tumour.nii.gz"
            if not label.is_file():
                seg = nib.load(folder / "seg.nii.gz")
                mask = (np.asarray(seg.dataobj) > 0).astype(np.uint8)
                nib.save(nib.Nifti1Image(mask, seg.affine, seg.header), label)
        primary = folder / f"{task.primary}.nii.gz"
        if portable:
            for source in (primary, label):
                if not (out / source.name).is_file():
                    shutil.copyfile(source, out / source.name)
            primary, label = out / primary.name, out / label.name
            aux = {k: os.path.relpath(v, data_dir) for k, v in aux.items()}
            primary, label = Path(os.path.relpath(primary, data_dir)), Path(os.path.relpath(label, data_dir))
        cases.append({"case_id": case_id, "primary": str(primary), "label": str(label), "aux": aux})
    labels = {0: "background", 1: "necrosis", 2: "oedema", 4: "enhancing"} if task.regions else \
        {0: "background", 1: "whole_tumour"}
    manifest = data_dir / f"task_{task.key.lower()}{suffix}.yaml"
    tmp = manifest.with_name(f".{manifest.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump({"name": f"brats_task_{task.key}", "labels": labels,
                                   "primary_name": task.primary, "cases": cases}, sort_keys=False))
    os.replace(tmp, manifest)
    return manifest


def stacked(task: Task, manifest: Path, which: str, tag: str) -> Path:
    """Early fusion: a manifest whose primary is a 4D NIfTI (primary, auxiliaries on the primary grid).

    ``which``: ``"1mm"`` (the 1 mm auxiliaries) or ``"lowres"`` (the ``tag`` copies upsampled
    trilinearly, by physical coordinates, onto the primary grid).
    """
    import nibabel as nib
    import yaml

    from segfuse.data.preprocess import resample

    out = manifest.parent / f"{manifest.stem}_early_{which}.yaml"
    tree = yaml.safe_load(manifest.read_text())
    names = [a if which == "1mm" else f"{a}_{tag}" for a in task.aux]
    cases = []
    for case in tree["cases"]:
        path = manifest.parent / case["case_id"] / f"early_{task.key}_{which}_{tag}.nii.gz"
        if not path.is_file():
            primary = nib.load(manifest.parent / case["primary"])  # relative paths are relative to the manifest
            channels = [np.asarray(primary.dataobj, dtype=np.float32)]
            for name in names:
                image = nib.load(manifest.parent / case["aux"][name])
                data = np.asarray(image.dataobj, dtype=np.float32)
                if image.shape != primary.shape:  # the thick-slice copy: upsample by physical coordinates
                    data = resample(data[None], image.affine, primary.affine, primary.shape, mode="bilinear")[0]
                channels.append(data)
            nib.save(nib.Nifti1Image(np.stack(channels, axis=-1), primary.affine, primary.header), path)
        cases.append({"case_id": case["case_id"], "primary": str(path),
                      "label": str(manifest.parent / case["label"])})
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump({"labels": tree["labels"], "primary_name": "+".join([task.primary, *names]),
                                   "cases": cases}, sort_keys=False))
    os.replace(tmp, out)
    return out


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())


def folds_of(case_ids: list[str], k: int) -> list[list[str]]:
    ordered = sorted(case_ids)
    return [ordered[i::k] for i in range(k)]


# -- one run ---------------------------------------------------------------------------------------


def run_config(job: dict[str, Any]) -> Any:
    """The run config of one (task, variant, fold) job: the base config plus the variant's changes."""
    import yaml

    from segfuse.config import config_from_dict

    task, variant, tag = TASKS[job["task"]], job["variant"], job["tag"]
    tree = yaml.safe_load(BASE_CONFIG.read_text())
    default_aux = next(iter(tree["data"]["aux"].values()))  # the config's auxiliary settings: segfuse's default
    data = tree["data"]
    data["dataset"], data["primary"], data["labels"] = job["manifest"], task.primary, {}
    if not task.regions:
        data["regions"] = None
    data["aux"] = {}
    if variant.startswith("early_"):
        data["dataset"], data["primary"] = job["early_manifest"], None
    design = design_of(variant, job.get("default"))
    if variant.startswith("segfuse"):
        kept = [a for a in task.aux if variant != f"segfuse_no_{a}"]
        for name in kept:
            spec = copy.deepcopy(default_aux)
            spec["scale"] = list(job["scale"])
            spec["dropout"] = (spec.get("dropout") or 0.3) if trained_with_dropout(variant) else 0.0
            if design in ("segfuse_add", "segfuse_gated"):
                spec["fusion"] = design.removeprefix("segfuse_")
            # pinned, whatever the config ships: segfuse and its dropout twin are the design the study
            # started from (pooled mapping, thick slice containing z); the variants change one thing each
            spec["level_blocks"] = 1 if design.startswith("segfuse_pyramid") else 0
            spec["levels"] = fine_levels(job["scale"], job["mode"], tree["model"]["encoder_depth"]) \
                if design == "segfuse_pyramid_fine" else None
            data["aux"][f"{name}_{tag}"] = spec
    # a 3D model sees every auxiliary whole at its own scale: no slice to choose, so a _linear design trains
    # the network of its counterpart without it (segfuse_pyramid_linear -> the shipped 3D config's design)
    linear = job["mode"] == "2d" and design in LINEAR_DESIGNS
    tree["model"]["aux_slice"] = "linear" if linear else "containing"
    data["val_cases"] = list(job["val_cases"])
    training = tree["training"]
    training.update(schedule="time", max_minutes=job["minutes"], iterations=10**7, iterations_per_epoch=10**7,
                    val_every=0, snapshots=list(job["snapshots"]),
                    decode_without_aux=variant.endswith((PAIRS, SUBSETS)),
                    decode_without_aux_drops="subset" if variant.endswith(SUBSETS) else "all")
    if job.get("iterations"):  # --match-iterations: the reference run's iteration count instead of the clock
        training.update(schedule="iterations", max_minutes=None, iterations=job["iterations"],
                        iterations_per_epoch=job["iterations"])
    tree["experiment"].update(output_dir=str(Path(job["out"]) / "runs"), name=job["name"])
    if job["mode"] == "2d":
        tree["model"].update(mode="2d", widen_factor=1.0, norm="batch", deep_supervision=False)
        training.update(patch_size=[128, 128], batch_size=8)
        tree["inference"].update(overlap=0.25, sw_batch_size=8)
    elif job["gpu"]:
        training.update(patch_size=[128, 128, 128], batch_size=2, device="cuda", amp=True)
        tree["inference"].update(roi_size=[128, 128, 128], overlap=0.25, sw_batch_size=4)
    if not job["gpu"]:
        training.update(device="cpu", num_threads=job["threads"])
    if job.get("quick"):  # a smoke run of every code path on 2 mm volumes: 8x fewer voxels to predict
        data["target_spacing"] = [2.0, 2.0, 2.0]
        for spec in data["aux"].values():  # a 2x2x4 mm auxiliary is 1x1x2 voxels of the 2 mm primary
            spec["scale"] = [max(1, s // 2) for s in spec["scale"]]
        training.update(patch_size=[64, 64] if job["mode"] == "2d" else [48, 48, 32], batch_size=4)
        tree["inference"].update(roi_size=None, overlap=0.0, sw_batch_size=8)
    return config_from_dict(tree)


def _rows(per_case: Path) -> list[dict[str, Any]]:
    """Per-subject, per-region rows of a ``per_case.csv``: case_id, name, dice, hd95_mm."""
    with per_case.open() as handle:
        return [{"case_id": r["case_id"], "name": r["name"], "dice": float(r["dice"]),
                 "hd95_mm": float(r["hd95_mm"]) if r["hd95_mm"] not in ("", "nan") else float("nan")}
                for r in csv.DictReader(handle)]


def _status_mib(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` of this process in MiB, from ``/proc/self/status``.

    ``VmHWM`` (the resident high-water mark) belongs to this process's own address space.
    ``getrusage().ru_maxrss`` does not: Linux carries it across ``execve``, so a worker
    spawned by a parent holding 1.4 GiB reports at least 1.4 GiB whatever it uses itself.
    """
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":")) / 1024


def _reset_peak_rss() -> None:
    """Restart ``VmHWM`` from the current RSS (``/proc/self/clear_refs``, Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one variant on one fold, evaluate its snapshots and final weights on the fold (in this process)."""
    import torch

    from segfuse.data.cases import Dataset
    from segfuse.data.layouts import read_dataset
    from segfuse.evaluation.ablate import ablate
    from segfuse.evaluation.evaluate import evaluate, reference_folder
    from segfuse.inference.predict import predict
    from segfuse.training.loop import train

    cfg = run_config(job)
    run_dir = Path(cfg.experiment.output_dir) / cfg.experiment.name
    cuda = cfg.training.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    result = train(cfg, run_dir=run_dir, progress=False)
    train_wall = time.monotonic() - started
    train_rss = _status_mib("VmHWM")
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    train_s = float(result.history[-1]["train_s"]) if result.history else float("nan")

    dataset = read_dataset(cfg.data.dataset, primary=cfg.data.primary, aux=list(cfg.data.aux))
    val = [c for c in dataset.cases if c.case_id in set(job["val_cases"])]
    refs = reference_folder(val, Path(job["out"]) / "references" / f"task{job['task']}_fold{job['fold']}")
    regions = cfg.data.regions
    labels = None if regions else {1: "whole_tumour"}
    device = "cuda" if cuda else "cpu"
    scores: dict[str, dict[str, list[dict[str, Any]]]] = {}
    checkpoints = [(f"{round(f * 100):03d}pct", run_dir / f"checkpoint_{round(f * 100):03d}pct.pt")
                   for f in job["snapshots"]]
    checkpoints.append(("final", run_dir / "checkpoint_last.pt"))
    for name, ckpt in checkpoints:
        if not ckpt.is_file():  # the run ended before this fraction of the budget (cannot happen with a time budget)
            continue
        if name == "final" and trained_with_dropout(job["variant"]):
            sub = Dataset(root=dataset.root, layout=dataset.layout, cases=val, labels=dataset.labels,
                          primary_name=dataset.primary_name, aux_names=dataset.aux_names)
            ablation = ablate(ckpt, sub, run_dir / "ablation", device=device, progress=False)
            scores[name] = {("all" if row["variant"] == "all" else row["variant"].replace("without_", "without ")):
                            _rows(run_dir / "ablation" / _ablation_folder(ablation.rows, row) / "evaluation"
                                  / "per_case.csv") for row in ablation.rows}
            continue
        preds = run_dir / f"predictions_{name}"
        run = predict(ckpt, val, preds, device=device, progress=False)
        if not run.ok:
            raise RuntimeError(run.summary())
        evaluation = evaluate(preds, refs, run_dir / f"evaluation_{name}", labels=labels, regions=regions,
                              progress=False)
        scores[name] = {"all": _rows(evaluation.out_dir / "per_case.csv")}
    if not job["keep_checkpoints"]:
        for path in run_dir.glob("*.pt"):
            path.unlink()
    return {
        **{k: v for k, v in job.items() if k not in ("result",)},
        "iterations": result.iteration,
        "train_seconds": train_s,
        "seconds_per_iteration": train_s / max(1, result.iteration),
        "train_wall_seconds": round(train_wall, 1),
        "peak_rss_train_mib": round(train_rss, 1),
        "peak_rss_mib": round(_status_mib("VmHWM"), 1),
        "rss_measure": "VmHWM",  # runs without this key measured ru_maxrss, which counts the parent's pages
        "gpu_peak_allocated_mib": gpu_peak,
        "scores": scores,
    }


def _ablation_folder(rows: list[dict[str, Any]], row: dict[str, Any]) -> str:
    """The folder ablate predicted a variant into (variants removing the same set share the first one's)."""
    for other in rows:
        if sorted(other["dropped"]) == sorted(row["dropped"]):
            return other["variant"]
    return row["variant"]


def step_memory(job: dict[str, Any]) -> dict[str, Any]:
    """Peak memory and time of a training step of the variant's network on its batch (fresh process)."""
    import torch

    from segfuse.factory import build_model
    from segfuse.training.losses import build_loss

    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    cfg = run_config(job)
    cfg.data.labels = {0: "background", 1: "necrosis", 2: "oedema", 4: "enhancing"} if TASKS[job["task"]].regions \
        else {0: "background", 1: "whole_tumour"}
    channels = 1 + len(TASKS[job["task"]].aux) if job["variant"].startswith("early_") else 1
    model = build_model(cfg, in_channels=channels)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = build_loss(cfg)
    b, patch = cfg.training.batch_size, cfg.training.patch_size
    dims = cfg.spatial_dims
    x = torch.randn(b, channels * (2 * cfg.model.context_slices + 1 if dims == 2 else 1), *patch)
    aux = {n: torch.randn(b, 1, *[p // s for p, s in zip(patch, spec.scale[:dims], strict=True)])
           for n, spec in cfg.data.aux.items()}
    y = torch.randint(0, 2, (b, 1, *patch)).float()
    base = _status_mib("VmRSS")
    _reset_peak_rss()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x, aux=aux), y)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t)
    peak = _status_mib("VmHWM")
    return {"task": job["task"], "variant": job["variant"], "mode": job["mode"], "default": job.get("default"),
            "step_peak_mib": peak - base,
            "rss_measure": "VmHWM",
            "rss_base_mib": base, "step_seconds_median": float(np.median(times[1:])),
            "parameters": sum(p.numel() for p in model.parameters())}


# -- statistics -----------------------------------------------------------------------------------


def bootstrap_ci(diffs: np.ndarray, n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of ``diffs`` (resampling subjects): segfuse's own."""
    from segfuse.evaluation import crossval

    return crossval.bootstrap_ci(np.asarray(diffs, dtype=float), n, seed)


def per_subject(results: list[dict[str, Any]], checkpoint: str = "final") -> dict[tuple[str, str], dict]:
    """``{(task, setting): {case_id: {region: (dice, hd95)}}}``; ``setting`` is the variant, or
    ``"segfuse_dropout [without x]"``; task B also gets a ``mean`` region (mean Dice over regions)."""
    table: dict[tuple[str, str], dict[str, dict[str, tuple[float, float]]]] = {}
    for r in results:
        for setting, rows in r["scores"].get(checkpoint, {}).items():
            if setting == "none" and len(TASKS[r["task"]].aux) == 1:  # the same as "without <the one auxiliary>"
                continue
            name = r["variant"] if setting == "all" else f"{r['variant']} [{setting}]"
            for row in rows:
                table.setdefault((r["task"], name), {}).setdefault(row["case_id"], {})[row["name"]] = (
                    row["dice"], row["hd95_mm"])
    for (task, _), subjects in table.items():
        if TASKS[task].regions:
            for regions in subjects.values():
                regions["mean"] = (float(np.mean([d for d, _ in regions.values()])), float("nan"))
    return table


def headline(task: str) -> str:
    return "mean" if TASKS[task].regions else "whole_tumour"


def dice_of(table: dict, task: str, setting: str, region: str) -> dict[str, float]:
    return {case: regions[region][0] for case, regions in table.get((task, setting), {}).items() if region in regions}


def paired(table: dict, task: str, a: str, b: str, region: str) -> dict[str, Any]:
    """Paired difference ``a - b`` over the subjects both have: mean, CI, wins, losses, n."""
    da, db = dice_of(table, task, a, region), dice_of(table, task, b, region)
    common = sorted(set(da) & set(db))
    d = np.array([da[c] - db[c] for c in common])
    lo, hi = bootstrap_ci(d)
    return {"a": a, "b": b, "task": task, "region": region, "n": len(d),
            "mean": float(d.mean()) if len(d) else float("nan"), "ci95": [lo, hi],
            "wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "ties": int((d == 0).sum()),
            "per_subject": dict(zip(common, d.tolist(), strict=True))}


def ranking(results: list[dict[str, Any]], task: str, checkpoint: str) -> list[tuple[str, float]]:
    """Variants (all auxiliaries present) by mean headline Dice at ``checkpoint``, best first."""
    table = per_subject(results, checkpoint)
    means = [(setting, float(np.mean(list(dice_of(table, t, setting, headline(task)).values()))))
             for (t, setting) in table if t == task and "[" not in setting]
    return sorted(means, key=lambda item: -item[1])


def absent_reference(task: str, setting: str) -> str | None:
    """Goal 3's reference for a setting evaluated with auxiliaries absent, ``None`` for any other setting.

    ``X [without flair_2x2x4mm]`` -> ``primary_only`` (one auxiliary) or ``segfuse_no_flair`` (several);
    ``X [none]`` -> ``primary_only``.
    """
    if setting.endswith(" [none]"):
        return "primary_only"
    if " [without " not in setting:
        return None
    if len(TASKS[task].aux) == 1:
        return "primary_only"
    absent = setting.split(" [without ", 1)[1].removesuffix("]").rsplit("_", 1)[0]  # "flair_2x2x4mm" -> "flair"
    return f"segfuse_no_{absent}" if absent in TASKS[task].aux else None


def _verdict(ok: bool | None) -> str:
    return "not evaluated" if ok is None else ("met" if ok else "missed")


def goals(
    results: list[dict[str, Any]], memory: list[dict[str, Any]], fixed_default: str | None = None
) -> list[dict[str, Any]]:
    """The four pre-registered goals, their figures and automatic verdicts (``fixed_default``: ``chosen_default``'s)."""
    table = per_subject(results)
    checks = [(t, r) for t in ("A", "B") for r in (("whole_tumour", "mean") if TASKS[t].regions else ("whole_tumour",))]
    out = []
    parts1, parts2 = [], []
    for task, region in checks:
        default = chosen_default(results, task, fixed_default)[0]
        for variant in dict.fromkeys((default, "segfuse")):  # the chosen default, then the config's if different
            counts = variant == default
            p = paired(table, task, variant, "early_lowres", region)
            if p["n"]:
                parts1.append({"task": task, "variant": variant, "region": region, "mean_diff": p["mean"],
                               "ci95": p["ci95"], "n": p["n"], "counts": counts,
                               "ok": p["mean"] >= 0 and p["ci95"][0] >= CI_FLOOR})
            seg, early = dice_of(table, task, variant, region), dice_of(table, task, "early_1mm", region)
            if seg and early:
                a, b = float(np.mean(list(seg.values()))), float(np.mean(list(early.values())))
                parts2.append({"task": task, "variant": variant, "region": region, "segfuse": a, "early_1mm": b,
                               "ratio": a / b, "counts": counts, "ok": a >= RATIO_1MM * b})
    parts3: list[dict[str, Any]] = []
    missing3: list[str] = []
    for task in ("A", "B"):
        aux = TASKS[task].aux
        region = headline(task)
        default = chosen_default(results, task, fixed_default)[0]
        folds = {r["fold"] for r in results if r["task"] == task}
        pairs_done = {r["fold"] for r in results if r["task"] == task and r["variant"] == pairs_twin(default)}
        counted = pairs_twin(default) if folds and pairs_done == folds else dropout_twin(default)
        # the counted twin, then the default's other twin, then the starting design's
        for model in dict.fromkeys((counted, pairs_twin(default), subsets_twin(default), dropout_twin(default),
                                    "segfuse_dropout")):
            absents = [f"{model} [without {a}_{_tag_of(results)}]" for a in aux]
            if len(aux) > 1:
                absents.append(f"{model} [none]")
            for absent in absents:
                reference = absent_reference(task, absent)
                da, dr = dice_of(table, task, absent, region), dice_of(table, task, reference, region)
                if da and dr:
                    a, b = float(np.mean(list(da.values()))), float(np.mean(list(dr.values())))
                    parts3.append({"task": task, "absent": absent, "reference": reference, "dropout_model": a,
                                   "reference_model": b, "counts": model == counted, "ok": a >= b - ABSENT_MARGIN})
                elif model == counted and any(r["task"] == task and r["variant"] == model for r in results):
                    missing3.append(f"task {task}: {absent} vs {reference}")
    parts4 = []
    for task in ("A", "B"):
        mem = {m["variant"]: m for m in memory if m["task"] == task}
        runs = [r for r in results if r["task"] == task]
        spi = {v: float(np.mean([r["seconds_per_iteration"] for r in runs if r["variant"] == v]))
               for v in {r["variant"] for r in runs}}
        default = chosen_default(results, task, fixed_default)[0]
        for variant in dict.fromkeys((default, "segfuse")):  # the chosen default counts, as in goal 1
            if {variant, "early_lowres"} <= mem.keys() & spi.keys():
                m = mem[variant]["step_peak_mib"] / mem["early_lowres"]["step_peak_mib"]
                t = spi[variant] / spi["early_lowres"]
                parts4.append({"task": task, "variant": variant, "memory_ratio": m, "time_ratio": t,
                               "counts": variant == default, "ok": m <= MEMORY_RATIO and t <= TIME_RATIO})
    for number, parts in ((1, parts1), (2, parts2), (3, parts3), (4, parts4)):
        counted = [p for p in parts if p.get("counts", True)]
        ok = all(p["ok"] for p in counted) if counted else None
        missing = missing3 if number == 3 else []
        verdict = _verdict(ok) + (f" (partial: not evaluable {missing})" if missing and parts else "")
        out.append({"goal": number, "text": GOALS[number], "verdict": verdict, "checks": parts})
    return out


def _tag_of(results: list[dict[str, Any]]) -> str:
    return results[0]["tag"] if results else _tag((2, 2, 4))


# -- report ---------------------------------------------------------------------------------------


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def memory_table(memory: list[dict[str, Any]]) -> list[str]:
    """Markdown rows of :func:`step_memory` records, with each variant's ratios to ``early_lowres`` of its task."""
    if not memory:
        return []
    early = {m["task"]: m for m in memory if m["variant"] == "early_lowres"}
    lines = ["", "| task | mode | variant | training-step peak MiB | step s (median) | parameters | "
             "memory / early_lowres | time / early_lowres |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for m in memory:
        ref = early.get(m["task"])
        ratios = (f"{m['step_peak_mib'] / ref['step_peak_mib']:.2f}× | "
                  f"{m['step_seconds_median'] / ref['step_seconds_median']:.2f}×") if ref else "— | —"
        lines.append(f"| {m['task']} | {m.get('mode', '—')} | {m['variant']} | {m['step_peak_mib']:.0f} | "
                     f"{m['step_seconds_median']:.2f} | {m['parameters']:,} | {ratios} |")
    return lines


def report(
    results: list[dict[str, Any]], memory: list[dict[str, Any]], snapshots: list[str],
    fixed_default: str | None = None,
) -> str:
    """Markdown: Dice/HD95 per region, paired differences, ranking per checkpoint, cost, per subject, goals."""
    lines = []
    table = per_subject(results)
    for task in sorted({r["task"] for r in results}):
        settings = sorted({s for (t, s) in table if t == task})
        regions = sorted({reg for s in settings for regs in table[(task, s)].values() for reg in regs},
                         key=lambda x: (x == "mean", x))
        lines += [f"### Task {task} (primary {TASKS[task].primary}, auxiliaries {', '.join(TASKS[task].aux)})", "",
                  "| setting | " + " | ".join(f"{reg} Dice" for reg in regions) + " | "
                  + " | ".join(f"{reg} HD95 mm" for reg in regions if reg != "mean") + " | s/it | peak RSS MiB |",
                  "|---|" + "---:|" * (2 * len(regions) - ("mean" in regions) + 2)]
        for setting in settings:
            runs = [r for r in results if r["task"] == task and r["variant"] == setting.split(" [")[0]]
            cells = []
            for reg in regions:
                d = np.array([regs[reg][0] for regs in table[(task, setting)].values() if reg in regs])
                cells.append(f"{_fmt(d.mean())} ± {_fmt(d.std())}" if d.size else "n/a")
            for reg in regions:
                if reg == "mean":
                    continue
                h = np.array([regs[reg][1] for regs in table[(task, setting)].values() if reg in regs])
                h = h[~np.isnan(h)]
                cells.append(_fmt(h.mean(), 1) if h.size else "n/a")
            spi = np.mean([r["seconds_per_iteration"] for r in runs])
            measured = [r["peak_rss_train_mib"] for r in runs if r.get("rss_measure") == "VmHWM"]
            rss = f"{max(measured):.0f}" if measured else "n/a"
            lines.append(f"| {setting} | " + " | ".join(cells) + f" | {spi:.2f} | {rss} |")
        matched = sorted({(r["variant"], r["iterations_matched_to"]) for r in results
                          if r["task"] == task and r.get("iterations_matched_to")})
        if matched:
            lines += ["", "Iteration-matched runs (each fold trained for the reference run's iteration count, not by "
                      "the clock): " + ", ".join(f"{v} → {ref}" for v, ref in matched)]
        lines += ["", "Paired differences per subject (setting − reference), mean [95 % bootstrap CI], wins/losses:",
                  "", "| setting | reference | region | n | mean | CI95 | wins | losses |",
                  "|---|---|---|---:|---:|---|---:|---:|"]
        pairs = [(setting, reference) for reference in ("early_lowres", "early_1mm") for setting in settings
                 if setting != reference]
        pairs += [(setting, ref) for setting in settings if (ref := absent_reference(task, setting))]
        for setting, reference in pairs:
            for reg in regions:
                p = paired(table, task, setting, reference, reg)
                if p["n"]:
                    lines.append(f"| {setting} | {reference} | {reg} | {p['n']} | {p['mean']:+.3f} | "
                                 f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] | {p['wins']} | {p['losses']} |")
        checkpoints = [*snapshots, "final"]
        what = "mean Dice over regions" if TASKS[task].regions else "whole-tumour Dice"
        lines += ["", f"Ranking by {what} at each checkpoint (all auxiliaries present):", ""]
        ranks = {c: ranking(results, task, c) for c in checkpoints}
        for c in checkpoints:
            lines.append(f"- {c}: " + " > ".join(f"{s} {m:.3f}" for s, m in ranks[c]))
        if len(checkpoints) >= 2 and ranks[checkpoints[-2]]:
            same = [s for s, _ in ranks[checkpoints[-2]]] == [s for s, _ in ranks[checkpoints[-1]]]
            lines.append(f"- ranking {'unchanged' if same else 'CHANGED'} between {checkpoints[-2]} and final")
        default, means = chosen_default(results, task, fixed_default)
        if fixed_default:
            lines += ["", f"Default fusion fixed by an earlier study (`--default`): **{fixed_default}**"]
        elif len(means) > 1:
            lines += ["", "Default fusion (part 2, rule pre-registered in the script): "
                      + ", ".join(f"{v} {m:.3f}" for v, m in sorted(means.items(), key=lambda i: -i[1]))
                      + f" → **{default}**"]
        gpu = [r for r in results if r["task"] == task and r.get("gpu_peak_allocated_mib")]
        if gpu:
            lines += ["", "GPU: " + "; ".join(
                f"{r['variant']} fold {r['fold']}: {r['gpu_peak_allocated_mib']:.0f} MiB peak allocated, "
                f"{1 / r['seconds_per_iteration']:.1f} it/s, {r['iterations']} iterations" for r in gpu)]
        lines += memory_table([m for m in memory if m["task"] == task])
        lines += ["", f"Per-subject {headline(task)} Dice:", "",
                  "| subject | " + " | ".join(settings) + " |", "|---|" + "---:|" * len(settings)]
        subjects = sorted({c for s in settings for c in table[(task, s)]})
        for case in subjects:
            cells = [_fmt(table[(task, s)].get(case, {}).get(headline(task), (float("nan"),))[0]) for s in settings]
            lines.append(f"| {case} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("### Pre-registered goals")
    for g in goals(results, memory, fixed_default):
        lines.append(f"{g['goal']}. {g['text']}: **{g['verdict']}**")
        for c in g["checks"]:
            lines.append("   - " + ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in c.items()))
    return "\n".join(lines)


# -- driver ---------------------------------------------------------------------------------------


def record_file(task: str, variant: str, fold: int | None = None) -> str:
    """The results folder's name for a run's record (``fold`` given) or a variant's memory record."""
    return f"memory_{task}_{variant}.json" if fold is None else f"{task}_{variant}_fold{fold}.json"


def reuse_saved(sources: list[Path], results_dir: Path, mode: str, minutes: float, tag: str) -> int:
    """Seed ``results_dir`` with the run and memory records of earlier studies' raw JSON files.

    A record is written only where no file of that name is saved, so only the missing runs train; a record
    of another mode, budget or scale is refused. A record saved before runs carried their ``--default``
    gets its study's ``--default`` (the command in that file's header says it) and ``reused_from``, the
    file. Every file is checked before anything is written. Returns how many records were written; raises
    ``ValueError`` naming the file and what is wrong with it (unreadable, not a study's raw JSON, or
    values that do not match).
    """
    seeded = {}
    for source in sources:
        try:
            payload = json.loads(source.read_text())
            records = payload["runs"] + payload.get("step_memory", [])
            study_default = payload.get("args", {}).get("default")
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"--reuse {source}: not a readable brats_fusion.py results.json "
                             f"({type(error).__name__}: {error})") from error
        unnamed = [i for i, r in enumerate(records) if not isinstance(r, dict) or not {"task", "variant"} <= r.keys()]
        if unnamed:
            raise ValueError(f"--reuse {source}: records {unnamed[:5]} name no task and variant; "
                             "not a brats_fusion.py results.json")
        for record in records:
            if record.get("mode") != mode or ("minutes" in record and float(record["minutes"]) != minutes) \
                    or record.get("tag", tag) != tag:
                raise ValueError(f"{source}: {record['task']} {record['variant']} was made in mode "
                                 f"{record.get('mode')}, {record.get('minutes', minutes):g} min, "
                                 f"{record.get('tag', tag)}; this study is {mode}, {minutes:g} min, {tag}")
            name = record_file(record["task"], record["variant"], record.get("fold"))
            seeded.setdefault(name, {"default": study_default, **record, "reused_from": str(source)})
    written = 0
    if seeded:
        results_dir.mkdir(parents=True, exist_ok=True)
    for name, record in seeded.items():
        if not (results_dir / name).is_file():
            atomic_write_text(results_dir / name, json.dumps(record, default=float))
            written += 1
    return written


def reused_lines(sources: list[Path], results: list[dict[str, Any]], memory: list[dict[str, Any]]) -> list[str]:
    """One header line per ``--reuse`` file: how many of the report's runs and memory records are its."""
    lines = []
    for source in sources:
        first = json.loads(source.read_text())["header"].splitlines()[0]
        runs = sum(r.get("reused_from") == str(source) for r in results)
        records = sum(m.get("reused_from") == str(source) for m in memory)
        lines.append(f"Reused from {source}: {runs} of the {len(results)} runs and {records} of the "
                     f"{len(memory)} memory records ({first})")
    return lines


def _plain(value: Any) -> Any:
    """An argument as JSON holds it: paths (also in lists) as strings."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def _spawn(flag: str, job: dict[str, Any], env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, __file__, flag, json.dumps(job)], check=True,
                   env={**os.environ, **(env or {})})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", default=["A", "B"], choices=sorted(TASKS))
    parser.add_argument("--variants", nargs="*", default=None, help="default: every variant of each task")
    parser.add_argument("--folds", type=int, default=FOLDS, help="folds (subjects sorted by id, i -> i mod k)")
    parser.add_argument("--only-folds", type=int, nargs="*", default=None, help="run only these folds")
    parser.add_argument("--minutes", type=float, default=6.0, help="optimisation-time budget of every run")
    parser.add_argument("--snapshots", type=float, nargs="*", default=[0.5],
                        help="fractions of the budget whose weights are also evaluated (ranking stability)")
    parser.add_argument("--mode", choices=("2d", "3d"), default="2d", help="2.5D slices (default) or 3D patches")
    parser.add_argument("--scale", type=int, nargs=3, default=[2, 2, 4], help="low-resolution auxiliary scale")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per run")
    parser.add_argument("--match-iterations", metavar="REFERENCE", default=None,
                        help="train each fold for as many iterations as REFERENCE's finished run of that fold made "
                             "in its time budget (poly decay over iterations), instead of by the clock: for a "
                             "variant whose network is REFERENCE's (a dropout twin; early_1mm against "
                             "early_lowres) when the machine's speed has changed since REFERENCE ran")
    parser.add_argument("--default", choices=DEFAULT_CANDIDATES, default=None,
                        help="the default fusion an earlier study of these tasks chose (part 2's rule); goals are "
                             "judged on it, for a follow-up study that does not rerun every candidate")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 subjects per task at 2 mm, fold 0, 3 variants, 0.2 min, no snapshot")
    parser.add_argument("--gpu", action="store_true",
                        help="task B, fold 0, primary_only/early_lowres/the --default in 3D at 128^3 on CUDA")
    parser.add_argument("--prepare-only", action="store_true", help="make the low-resolution copies and manifests")
    parser.add_argument("--memory-only", action="store_true",
                        help="measure only each variant's training-step peak memory and time (goal 4; seconds per "
                             "variant, no training): e.g. --mode 3d, where no 3D study fits this CPU")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--keep-checkpoints", action="store_true")
    parser.add_argument("--reuse", type=Path, nargs="*", default=[], metavar="RESULTS_JSON",
                        help="raw JSON of earlier studies of the same mode, budget and scale: their runs and "
                             "memory records are put in the results folder where none is saved, so only the "
                             "missing runs train; the header names each file")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_brats_fusion")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_only and args.gpu:
        parser.error("--memory-only measures CPU training steps; --gpu measures trained runs on CUDA: choose one")
    if (args.mode == "3d" or args.gpu) and (twins := same_network_in_3d(args.variants or ())):
        parser.error(f"in 3D {twins[0][0]} and {twins[0][1]} train the same network (a 3D model sees every "
                     "auxiliary whole: no slice to choose); list one")
    if args.worker or args.memory_worker:
        job = json.loads(args.worker or args.memory_worker)
        out = run_one(job) if args.worker else step_memory(job)
        atomic_write_text(job["result"], json.dumps(out, default=float))  # a saved file means a finished run
        return 0
    shared = all((SHARED / s).is_dir() for s in ("brats18_t1_flair", "brats19_multimodal"))
    carried = args.gpu and (args.data_dir / "task_b.yaml").is_file()  # a GPU machine: data prepared and carried
    if not shared and not carried:
        print(f"benchmark needs {SHARED}/brats18_t1_flair and brats19_multimodal", file=sys.stderr)
        return 2
    scale, tag = tuple(args.scale), _tag(tuple(args.scale))
    tasks, minutes, snapshots, mode, fold_ids = args.tasks, args.minutes, args.snapshots, args.mode, args.only_folds
    limit = None
    if args.quick:
        limit, fold_ids, minutes, snapshots = 3, [0], 0.2, []
    if args.gpu:
        tasks, mode, fold_ids, snapshots = ["B"], "3d", [0], []
    out = args.out / ("quick" if args.quick else "gpu" if args.gpu else f"{mode}_{minutes:g}min_{tag}")
    try:
        reuse_saved(args.reuse, out / "results", mode, minutes, tag)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    (out / "results").mkdir(parents=True, exist_ok=True)
    results, memory = [], []
    for key in tasks:
        task = TASKS[key]
        if shared:
            subjects = _subjects(task)
            if limit:
                subjects = subjects[:: max(1, len(subjects) // limit)][:limit]
            print(f"[brats_fusion] task {key}: preparing {len(subjects)} subjects in {args.data_dir}", flush=True)
            manifest = prepare(task, args.data_dir, scale, subjects, portable=args.gpu,
                               suffix="_quick" if limit else "")
        else:
            manifest = args.data_dir / f"task_{key.lower()}.yaml"
            subjects = [(c["case_id"], Path()) for c in _yaml(manifest)["cases"]]
        if args.prepare_only:
            continue
        variants = args.variants or (key_variants(args.default) if args.gpu else
                                     ("primary_only", "early_lowres", "segfuse_dropout") if args.quick
                                     else tuple(v for v in variants_of(task)
                                                if v not in DESIGN_VARIANTS + DROPOUT_TWINS + PAIRS_TWINS
                                                + SUBSETS_TWINS))
        unknown = sorted(set(variants) - set(variants_of(task)))
        if unknown:
            print(f"task {key} has no variants {unknown}; it has {list(variants_of(task))}", file=sys.stderr)
            return 2
        folds = folds_of([c for c, _ in subjects], len(subjects) if limit else args.folds)
        for variant in variants:
            early = stacked(task, manifest, variant.removeprefix("early_"), tag) if variant.startswith("early_") \
                else None
            base = {"task": key, "variant": variant, "mode": mode, "gpu": args.gpu, "scale": list(scale), "tag": tag,
                    "manifest": str(manifest), "early_manifest": str(early) if early else None,
                    "minutes": minutes, "snapshots": snapshots, "threads": args.threads, "out": str(out),
                    "keep_checkpoints": args.keep_checkpoints, "val_cases": folds[0], "name": "memory", "fold": 0,
                    "quick": args.quick, "default": args.default}
            if not trained_with_dropout(variant) and not args.gpu:  # a dropout twin's step is its design's
                path = out / "results" / record_file(key, variant)
                if not path.is_file():
                    _spawn("--memory-worker", {**base, "result": str(path)}, {"MALLOC_MMAP_THRESHOLD_": "1048576"})
                memory.append(json.loads(path.read_text()))
                if stale := stale_design(memory[-1], path, args.default):
                    print(stale, file=sys.stderr)
                    return 2
            elif args.memory_only:
                print(f"[brats_fusion] {variant}: not measured (a twin's step is measured as {design_of(variant)})",
                      file=sys.stderr)
            if args.memory_only:
                continue
            for fold in fold_ids if fold_ids is not None else range(len(folds)):
                path = out / "results" / record_file(key, variant, fold)
                if not path.is_file():
                    job = {**base, "fold": fold, "val_cases": folds[fold], "name": f"{key}_{variant}_fold{fold}",
                           "result": str(path)}
                    if args.match_iterations:
                        reference = out / "results" / record_file(key, args.match_iterations, fold)
                        if not reference.is_file():
                            print(f"--match-iterations: {reference} does not exist; run {args.match_iterations} "
                                  f"on fold {fold} first", file=sys.stderr)
                            return 2
                        job.update(iterations=int(json.loads(reference.read_text())["iterations"]),
                                   iterations_matched_to=args.match_iterations)
                    budget = f"{job['iterations']} iterations" if job.get("iterations") else f"{minutes:g} min"
                    print(f"[brats_fusion] task {key} {variant} fold {fold}: {budget} on "
                          f"{len(subjects) - len(folds[fold])} subjects, evaluating {folds[fold]}", flush=True)
                    _spawn("--worker", job)
                results.append(json.loads(path.read_text()))
                if stale := stale_design(results[-1], path, args.default):
                    print(stale, file=sys.stderr)
                    return 2
    if args.prepare_only:
        print(f"wrote the manifests and low-resolution copies under {args.data_dir}")
        return 0
    stamp = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {machine_line()}\nCommand: `{' '.join(sys.argv)}`"
    stamp += "".join(f"\n{line}" for line in reused_lines(args.reuse, results, memory))
    if args.memory_only:
        text = f"Training-step memory and time (goal 4), mode {mode}, {stamp}\n" + "\n".join(memory_table(memory))
        (out / "memory.md").write_text(text + "\n")
        (out / "memory.json").write_text(json.dumps(memory, indent=2, default=float))
        print(text)
        return 0
    header = (f"BraTS fusion study (issue 12), mode {mode}, {minutes:g} min optimisation per run, auxiliaries at "
              f"{tag}, snapshots {snapshots}, {stamp}")
    snapshot_names = [f"{round(f * 100):03d}pct" for f in snapshots]
    text = report(results, memory, snapshot_names, args.default)
    (out / "results.md").write_text(header + "\n\n" + text + "\n")
    payload = {"header": header, "goals_preregistered": GOALS, "goals": goals(results, memory, args.default),
               "runs": results, "step_memory": memory,
               "args": {k: _plain(v) for k, v in vars(args).items()}}
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=float))
    print(header)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
