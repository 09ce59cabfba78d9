"""The preprocessed store: exact round trip, padded views, change detection, interruption, concurrency."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from segfuse.config import AugmentConfig, config_from_dict
from segfuse.data.layouts import read_dataset
from segfuse.data.preprocess import crop_to_nonzero, prepare_case, preprocessing_from_config
from segfuse.data.sampling import PaddedArray, pad_case, sample_patch
from segfuse.data.store import build_store, open_store, store_path
from segfuse.io.errors import SegfuseInputError
from segfuse.io.geometry import aux_grid, from_canonical

REPO = Path(__file__).resolve().parents[1]
SCALES = {"flair": (2, 2, 4), "t2": (1, 1, 2)}
NO_AUGMENT = AugmentConfig(flip_prob=0.0, rotate_prob=0.0, scale_prob=0.0, intensity_prob=0.0)


def make_dataset(root: Path, affine: np.ndarray, n_cases: int = 3, shape=(22, 18, 13)) -> Path:
    """Cases on an oblique LPS grid: a head-like blob in zeros, two auxiliaries on their own grids
    (t2 missing in the last case), a two-class label."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(float)
    entries = []
    for i in range(n_cases):
        centre = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
        r = np.linalg.norm((grid - centre[:, None, None, None]) / np.array([8, 7, 4])[:, None, None, None], axis=0)
        image = np.where(r < 1, 200 + 30 * rng.standard_normal(shape), 0).astype(np.int16)
        label = ((r < 0.5).astype(np.uint8) + (r < 0.25)).astype(np.uint8)
        folder = root / f"case{i}"
        folder.mkdir(parents=True)
        nib.save(nib.Nifti1Image(image, affine), folder / "t1.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), folder / "seg.nii.gz")
        aux = {}
        for name, scale in SCALES.items():
            if name == "t2" and i == n_cases - 1:
                continue
            a_affine, a_shape = aux_grid(affine, shape, scale)
            nib.save(nib.Nifti1Image(rng.random(a_shape).astype(np.float32) * 100, a_affine), folder / f"{name}.nii.gz")
            aux[name] = f"case{i}/{name}.nii.gz"
        entries.append({"case_id": f"case{i}", "primary": f"case{i}/t1.nii.gz", "label": f"case{i}/seg.nii.gz",
                        "aux": aux})
    manifest = root / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"labels": {0: "bg", 1: "outer", 2: "inner"}, "primary_name": "t1",
                                        "cases": entries}))
    return manifest


def store_config(manifest: Path, out: Path, **data) -> dict:
    return {
        "experiment": {"output_dir": str(out)},
        "data": {"dataset": str(manifest), "aux": {name: {"scale": list(s)} for name, s in SCALES.items()},
                 "target_spacing": None, **data},
        "training": {"patch_size": [16, 16, 16]},
    }


@pytest.fixture
def manifest(tmp_path, oblique_affine) -> Path:
    return make_dataset(tmp_path / "data", oblique_affine)


def resolved(cfg_dict: dict):
    cfg = config_from_dict(cfg_dict)
    dataset = read_dataset(cfg.data.dataset, aux=list(cfg.data.aux))
    cfg.data.labels, cfg.data.primary = dict(dataset.labels), dataset.primary_name
    return cfg, dataset


