"""predict under hostile inputs: dimensions, paths, disk full, batches, kills (issue 15, failures 4, 7, 8, 10)."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from reliability_helpers import (
    AFFINE,
    SHAPE,
    edit_header,
    env,
    flip_byte,
    manifest,
    run_segfuse,
    segfuse_cmd,
    temporaries,
    volume,
    wait_for,
    write_valid,
)

from segfuse.cli import main
from segfuse.data.layouts import read_dataset
from segfuse.inference.model import load_model
from segfuse.inference.predict import MANIFEST_NAME, predict


def _predict_image(ckpt: Path, image: Path, out: Path, *extra: str) -> int:
    return main(["predict", "--checkpoint", str(ckpt), "--image", str(image), "--out", str(out),
                 "--device", "cpu", "--no-progress", *extra])


def _predict_dataset(ckpt: Path, dataset: Path, out: Path, *extra: str) -> int:
    return main(["predict", "--checkpoint", str(ckpt), "--dataset", str(dataset), "--out", str(out),
                 "--device", "cpu", "--no-progress", *extra])


# ---------------------------------------------------------------- failure 4: dimensions


def test_4d_primary_with_two_volumes_is_refused_before_any_work(ckpt: Path, tmp_path: Path, capsys) -> None:
    image = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([volume(0), volume(1)], axis=-1), AFFINE), image)
    out = tmp_path / "seg.nii.gz"
    assert _predict_image(ckpt, image, out) == 2
    err = capsys.readouterr().err
    assert str(image) in err and "(18, 16, 10, 2)" in err and "expects a volume" in err
    assert not out.exists() and not temporaries(tmp_path)


def test_2d_image_is_refused_by_a_3d_model(ckpt: Path, tmp_path: Path, capsys) -> None:
    image = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(volume(0)[:, :, 4], AFFINE), image)
    out = tmp_path / "seg.nii.gz"
    assert _predict_image(ckpt, image, out) == 2
    err = capsys.readouterr().err
    assert str(image) in err and "(18, 16)" in err and "3D model expects a volume" in err
    assert not out.exists()


def test_a_length_one_fourth_axis_is_a_plain_volume(ckpt: Path, tmp_path: Path) -> None:
    image = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(volume(0)[..., None], AFFINE), image)
    out = tmp_path / "seg.nii.gz"
    assert _predict_image(ckpt, image, out) == 0
    assert nib.load(out).shape == SHAPE


# ---------------------------------------------------------------- failure 7: output = input


def test_output_equal_to_the_input_is_refused_and_the_scan_kept(valid: Path, ckpt: Path, tmp_path: Path,
                                                                capsys) -> None:
    before = valid.read_bytes()
    assert _predict_image(ckpt, valid, valid) == 2
    assert "replace an input" in capsys.readouterr().err
    link = tmp_path / "link.nii.gz"
    link.symlink_to(valid)
    assert _predict_image(ckpt, valid, link) == 2
    assert _predict_image(ckpt, valid, tmp_path / "." / "valid.nii.gz") == 2
    assert valid.read_bytes() == before and link.is_symlink()


def test_dataset_output_folder_over_its_inputs_refuses_only_the_clashing_case(ckpt: Path, tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    write_valid(scans / "c1.nii.gz", 1)  # out/c1.nii.gz would be this very scan
    write_valid(scans / "c2_t1.nii.gz", 2)
    (tmp_path / "cases.csv").write_text("case_id,primary\nc1,scans/c1.nii.gz\nc2,scans/c2_t1.nii.gz\n")
    before = (scans / "c1.nii.gz").read_bytes()
    result = predict(ckpt, tmp_path / "cases.csv", scans, progress=False)
    assert (scans / "c1.nii.gz").read_bytes() == before
    assert [r.case_id for r in result.succeeded] == ["c2"] and "replace an input" in result.failed["c1"]


# ---------------------------------------------------------------- failure 8: paths escaping --out


def test_case_ids_escaping_the_output_folder_write_nothing_outside_it(ckpt: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    outside = tmp_path / "outside"
    absolute = str(outside / "abs")
    cases = manifest(data, ["good1", "../escape", absolute, ".hidden", "good2"])
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "preds"
    assert _predict_dataset(ckpt, cases, out) == 1
    printed = capsys.readouterr().out
    new = {p for p in tmp_path.rglob("*")} - before
    assert all(out in p.parents or p == out for p in new), sorted(new)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["good1.nii.gz", "good2.nii.gz"]
    assert "2 predicted" in printed and "3 failed" in printed
    for bad in ("../escape", absolute, ".hidden"):
        assert f"FAILED {bad}: case id" in printed


# ---------------------------------------------------------------- a batch with bad cases


def test_batch_with_bad_cases_predicts_the_good_ones_and_lists_each_bad_one(ckpt: Path, tmp_path: Path,
                                                                          capsys) -> None:
    def make(path: Path, name: str, seed: int) -> Path:
        good = write_valid(path.with_name(f"good{seed}.nii.gz"), seed)
        if name == "crc":
            return flip_byte(good, path, good.stat().st_size - 6)
        if name == "slope":
            return edit_header(good, path, scl_slope=1e37, scl_inter=0.0)
        if name == "dtype":
            return edit_header(good, path, datatype=9999)
        if name == "huge":
            return edit_header(good, path, dim=[3, 4096, 4096, 4096, 1, 1, 1, 1])
        if name == "twovolumes":
            nib.save(nib.Nifti1Image(np.stack([volume(0), volume(1)], -1), AFFINE), path)
            return path
        return write_valid(path, seed)

    names = ["ok1", "crc", "slope", "dtype", "ok2", "huge", "twovolumes", "ok3"]
    cases = manifest(tmp_path / "data", names, make)
    out = tmp_path / "preds"
    assert _predict_dataset(ckpt, cases, out) == 1
    printed = capsys.readouterr().out
    assert "3 predicted, 0 skipped (resume), 5 failed" in printed
    reasons = {"crc": "corrupted", "slope": "float32", "dtype": "9999", "huge": "smaller than its header",
               "twovolumes": "4th axis"}
    for name, reason in reasons.items():
        line = next(line for line in printed.splitlines() if line.startswith(f"FAILED {name}:"))
        assert reason in line, line
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["ok1.nii.gz", "ok2.nii.gz", "ok3.nii.gz"]
    recorded = json.loads((out / MANIFEST_NAME).read_text())
    assert sorted(recorded["cases"]) == ["ok1", "ok2", "ok3"]


# ---------------------------------------------------------------- failure 10: disk full


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_names_the_file_keeps_the_summary_and_leaves_no_temporaries(ckpt: Path, tmp_path: Path) -> None:
    """A real kernel refusal (RLIMIT_FSIZE): small label maps fit, a big one and predictions.json do not."""

    def make(path: Path, name: str, seed: int) -> Path:
        if name == "big":  # a noisy 40^3 volume: a larger label map than the others
            rng = np.random.default_rng(seed)
            return write_valid(path, data=rng.normal(0, 100, (40, 40, 40)).astype(np.float32))
        return write_valid(path, seed)

    names = ["c0", "c1", "c2", "big", "d0", "d1", "d2"]
    cases = manifest(tmp_path / "data", names, make)
    reference = tmp_path / "reference"
    predict(ckpt, cases, reference, progress=False)
    sizes = {n: (reference / f"{n}.nii.gz").stat().st_size for n in names}
    small = max(v for n, v in sizes.items() if n != "big")
    assert sizes["big"] > small + 64, f"set-up: the big label map must be the largest file, got {sizes}"
    limit = (small + sizes["big"]) // 2  # the disk is "full" for anything larger
    assert (reference / MANIFEST_NAME).stat().st_size > limit

    out = tmp_path / "preds"
    proc = subprocess.run(
        segfuse_cmd("predict", "--checkpoint", str(ckpt), "--dataset", str(cases), "--out", str(out),
                    "--device", "cpu", "--no-progress"),
        env=env(), capture_output=True, text=True, timeout=180, preexec_fn=_limit_file_size(limit),
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    summary = proc.stdout
    assert "6 predicted, 0 skipped (resume), 1 failed" in summary, summary
    assert f"FAILED big: {out / 'big.nii.gz'}: cannot write it" in summary
    assert f"ERROR: {out / MANIFEST_NAME}: cannot write it" in summary
    assert not temporaries(out)
    assert not (out / "big.nii.gz").exists() and len(list(out.glob("*.nii.gz"))) == 6


def test_resume_removes_temporaries_of_killed_runs_but_not_of_live_ones(ckpt: Path, tmp_path: Path) -> None:
    cases = manifest(tmp_path / "data", ["a", "b"])
    out = tmp_path / "preds"
    out.mkdir()
    stale = [out / ".tmp-999999999-0123456789ab-a.nii.gz", out / ".tmp-0123456789ab-b.nii.gz"]
    for path in stale:
        path.write_bytes(b"half a file")
    os.utime(stale[1], (0, 0))  # an old-style name, untouched for decades
    live = out / f".tmp-{os.getppid()}-0123456789ab-x.nii.gz"  # pytest's parent: alive
    live.write_bytes(b"being written")
    assert _predict_dataset(ckpt, cases, out, "--resume") == 0
    assert [p for p in stale if p.exists()] == [] and live.exists()
    from segfuse.io.atomic import remove_stale_temporaries  # here: the suite also runs against older code

    assert remove_stale_temporaries(out) == []


# ---------------------------------------------------------------- kills, repeatability, concurrency


def test_repeated_prediction_is_byte_identical(valid: Path, ckpt: Path, tmp_path: Path) -> None:
    assert _predict_image(ckpt, valid, tmp_path / "a.nii.gz", "--probabilities") == 0
    assert _predict_image(ckpt, valid, tmp_path / "b.nii.gz", "--probabilities") == 0
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()
    assert (tmp_path / "a_probabilities.nii.gz").read_bytes() == (tmp_path / "b_probabilities.nii.gz").read_bytes()


def _labels(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.nii.gz"))}


def test_killed_dataset_run_resumes_to_byte_identical_outputs(ckpt: Path, tmp_path: Path) -> None:
    names = [f"case{i:02d}" for i in range(8)]
    cases = manifest(tmp_path / "data", names)
    reference = tmp_path / "reference"
    predict(ckpt, cases, reference, progress=False)
    out = tmp_path / "preds"
    log = tmp_path / "first_run.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(segfuse_cmd("predict", "--checkpoint", str(ckpt), "--dataset", str(cases), "--out",
                                            str(out), "--device", "cpu", "--no-progress"),
                                env=env(), stdout=subprocess.DEVNULL, stderr=handle)
        try:  # a loaded machine can take minutes to start torch; stop waiting if the run ended
            started = wait_for(lambda: len(list(out.glob("case*.nii.gz"))) >= 1 or proc.poll() is not None,
                               timeout=600)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
    assert started, "the first run wrote no prediction within 10 minutes"
    done = len(list(out.glob("case*.nii.gz")))
    assert 1 <= done < len(names), f"not killed in the middle ({done} of {len(names)}): {log.read_text()[-2000:]}"
    resumed = run_segfuse("predict", "--checkpoint", str(ckpt), "--dataset", str(cases), "--out", str(out),
                          "--device", "cpu", "--no-progress", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "skipped (resume)" in resumed.stdout and not resumed.stdout.startswith("0 predicted, 0 skipped")
    assert _labels(out) == _labels(reference)
    assert not temporaries(out)


def test_two_processes_predicting_into_one_folder_leave_complete_consistent_files(ckpt: Path, tmp_path: Path) -> None:
    names = [f"case{i:02d}" for i in range(6)]
    cases = manifest(tmp_path / "data", names)
    reference = tmp_path / "reference"
    predict(ckpt, cases, reference, progress=False, save_probabilities=True)
    out = tmp_path / "preds"
    procs = [
        subprocess.Popen(segfuse_cmd("predict", "--checkpoint", str(ckpt), "--dataset", str(cases), "--out", str(out),
                                     "--device", "cpu", "--no-progress", "--resume", "--probabilities"),
                         env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-1500:] for r in results]
    assert _labels(out) == _labels(reference)
    assert _labels(out / "probabilities") == _labels(reference / "probabilities")
    recorded = json.loads((out / MANIFEST_NAME).read_text())
    assert sorted(recorded["cases"]) == names
    for entry in recorded["cases"].values():
        for output in entry["outputs"].values():
            assert hashlib.sha256((out / output["path"]).read_bytes()).hexdigest() == output["sha256"]
    assert not temporaries(out)


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc to read memory use")
def test_batch_of_100_with_5_corrupt_gives_95_masks_5_errors_and_flat_memory(ckpt: Path, tmp_path: Path) -> None:
    shape = (16, 16, 8)  # one sliding window per case
    corrupt = {7: "crc", 23: "truncated", 48: "random", 61: "nan", 90: "huge"}

    def make(path: Path, name: str, seed: int) -> Path:
        good = write_valid(path, seed, shape=shape)
        kind = corrupt.get(seed)
        if kind == "crc":
            flip_byte(good, path, good.stat().st_size - 6)
        elif kind == "truncated":
            path.write_bytes(good.read_bytes()[:300])
        elif kind == "random":
            path.write_bytes(np.random.default_rng(seed).integers(0, 256, 3000, dtype=np.uint8).tobytes())
        elif kind == "nan":
            data = volume(seed, shape)
            data[5, 5, 5] = np.nan
            write_valid(path, data=data)
        elif kind == "huge":
            edit_header(good, path, dim=[3, 4096, 4096, 4096, 1, 1, 1, 1])
        return path

    cases = manifest(tmp_path / "data", [f"c{i:03d}" for i in range(100)], make)
    model = load_model(ckpt)
    warmup = read_dataset(cases, require_labels=False).cases[:10]
    predict(model, warmup, tmp_path / "warmup", progress=False)  # allocator and caches reach their size
    baseline, peak, running = _rss(), [0], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], _rss())
            threading.Event().wait(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = predict(model, cases, tmp_path / "preds", progress=False)
    finally:
        running[0] = False
        sampler.join()
    assert len(result.succeeded) == 95 and len(list((tmp_path / "preds").glob("*.nii.gz"))) == 95
    assert sorted(result.failed) == sorted(f"c{i:03d}" for i in corrupt)
    assert "95 predicted, 0 skipped (resume), 5 failed" in result.summary()
    growth = max(peak[0], _rss()) - baseline
    assert growth < 40 * 2**20, f"memory grew by {growth / 2**20:.1f} MiB over the second 100-case run"
