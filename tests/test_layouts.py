"""Dataset layouts → cases: decathlon, nnU-Net v2 raw, CSV/YAML manifests, splits."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from segfuse.data.cases import Case, ImageRef
from segfuse.data.layouts import read_dataset, split_cases
from segfuse.io.errors import SegfuseInputError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def _nifti(path: Path, shape: tuple[int, ...] = (4, 5, 6), dtype: type = np.float32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype), np.eye(4)), str(path))
    return path


def _msd(root: Path, modality: dict[str, str], ids: list[str], shape: tuple[int, ...]) -> Path:
    training = []
    for cid in ids:
        _nifti(root / "imagesTr" / f"{cid}.nii.gz", shape)
        _nifti(root / "labelsTr" / f"{cid}.nii.gz", shape[:3], np.uint8)
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    meta = {
        "name": "Toy",
        "modality": modality,
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": len(ids),
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _nnunet(root: Path, ids: list[str]) -> Path:
    for cid in ids:
        _nifti(root / "imagesTr" / f"{cid}_0000.nii.gz")
        _nifti(root / "imagesTr" / f"{cid}_0001.nii.gz")
        _nifti(root / "labelsTr" / f"{cid}.nii.gz", dtype=np.uint8)
    meta = {
        "channel_names": {"0": "T1", "1": "FLAIR"},
        "labels": {"background": 0, "tumour": 1},
        "numTraining": len(ids),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


# --------------------------------------------------------------------------- MSD


def test_msd_3d_single_modality(tmp_path: Path) -> None:
    root = _msd(tmp_path / "Task04", {"0": "MRI"}, ["hip_002", "hip_001"], (4, 5, 6))
    ds = read_dataset(root)
    assert ds.layout == "msd" and ds.root == root.resolve()
    assert [c.case_id for c in ds.cases] == ["hip_002", "hip_001"]
    assert ds.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert ds.primary_name == "mri" and ds.aux_names == []
    case = ds.cases[1]
    assert case.primary == ImageRef(root.resolve() / "imagesTr" / "hip_001.nii.gz", None)
    assert case.aux == {} and case.label == root.resolve() / "labelsTr" / "hip_001.nii.gz"
    # The dataset.json file itself is accepted too.
    assert read_dataset(root / "dataset.json").cases == ds.cases


def test_msd_4d_two_modalities_gives_channel_refs(tmp_path: Path) -> None:
    root = _msd(tmp_path / "Task01", {"0": "FLAIR", "1": "T1w"}, ["b_1", "b_2"], (4, 5, 6, 2))
    ds = read_dataset(root)
    assert ds.primary_name == "flair" and ds.aux_names == ["t1w"]
    image = root.resolve() / "imagesTr" / "b_1.nii.gz"
    assert ds.cases[0].primary == ImageRef(image, 0)
    assert ds.cases[0].aux == {"t1w": ImageRef(image, 1)}

    swapped = read_dataset(root, primary="t1w")
    assert swapped.primary_name == "t1w" and swapped.aux_names == ["flair"]
    assert swapped.cases[0].primary.channel == 1 and swapped.cases[0].aux["flair"].channel == 0
    assert read_dataset(root, aux=[]).cases[0].aux == {}


def test_msd_duplicate_modality_names_made_unique(tmp_path: Path) -> None:
    root = _msd(tmp_path / "T", {"0": "MRI", "1": "MRI", "2": "T2 Weighted"}, ["a"], (2, 2, 2, 3))
    assert read_dataset(root).aux_names == ["mri_2", "t2_weighted"]


def test_unknown_primary_lists_available_names(tmp_path: Path) -> None:
    root = _msd(tmp_path / "T", {"0": "FLAIR", "1": "T1w"}, ["a"], (2, 2, 2, 2))
    with pytest.raises(SegfuseInputError, match=r"unknown primary modality 't2'.*'flair', 't1w'"):
        read_dataset(root, primary="t2")
    with pytest.raises(SegfuseInputError, match=r"unknown auxiliary modalities \['pd'\]"):
        read_dataset(root, aux=["pd"])
    with pytest.raises(SegfuseInputError, match=r"cannot also be an auxiliary"):
        read_dataset(root, aux=["flair"])


def test_missing_files_listed_all_at_once(tmp_path: Path) -> None:
    ids = [f"c{i:02d}" for i in range(25)]
    root = _msd(tmp_path / "T", {"0": "MRI"}, ids, (2, 2, 2))
    for cid in ids:
        (root / "imagesTr" / f"{cid}.nii.gz").unlink()
    (root / "labelsTr" / "c03.nii.gz").unlink()
    with pytest.raises(SegfuseInputError) as info:
        read_dataset(root)
    message = str(info.value)
    assert "26 referenced files do not exist" in message
    assert "c00.nii.gz (mri of c00)" in message and "c03.nii.gz (label of c03)" in message
    assert "… and 6 more" in message
    assert "\n" not in message  # the CLI prints errors as one line


def test_duplicate_case_ids(tmp_path: Path) -> None:
    root = _msd(tmp_path / "T", {"0": "MRI"}, ["a", "b"], (2, 2, 2))
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append(dict(meta["training"][0]))
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(SegfuseInputError, match=r"1 case ids appear more than once: a \("):
        read_dataset(root)


def test_unrecognised_sources(tmp_path: Path) -> None:
    with pytest.raises(SegfuseInputError, match=r"does not exist"):
        read_dataset(tmp_path / "nowhere")
    with pytest.raises(SegfuseInputError, match=r"no dataset.json"):
        read_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(SegfuseInputError, match=r"unrecognised dataset.json.*\['name'\]"):
        read_dataset(tmp_path)


# --------------------------------------------------------------------------- nnU-Net


def test_nnunet_raw_two_channels(tmp_path: Path) -> None:
    root = _nnunet(tmp_path / "Dataset001_Toy", ["case_b", "case_a"])
    (root / "imagesTr" / "notes.txt").write_text("ignored")
    ds = read_dataset(root)
    assert ds.layout == "nnunet"
    assert ds.labels == {0: "background", 1: "tumour"}
    assert ds.primary_name == "t1" and ds.aux_names == ["flair"]
    assert [c.case_id for c in ds.cases] == ["case_a", "case_b"]
    images = root.resolve() / "imagesTr"
    assert ds.cases[0] == Case(
        "case_a",
        ImageRef(images / "case_a_0000.nii.gz"),
        {"flair": ImageRef(images / "case_a_0001.nii.gz")},
        root.resolve() / "labelsTr" / "case_a.nii.gz",
    )


def test_nnunet_missing_channel_and_label(tmp_path: Path) -> None:
    root = _nnunet(tmp_path / "D", ["a", "b"])
    (root / "imagesTr" / "b_0001.nii.gz").unlink()
    (root / "labelsTr" / "a.nii.gz").unlink()
    with pytest.raises(SegfuseInputError, match=r"2 referenced files.*a\.nii\.gz.*b_0001"):
        read_dataset(root)
    # Without that channel and without required labels, it reads.
    ds = read_dataset(root, aux=[], require_labels=False)
    assert ds.cases[0].label is None and ds.cases[1].label is not None


def test_nnunet_region_labels_rejected(tmp_path: Path) -> None:
    root = _nnunet(tmp_path / "D", ["a"])
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "whole": [1, 2]}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(SegfuseInputError, match=r"region-based"):
        read_dataset(root)


# --------------------------------------------------------------------------- manifests


def test_csv_manifest_with_empty_aux_cell(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for cid in ("s1", "s2"):
        _nifti(data / cid / "t1.nii.gz")
        _nifti(data / cid / "seg.nii.gz")
    _nifti(data / "s1" / "flair.nii.gz")
    manifest = tmp_path / "cfg" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text(
        "case_id,primary,label,flair\n"
        "s1,../data/s1/t1.nii.gz,../data/s1/seg.nii.gz,../data/s1/flair.nii.gz\n"
        "s2,../data/s2/t1.nii.gz,../data/s2/seg.nii.gz,\n"
    )
    ds = read_dataset(manifest)
    assert ds.layout == "manifest" and ds.root == manifest.parent.resolve()
    assert ds.labels == {0: "background", 1: "foreground"}
    assert ds.primary_name == "primary" and ds.aux_names == ["flair"]
    s1, s2 = ds.cases
    assert s1.primary.path == (data / "s1" / "t1.nii.gz").resolve()
    assert s1.aux == {"flair": ImageRef((data / "s1" / "flair.nii.gz").resolve())}
    assert s2.aux == {}  # missing auxiliary
    assert s2.label == (data / "s2" / "seg.nii.gz").resolve()

    tumour = read_dataset(manifest, labels={1: "tumour"})
    assert tumour.labels == {0: "background", 1: "tumour"}
    # An auxiliary cannot become primary where a case lacks it.
    with pytest.raises(SegfuseInputError, match=r"1 cases have no 'flair' scan.*s2"):
        read_dataset(manifest, primary="flair")


def test_csv_manifest_errors(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("case_id,label\na,x.nii.gz\n")
    with pytest.raises(SegfuseInputError, match=r"'primary'/'image'"):
        read_dataset(manifest)
    manifest.write_text("case_id,image\na,a.nii.gz\n")
    with pytest.raises(SegfuseInputError, match=r"no 'label' column"):
        read_dataset(manifest)
    _nifti(tmp_path / "a.nii.gz")
    ds = read_dataset(manifest, require_labels=False)
    assert ds.primary_name == "image" and ds.cases[0].label is None
    manifest.write_text("case_id,image,label\na,a.nii.gz,\n")
    with pytest.raises(SegfuseInputError, match=r"1 cases have no label.*a \(m.csv line 2\)"):
        read_dataset(manifest)
    manifest.write_text("case_id,image,label\na,a.nii.gz,a.nii.gz\na,a.nii.gz,a.nii.gz\n")
    with pytest.raises(SegfuseInputError, match=r"case ids appear more than once"):
        read_dataset(manifest)


def test_yaml_manifest(tmp_path: Path) -> None:
    for cid in ("p1", "p2"):
        _nifti(tmp_path / cid / "t1.nii.gz")
        _nifti(tmp_path / cid / "mask.nii.gz")
        _nifti(tmp_path / cid / "flair_lr.nii.gz", (2, 3, 2))
    _nifti(tmp_path / "p1" / "flair.nii.gz")
    spec = {
        "labels": {0: "background", 1: "tumour"},
        "primary_name": "t1",
        "cases": [
            {
                "case_id": "p1",
                "primary": "p1/t1.nii.gz",
                "label": "p1/mask.nii.gz",
                "aux": {"flair": "p1/flair.nii.gz", "flair_lr": "p1/flair_lr.nii.gz"},
            },
            {
                "case_id": "p2",
                "image": "p2/t1.nii.gz",
                "label": "p2/mask.nii.gz",
                "aux": {"flair_lr": "p2/flair_lr.nii.gz"},
            },
        ],
    }
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump(spec))
    ds = read_dataset(manifest)
    assert ds.layout == "manifest" and ds.labels == {0: "background", 1: "tumour"}
    assert ds.primary_name == "t1" and ds.aux_names == ["flair", "flair_lr"]
    assert set(ds.cases[0].aux) == {"flair", "flair_lr"} and set(ds.cases[1].aux) == {"flair_lr"}
    assert read_dataset(manifest, aux=["flair_lr"]).cases[0].aux.keys() == {"flair_lr"}

    with pytest.raises(SegfuseInputError, match=r"declares labels.*labels argument"):
        read_dataset(manifest, labels={0: "bg", 1: "other"})

    spec["cases"][0]["mask"] = "p1/mask.nii.gz"
    manifest.write_text(yaml.safe_dump(spec))
    with pytest.raises(SegfuseInputError, match=r"cases\[0\]: unknown keys \['mask'\]"):
        read_dataset(manifest)


# --------------------------------------------------------------------------- split


def _cases(n: int) -> list[Case]:
    return [Case(f"case_{i:03d}", ImageRef(Path(f"{i}.nii.gz")), {}, None) for i in range(n)]


def test_split_is_deterministic_and_order_independent() -> None:
    cases = _cases(20)
    train, val = split_cases(cases, 5, seed=7)
    assert len(train) == 15 and len(val) == 5
    assert {c.case_id for c in train}.isdisjoint(c.case_id for c in val)
    assert split_cases(list(reversed(cases)), 5, seed=7) == (train, val)
    assert split_cases(cases, 5, seed=8)[1] != val
    assert val == sorted(val, key=lambda c: c.case_id)


def test_split_fraction_and_bounds() -> None:
    cases = _cases(10)
    assert len(split_cases(cases, 0.2, seed=0)[1]) == 2
    assert len(split_cases(cases, 0.01, seed=0)[1]) == 1
    assert split_cases(cases, 0, seed=0) == (cases, [])
    for bad in (10, -1, 1.0, True):
        with pytest.raises(SegfuseInputError, match="n_val"):
            split_cases(cases, bad, seed=0)


# --------------------------------------------------------------------------- real data

requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"real data folder {SHARED_DATA} is absent"
)


@pytest.mark.realdata
@requires_shared_data
def test_real_hippocampus() -> None:
    ds = read_dataset(SHARED_DATA / "hippocampus")
    assert ds.layout == "msd" and len(ds.cases) == 200
    assert set(ds.labels) == {0, 1, 2}
    assert ds.aux_names == [] and all(c.label is not None for c in ds.cases)
    train, val = split_cases(ds.cases, 40, seed=0)
    assert len(train) == 160 and len(val) == 40


@pytest.mark.realdata
@requires_shared_data
@pytest.mark.parametrize("name", ["brats18_manifest.yaml", "brats18_manifest.csv"])
def test_real_brats_manifest(name: str) -> None:
    labels = {0: "background", 1: "whole_tumour"}
    ds = read_dataset(PROJECT_ROOT / "configs" / name, labels=labels)
    assert len(ds.cases) == 10 and ds.labels == labels
    assert ds.aux_names == ["flair", "flair_2x2x4mm"]
    for case in ds.cases:
        assert set(case.aux) == {"flair", "flair_2x2x4mm"}
        assert case.primary.path.name == "t1.nii.gz"
        assert case.label is not None and case.label.name == "whole_tumour.nii.gz"
        assert case.primary.path.parent.name == case.case_id


@pytest.mark.realdata
@requires_shared_data
def test_real_brats_manifests_agree() -> None:
    yaml_ds = read_dataset(PROJECT_ROOT / "configs" / "brats18_manifest.yaml")
    csv_ds = read_dataset(PROJECT_ROOT / "configs" / "brats18_manifest.csv")
    assert yaml_ds.cases == csv_ds.cases
