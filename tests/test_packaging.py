"""Packaging: the bundled sample, its licence, the wheel, the Dockerfile, the set-up commands."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from segfuse.sample import sample_data_path

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
N_SAMPLE = 24


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _requirement(name: str) -> Requirement:
    reqs = [Requirement(r) for r in _pyproject()["project"]["dependencies"]]
    found = [r for r in reqs if r.name.lower() == name]
    assert len(found) == 1, f"pyproject should declare {name} once, found {found}"
    return found[0]


def _pins(text: str) -> dict[str, str]:
    """``torch==2.14.1``-style pins of torch and torchvision in a Makefile or Dockerfile."""
    return dict(re.findall(r"\b(torch|torchvision)==([0-9][0-9A-Za-z.+]*)", text))


# ------------------------------------------------------------------ the sample


def test_sample_dataset_json_matches_files() -> None:
    root = sample_data_path()
    assert root.is_dir() and root.name == "hippocampus"
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    images = sorted(p.name for p in (root / "imagesTr").iterdir())
    labels = sorted(p.name for p in (root / "labelsTr").iterdir())
    assert len(images) == N_SAMPLE
    assert images == labels
    assert meta["numTraining"] == N_SAMPLE == len(meta["training"])
    listed = sorted(Path(e["image"]).name for e in meta["training"])
    assert listed == images
    for entry in meta["training"]:
        name = Path(entry["image"]).name
        assert entry == {"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"}
    assert meta["name"] == "Hippocampus"
    assert meta["modality"] == {"0": "MRI"}
    assert meta["labels"] == {"0": "background", "1": "Anterior", "2": "Posterior"}
    assert meta["licence"] == "CC-BY-SA 4.0"
    assert meta["reference"] == "Vanderbilt University Medical Center"


def test_sample_reads_as_msd_dataset() -> None:
    from segfuse.data.layouts import read_dataset

    ds = read_dataset(sample_data_path())
    assert (ds.layout, len(ds.cases), ds.primary_name) == ("msd", N_SAMPLE, "mri")
    assert ds.labels == {0: "background", 1: "Anterior", 2: "Posterior"}


def test_sample_licence_attributes_the_source() -> None:
    text = (sample_data_path() / "LICENSE.md").read_text(encoding="utf-8")
    for needed in (
        "CC BY-SA 4.0",
        "creativecommons.org/licenses/by-sa/4.0",
        "Medical Segmentation Decathlon",
        "Task04 Hippocampus",
        "Vanderbilt University Medical Center",
        "Simpson",
        "Antonelli",
        "unmodified",
    ):
        assert needed in text, needed


def test_unknown_sample_name_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"no bundled sample named 'nope'.*\['brats', 'hippocampus'\]"):
        sample_data_path("nope")


# ------------------------------------------------------------------ the BraTS demo sample

BRATS_SUBJECTS = 12


def test_brats_sample_reads_as_nnunet_dataset_with_a_coarse_flair() -> None:
    from segfuse.data.layouts import read_dataset

    root = sample_data_path("brats")
    ds = read_dataset(root)
    assert (ds.layout, len(ds.cases), ds.primary_name, ds.aux_names) == ("nnunet", BRATS_SUBJECTS, "t1", ["flair"])
    assert ds.labels == {0: "background", 1: "whole_tumour"}
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    assert meta["numTraining"] == BRATS_SUBJECTS
    files = sorted(p.name for p in (root / "imagesTr").iterdir())
    assert files == sorted(f"{c.case_id}_{i:04d}.nii.gz" for c in ds.cases for i in (0, 1))
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == sorted(f"{c.case_id}.nii.gz" for c in ds.cases)


def test_brats_sample_geometry_t1_2mm_flair_4x4x8mm_on_the_edge_aligned_grid() -> None:
    import numpy as np

    from segfuse.data.layouts import read_dataset
    from segfuse.io.geometry import aux_grid, axcodes
    from segfuse.io.image import read_image

    for case in read_dataset(sample_data_path("brats")).cases:
        t1, flair, label = read_image(case.primary.path), read_image(case.aux["flair"].path), read_image(case.label)
        assert t1.spacing == pytest.approx((2.0, 2.0, 2.0)), case.case_id
        assert flair.spacing == pytest.approx((4.0, 4.0, 8.0)), case.case_id
        assert axcodes(t1.affine) == ("L", "P", "S"), case.case_id  # orientation kept as BraTS ships it
        affine, shape = aux_grid(t1.affine, t1.shape, (2, 2, 4))
        assert flair.shape == shape and np.allclose(flair.affine, affine, atol=1e-5), case.case_id
        assert all(n % s == 0 for n, s in zip(t1.shape, (2, 2, 4), strict=True)), "same field of view"
        assert label.shape == t1.shape and np.allclose(label.affine, t1.affine), case.case_id
        assert set(np.unique(label.array).tolist()) == {0, 1}, case.case_id
        assert t1.array.dtype == np.int16 and flair.array.dtype == np.int16


def test_brats_sample_is_small_and_licensed() -> None:
    root = sample_data_path("brats")
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 5e6, f"the BraTS sample should stay a few MB, it is {size / 1e6:.1f} MB"
    text = (root / "LICENSE.md").read_text(encoding="utf-8")
    for needed in ("BraTS 2018", "BraTS 2019", "Menze", "Bakas", "Modified", "data/make_brats_sample.py",
                   "10.1109/TMI.2014.2377694", "10.1038/sdata.2017.117", "1811.02629"):
        assert needed in text, needed


@pytest.mark.realdata
def test_brats_sample_is_remade_byte_for_byte_from_shared_data(shared_data: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "data" / "make_brats_sample.py"), "--data", str(shared_data),
         "--out", str(tmp_path / "brats")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    root = sample_data_path("brats")
    shipped = sorted(str(p.relative_to(root)) for p in root.rglob("*.nii.gz"))
    remade = sorted(str(p.relative_to(tmp_path / "brats")) for p in (tmp_path / "brats").rglob("*.nii.gz"))
    assert remade == shipped
    for name in shipped:
        assert (tmp_path / "brats" / name).read_bytes() == (root / name).read_bytes(), name
    assert (tmp_path / "brats" / "dataset.json").read_text() == (root / "dataset.json").read_text()


@pytest.mark.realdata
def test_sample_is_first_24_unmodified_cases_of_shared_data(shared_data: Path) -> None:
    source = shared_data / "hippocampus"
    first = sorted(p.name for p in (source / "imagesTr").iterdir())[:N_SAMPLE]
    root = sample_data_path()
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == first
    for name in first:
        for sub in ("imagesTr", "labelsTr"):
            assert (root / sub / name).read_bytes() == (source / sub / name).read_bytes(), f"{sub}/{name}"
    src_meta = json.loads((source / "dataset.json").read_text(encoding="utf-8"))
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    for key in ("name", "labels", "modality", "licence", "reference", "tensorImageSize"):
        assert meta[key] == src_meta[key], key


def test_wheel_contains_sample_and_licence(tmp_path: Path) -> None:
    # Build from a copy so the test leaves no build/ or egg-info in the work tree.
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", src)
    shutil.copy2(ROOT / "README.md", src)
    shutil.copytree(ROOT / "segfuse", src / "segfuse", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    done = subprocess.run([*cmd, str(src), "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "dist").glob("segfuse-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    base = "segfuse/sample/hippocampus"
    assert {f"{base}/dataset.json", f"{base}/LICENSE.md", "segfuse/sample/__init__.py", "segfuse/cli.py"} <= names
    for sub in ("imagesTr", "labelsTr"):
        assert len([n for n in names if n.startswith(f"{base}/{sub}/") and n.endswith(".nii.gz")]) == N_SAMPLE
    brats = "segfuse/sample/brats"
    assert {f"{brats}/dataset.json", f"{brats}/LICENSE.md", "segfuse/sample/demo.yaml",
            "segfuse/sample/demo_hippocampus.yaml"} <= names
    assert len([n for n in names if n.startswith(f"{brats}/imagesTr/")]) == 2 * BRATS_SUBJECTS
    assert len([n for n in names if n.startswith(f"{brats}/labelsTr/")]) == BRATS_SUBJECTS
    # installed size: every file the wheel unpacks, uncompressed (issue 16: under 20 MB)
    installed = sum(info.file_size for info in zipfile.ZipFile(wheel).infolist())
    assert installed < 20e6, f"segfuse installs {installed / 1e6:.1f} MB; keep it under 20 MB"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "segfuse = segfuse.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# ------------------------------------------------------------------ pyproject


def test_torch_requirement_admits_the_pinned_release() -> None:
    spec = _requirement("torch").specifier
    assert spec.contains("2.14.1")
    assert not spec.contains("2.14.2"), "torch stays capped at 2.14.1 (the release served from local disk)"


def test_monai_requirement_is_at_least_1_6() -> None:
    spec = _requirement("monai").specifier
    assert spec.contains("1.6.0") and spec.contains("1.6.1")
    assert not spec.contains("1.5.2")


def test_makefile_torch_pins_satisfy_pyproject() -> None:
    pins = _pins((ROOT / "Makefile").read_text(encoding="utf-8"))
    assert set(pins) == {"torch", "torchvision"}
    assert _requirement("torch").specifier.contains(pins["torch"])


# ------------------------------------------------------------------ Dockerfile (rules and lint: test_docker.py)


def test_dockerignore_excludes_local_state() -> None:
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()}
    assert {".venv", "runs", ".git"} <= ignored
    assert not {"segfuse", "pyproject.toml", "README.md"} & ignored


# ------------------------------------------------------------------ set-up commands


def test_readme_opens_with_the_two_setup_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```[a-z]*\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no code block"
    assert [line for line in blocks[0].splitlines() if line.strip()] == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "set -euo pipefail" in ci
    assert re.search(r"^make test$", ci, flags=re.M)