@pytest.mark.parametrize("spacing", [None, [1.0, 1.5, 2.0]], ids=["native", "resampled"])
def test_store_round_trips_every_array_and_the_restore_geometry(manifest, tmp_path, spacing):
    cfg, dataset = resolved(store_config(manifest, tmp_path / "runs", target_spacing=spacing))
    store, report = build_store(cfg, dataset.cases, workers=1, progress=False)
    assert sorted(report.built) == ["case0", "case1", "case2"] and report.reused == 0
    assert store.path == store_path(cfg) and store.path.parent == tmp_path / "runs" / "preprocessed"
    spec = preprocessing_from_config(cfg)
    for case in dataset.cases:
        prepared = prepare_case(case, spec)
        expected = crop_to_nonzero(prepared, SCALES)
        stored = store.cases[case.case_id]
        got = stored.load(mmap=True)
        assert isinstance(got.primary, np.memmap)
        np.testing.assert_array_equal(got.primary, expected.primary)
        assert got.primary.dtype == np.float32 and got.label.dtype == np.uint8
        np.testing.assert_array_equal(got.label, expected.label)
        for name in SCALES:
            if expected.aux[name] is None:
                assert got.aux[name] is None and case.case_id == "case2" and name == "t2"
                continue
            # each auxiliary on its own grid: ceil(primary shape / scale), never the primary's
            assert got.aux[name].shape[1:] == tuple(-(-n // s) for n, s in zip(got.shape, SCALES[name], strict=True))
            np.testing.assert_array_equal(got.aux[name], expected.aux[name])
        np.testing.assert_array_equal(got.affine, expected.affine)
        assert got.offset == expected.offset
        geometry = stored.geometry
        source = nib.load(case.primary.path)
        np.testing.assert_array_equal(geometry["source_affine"], source.affine)
        assert geometry["source_shape"] == source.shape
        np.testing.assert_array_equal(geometry["grid_affine"], prepared.affine)
        assert geometry["grid_shape"] == prepared.shape
        # the head-like blob in zeros is cropped (before normalisation moves the zeros)
        assert np.prod(got.shape) < 0.75 * np.prod(geometry["grid_shape"])
        if spacing is None:
            # the stored label, put back into the canonical grid and un-flipped, is the label file exactly
            assert geometry["grid_shape"] == geometry["canonical_shape"]
            full = np.zeros(geometry["grid_shape"], np.uint8)
            full[tuple(slice(o, o + n) for o, n in zip(got.offset, got.shape, strict=True))] = got.label
            back = from_canonical(full[None], geometry["canonical_affine"], geometry["source_affine"])[0]
            np.testing.assert_array_equal(back, np.asarray(nib.load(case.label).dataobj))
    again, report = build_store(cfg, dataset.cases, workers=1, progress=False)
    assert report.built == [] and report.reused == 3
    assert open_store(cfg, dataset.cases).cases.keys() == again.cases.keys()


@pytest.mark.parametrize("margin_steps", [0, 1])
def test_stored_padded_view_samples_exactly_what_the_in_memory_case_gives(manifest, tmp_path, margin_steps):
    cfg, dataset = resolved(store_config(manifest, tmp_path / "runs"))
    store, _ = build_store(cfg, dataset.cases, workers=1, progress=False)
    patch, margin = (16, 16, 8), [margin_steps * 2, margin_steps * 2, margin_steps * 4]
    for case in dataset.cases:
        stored = store.cases[case.case_id]
        memory = pad_case(stored.load(), SCALES, patch, margin)
        lazy = stored.padded(SCALES, patch, margin)
        assert isinstance(lazy.primary.base, Path)  # read from the file, not held
        assert lazy.primary.shape == memory.primary.shape
        for value, points in memory.foreground.items():
            assert len(lazy.foreground[value]) == len(points)
            for i in (0, len(points) // 2, len(points) - 1):
                np.testing.assert_array_equal(lazy.foreground[value][i], points[i])
        for seed in range(6):
            a = sample_patch(memory, patch, margin, SCALES, {}, np.random.default_rng(seed), seed % 2 == 0, NO_AUGMENT)
            b = sample_patch(lazy, patch, margin, SCALES, {}, np.random.default_rng(seed), seed % 2 == 0, NO_AUGMENT)
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_padded_array_indexes_like_the_padded_copy():
    rng = np.random.default_rng(0)
    base = rng.random((2, 5, 7, 3), dtype=np.float32)
    before, shape = (0, 3, 1, 4), (2, 12, 10, 9)
    padded = np.pad(base, [(b, s - n - b) for b, n, s in zip(before, base.shape, shape, strict=True)])
    view = PaddedArray.of(base, before, shape)
    keys = [
        (slice(None), slice(0, 12), slice(2, 9), slice(0, 9)),
        (slice(None), slice(4, 6), slice(0, 1), slice(8, 9)),  # all padding
        (slice(None), slice(3, 8), slice(1, 8), slice(4, 7)),  # all inside
        (1,),
        (slice(None), np.array([0, 3, 3, 11]), slice(1, 5), 5),
        (0, 4, slice(None), np.array([2, 4, 5])),
        (slice(None), 5, np.array([1, 2]), slice(3, 6)),
    ]
    for key in keys:
        np.testing.assert_array_equal(view[key], padded[key], err_msg=str(key))
    np.testing.assert_array_equal(np.asarray(view), padded)


def test_a_changed_input_file_is_named_and_only_its_case_is_prepared_again(manifest, tmp_path):
    cfg, dataset = resolved(store_config(manifest, tmp_path / "runs"))
    build_store(cfg, dataset.cases, workers=1, progress=False)
    t1 = manifest.parent / "case1" / "t1.nii.gz"
    image = nib.load(t1)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj) + 7, image.affine), t1)
    with pytest.raises(SegfuseInputError, match=rf"case1 is out of date: {t1}.*changed"):
        open_store(cfg, dataset.cases)
    store, report = build_store(cfg, dataset.cases, workers=1, progress=False)
    assert report.built == ["case1"] and report.reused == 2
    assert str(t1) in report.changed["case1"] and "changed" in report.changed["case1"]
    assert "case1: preprocessed again" in report.summary()
    expected = crop_to_nonzero(prepare_case(dataset.cases[1], preprocessing_from_config(cfg)), SCALES)
    np.testing.assert_array_equal(store.cases["case1"].load().primary, expected.primary)


