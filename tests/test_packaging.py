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
    with pytest.raises(ValueError, match=r"no bundled sample named 'brats'.*hippocampus"):
        sample_data_path("brats")


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