def test_a_touched_file_with_the_same_content_is_reused_and_a_same_size_edit_is_not(manifest, tmp_path):
    cfg, dataset = resolved(store_config(manifest, tmp_path / "runs"))
    build_store(cfg, dataset.cases, workers=1, progress=False)
    t1, flair = manifest.parent / "case0" / "t1.nii.gz", manifest.parent / "case2" / "flair.nii.gz"
    for path in (t1, flair):  # a copy or checkout: new mtimes, same bytes
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * 10**9))
    open_store(cfg, dataset.cases)  # the digests vouch for the files: not out of date
    store, report = build_store(cfg, dataset.cases, workers=1, progress=False)
    assert report.built == [] and report.reused == 3 and report.touched == 2
    assert "new mtime and the same content" in report.summary()
    record = json.loads((store.cases["case0"].folder / "case.json").read_text())
    entry = next(e for e in record["inputs"] if e["role"] == "primary")
    assert entry["mtime_ns"] == t1.stat().st_mtime_ns  # remembered: the next start hashes nothing
    assert build_store(cfg, dataset.cases, workers=1, progress=False)[1].touched == 0


def test_a_same_size_rewrite_is_caught_by_its_digest(manifest, tmp_path):
    cfg, dataset = resolved(store_config(manifest, tmp_path / "runs"))
    build_store(cfg, dataset.cases, workers=1, progress=False)
    seg = manifest.parent / "case1" / "seg.nii.gz"
    raw = bytearray(seg.read_bytes())
    raw[4] ^= 1  # a bit of the gzip header's MTIME field: other bytes, same size, still a valid file
    seg.write_bytes(bytes(raw))
    os.utime(seg, ns=(seg.stat().st_atime_ns, seg.stat().st_mtime_ns + 10**9))  # a coarse clock cannot hide it
    with pytest.raises(SegfuseInputError, match=r"case1 is out of date: .*seg\.nii\.gz changed \(same size.*SHA-256"):
        open_store(cfg, dataset.cases)
    _, report = build_store(cfg, dataset.cases, workers=1, progress=False)
    assert report.built == ["case1"] and report.touched == 0


def test_a_store_made_with_other_settings_is_refused_naming_the_key(manifest, tmp_path):
    explicit = str(tmp_path / "mystore")
    cfg, dataset = resolved(store_config(manifest, tmp_path / "runs", store=explicit))
    build_store(cfg, dataset.cases, workers=1, progress=False)
    other, _ = resolved(store_config(manifest, tmp_path / "runs", store=explicit, target_spacing=[1.0, 1.0, 1.0]))
    with pytest.raises(SegfuseInputError, match=r"mystore.*other settings.*data\.target_spacing: store None"):
        build_store(other, dataset.cases, workers=1, progress=False)
    with pytest.raises(SegfuseInputError, match=r"data\.target_spacing"):
        open_store(other, dataset.cases)
    tree = store_config(manifest, tmp_path / "runs", store=explicit)
    tree["data"]["aux"]["flair"]["norm"] = {"kind": "ct"}
    with pytest.raises(SegfuseInputError, match=r"data\.aux\.flair\.norm"):
        build_store(resolved(tree)[0], dataset.cases, workers=1, progress=False)
    # by default, other settings simply get a store of their own beside the first
    a, _ = resolved(store_config(manifest, tmp_path / "runs"))
    b, _ = resolved(store_config(manifest, tmp_path / "runs", target_spacing=[1.0, 1.0, 1.0]))
    assert store_path(a) != store_path(b) and store_path(a).parent == store_path(b).parent


def _preprocess_command(config: Path, workers: int = 1) -> list[str]:
    return [sys.executable, "-m", "segfuse", "preprocess", "--config", str(config), "-j", str(workers),
            "--no-progress"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _pool_workers(pid: int) -> list[int]:
    """Process ids of the ``ProcessPoolExecutor`` workers (spawned children) of process ``pid``."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to find the worker processes")
def test_a_worker_killed_mid_case_leaves_no_half_case_and_the_build_resumes(tmp_path, oblique_affine):
    manifest = make_dataset(tmp_path / "data", oblique_affine, n_cases=6)
    tree = store_config(manifest, tmp_path / "runs")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tree))
    cfg, dataset = resolved(tree)
    cases_dir = store_path(cfg) / "cases"
    proc = subprocess.Popen(_preprocess_command(config, workers=2), env=_env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # generous: a loaded machine starts workers slowly
    killed = []
    while time.monotonic() < deadline and proc.poll() is None and not killed:
        # kill the workers once a case is half-written (its temporary folder exists) and one is done
        if cases_dir.is_dir():
            entries = [e.name for e in os.scandir(cases_dir)]
            if any(e.startswith(".tmp-") for e in entries) and any(not e.startswith(".") for e in entries):
                for pid in _pool_workers(proc.pid):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
    _, err = proc.communicate(timeout=60)
    assert killed, f"preprocess ended before its workers could be killed: {err}"
    assert proc.returncode != 0 and "worker process died" in err and "again to resume" in err, err
    published = sorted(p.name for p in cases_dir.iterdir() if not p.name.startswith("."))
    assert 1 <= len(published) < 6
    for name in published:  # every published case is complete
        record = json.loads((cases_dir / name / "case.json").read_text())
        assert record["case_id"] == name
        assert all((cases_dir / name / f).is_file() for f in ("primary.npy", "label.npy", "aux_flair.npy"))
    with pytest.raises(SegfuseInputError, match="is not in the store"):
        open_store(cfg, dataset.cases)  # a reader never takes a temporary folder for a case

    mtimes = {name: (cases_dir / name / "case.json").stat().st_mtime_ns for name in published}
    store, report = build_store(cfg, dataset.cases, workers=1, progress=False)
    assert report.reused == len(published) and sorted(report.built + published) == [f"case{i}" for i in range(6)]
    assert not list(cases_dir.glob(".*")), "leftovers of the killed run are removed"
    assert all((cases_dir / n / "case.json").stat().st_mtime_ns == t for n, t in mtimes.items())
    spec = preprocessing_from_config(cfg)
    for case in dataset.cases:
        expected = crop_to_nonzero(prepare_case(case, spec), SCALES)
        np.testing.assert_array_equal(store.cases[case.case_id].load().primary, expected.primary)


def test_two_processes_building_one_store_prepare_each_case_once(manifest, tmp_path):
    """Two builders started together on one store: the lock lets one prepare, the other waits and reuses."""
    import fcntl

    tree = store_config(manifest, tmp_path / "runs")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tree))
    cfg, dataset = resolved(tree)
    root = store_path(cfg)
    root.mkdir(parents=True)
    logs = [tmp_path / f"err{i}.txt" for i in range(2)]
    with open(root / ".lock", "w") as lock, open(logs[0], "w") as err0, open(logs[1], "w") as err1:
        fcntl.flock(lock, fcntl.LOCK_EX)  # hold the store until both builders are waiting for it
        procs = [subprocess.Popen(_preprocess_command(config), env=_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=err, text=True) for err in (err0, err1)]
        deadline = time.monotonic() + 600  # generous: a loaded machine starts workers slowly
        while time.monotonic() < deadline and not all("waiting" in log.read_text() for log in logs):
            time.sleep(0.05)
        assert all("another process is building this store" in log.read_text() for log in logs)
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [log.read_text() for log in logs]
    built = sorted(int(out.split("(")[1].split(" preprocessed")[0]) for out in outputs)
    assert built == [0, 3], outputs  # one process prepared all three, the other then reused them
    store = open_store(cfg, dataset.cases)
    reference, _ = build_store(resolved(store_config(manifest, tmp_path / "runs", store=str(tmp_path / "ref")))[0],
                               dataset.cases, workers=1, progress=False)
    for case in dataset.cases:
        got, expected = store.cases[case.case_id].load(), reference.cases[case.case_id].load()
        np.testing.assert_array_equal(got.primary, expected.primary)
        np.testing.assert_array_equal(got.label, expected.label)
        for name in SCALES:
            assert (got.aux[name] is None) == (expected.aux[name] is None)
            if got.aux[name] is not None:
                np.testing.assert_array_equal(got.aux[name], expected.aux[name])
