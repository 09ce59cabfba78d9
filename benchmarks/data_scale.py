"""Data at real scale (issue 11): the preprocessed store against the old in-memory path.

Synthetic BraTS-size cases are written to disk once — a 240 × 240 × 155 int16 T1
with a head-shaped foreground (scalp, skull, brain, a tumour), a FLAIR on the
2 × 2 × 4 edge-aligned grid (120 × 120 × 39, int16) and a whole-tumour label — and
``configs/brats_t1_flair_lowres.yaml`` is run on the first N of them, N = 20, 100,
400 by default. For each N it reports:

- ``segfuse preprocess`` wall time per case with ``-j 1`` and with ``-j 2`` (each
  into a fresh store; the ``-j 2`` store is deleted once timed, to save disk);
- ``segfuse train`` on the warm ``-j 1`` store: seconds from the process start to
  the first batch (the first iteration), iterations per second at batch 2 on the
  CPU (``training.num_workers`` as given, default 0 as on CPU), and the peak RSS
  and PSS of the whole process tree (training process plus batch workers, polled
  from ``/proc`` every 0.25 s; PSS counts pages shared between processes once);
- bytes on disk per case: the store against the raw ``.nii.gz`` files.

The old in-memory path is commit ``98fe8fa`` (before the store), checked out with
``git worktree add --detach`` into the output folder (removed again at the end)
and run the same way (its ``train`` prepares every case in memory first), for N up
to ``--old-max-n`` (default 100).

Disk: a raw case takes about 3.3 MB of ``.nii.gz`` (a real BraTS 2018 T1 + 2×2×4
FLAIR + label: 4.1 MB) and about 5 s to make, once; a store case about 47 MB
(float32 primary, uncropped: see ``docs/benchmarks.md``), so N = 400 needs about
22 GB free. The script checks the free space first. Linux only (``/proc``).

Usage::

    python benchmarks/data_scale.py --quick                    # N = 4, small volumes, tiny network (smoke)
    python benchmarks/data_scale.py --n 20,100,400 --json runs/data_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from segfuse.machine import machine_info

ROOT = Path(__file__).resolve().parent.parent
OLD_COMMIT = "98fe8fa"
CONFIG = ROOT / "configs" / "brats_t1_flair_lowres.yaml"
AUX = "flair_2x2x4mm"
SCALE = (2, 2, 4)
STORE_BYTES_PER_VOXEL = 4 + 1 + 4 / 16  # float32 primary, uint8 label, float32 aux at 1/16 of the voxels
QUICK_MODEL = [
    "model.widen_factor=0.25", "model.decoder_channels=[32,16,8,8]", "model.deep_supervision=false",
    "training.patch_size=[32,32,32]",
]


# -- synthetic data ---------------------------------------------------------------------------


def make_case(folder: Path, index: int, shape: tuple[int, int, int]) -> None:
    """One synthetic case: T1 (int16), FLAIR on the 2×2×4 grid (int16), whole-tumour label (uint8)."""
    import nibabel as nib
    import numpy as np
    import torch

    from segfuse.io.geometry import aux_grid

    rng = np.random.default_rng(index)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS-like, 1 mm, as BraTS
    affine[:3, 3] = [shape[0] / 2, shape[1] / 2, -shape[2] / 2]
    axes = [np.arange(n, dtype=np.float32) - n / 2 for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    radii = np.array([0.36, 0.44, 0.42]) * np.array(shape) * rng.uniform(0.92, 1.0, 3)
    head = np.sqrt((x / radii[0]) ** 2 + (y / radii[1]) ** 2 + ((z + 0.05 * shape[2]) / radii[2]) ** 2)
    centre = rng.uniform(-0.3, 0.3, 3) * radii
    t_radius = rng.uniform(0.12, 0.25) * radii.min()
    tumour = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) < t_radius
    t1 = np.zeros(shape, np.float32)
    t1[head < 1.0] = 300  # scalp
    t1[head < 0.94] = 900  # skull
    t1[head < 0.88] = 600  # brain
    t1[tumour & (head < 0.88)] = 450
    t1 += (head < 1.0) * rng.standard_normal(shape, dtype=np.float32) * 25
    label = (tumour & (head < 0.88)).astype(np.uint8)
    flair_full = np.where(head < 0.88, 500.0, np.where(head < 1.0, 200.0, 0.0)).astype(np.float32)
    flair_full[label > 0] = 1100
    flair_full += (head < 1.0) * rng.standard_normal(shape, dtype=np.float32) * 60  # pooled: about 15 per voxel
    flair = torch.nn.functional.avg_pool3d(torch.from_numpy(flair_full)[None, None], SCALE, ceil_mode=True)[0, 0]
    aux_affine, _ = aux_grid(affine, shape, SCALE)
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.clip(t1, 0, 32767).astype(np.int16), affine), folder / "t1.nii.gz")
    nib.save(nib.Nifti1Image(flair.numpy().astype(np.int16), aux_affine), folder / "flair_2x2x4mm.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), folder / "seg.nii.gz")


def write_manifest(data: Path, n: int) -> Path:
    """``manifest_<n>.yaml`` over the first ``n`` cases."""
    import yaml

    cases = [
        {"case_id": f"case{i:04d}", "primary": f"case{i:04d}/t1.nii.gz", "label": f"case{i:04d}/seg.nii.gz",
         "aux": {AUX: f"case{i:04d}/flair_2x2x4mm.nii.gz"}}
        for i in range(n)
    ]
    path = data / f"manifest_{n}.yaml"
    path.write_text(yaml.safe_dump({"labels": {0: "background", 1: "whole_tumour"}, "primary_name": "t1",
                                    "cases": cases}, sort_keys=False))
    return path


def raw_bytes(data: Path, n: int) -> int:
    return sum(f.stat().st_size for i in range(n) for f in (data / f"case{i:04d}").iterdir())


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- measuring a process tree -----------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return pids


def _kib(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(cmd: list[str], env: dict[str, str], cwd: Path) -> dict:
    """Run ``cmd``; wall seconds, exit code, output, peak RSS and PSS (MiB) of its process tree."""
    peak = {"rss": 0, "pss": 0}
    t0 = time.time()
    proc = subprocess.Popen(cmd, env={**env, "DATA_SCALE_T0": repr(t0)}, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            pids = _tree(proc.pid)
            peak["rss"] = max(peak["rss"], sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in pids))
            peak["pss"] = max(peak["pss"], sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids))
            done.wait(0.25)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    out, err = proc.communicate()
    seconds = time.time() - t0
    done.set()
    poller.join()
    return {"seconds": seconds, "returncode": proc.returncode, "stdout": out, "stderr": err,
            "peak_rss_mib": round(peak["rss"] / 1024, 1), "peak_pss_mib": round(peak["pss"] / 1024, 1)}


# -- the training child -----------------------------------------------------------------------


def child_train(overrides: list[str], run_dir: str) -> None:
    """Train in this process (old or new segfuse, whichever is on the path); print timings as JSON."""
    t0 = float(os.environ["DATA_SCALE_T0"])
    from segfuse.config import load_config
    from segfuse.training import loop
    from segfuse.training.prefetch import BatchPrefetcher

    stamps: list[float] = []
    original = BatchPrefetcher.next

    def timed_next(self):
        batch = original(self)
        stamps.append(time.time())
        return batch

    BatchPrefetcher.next = timed_next
    import segfuse

    # the config file of the segfuse being measured (the old commit's knows fewer keys)
    cfg = load_config(Path(segfuse.__file__).resolve().parents[1] / "configs" / CONFIG.name, overrides)
    result = loop.train(cfg, run_dir=run_dir, progress=False)
    skip = min(2, max(0, len(stamps) - 2))
    steady = (len(stamps) - 1 - skip) / (stamps[-1] - stamps[skip]) if len(stamps) - 1 > skip else float("nan")
    print(json.dumps({
        "first_batch_s": round(stamps[0] - t0, 2),
        "first_iteration_done_s": round(stamps[1] - t0, 2) if len(stamps) > 1 else None,
        "iterations": result.iteration,
        "its_per_s": round(steady, 4),
        "steady_skip_first": skip,
    }))


# -- the benchmark ----------------------------------------------------------------------------


def old_checkout(out: Path) -> Path:
    """A worktree of the pre-store commit inside ``out`` (made once)."""
    path = out / f"segfuse_{OLD_COMMIT}"
    if not (path / "segfuse" / "training" / "loop.py").is_file():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), OLD_COMMIT], check=True,
                       capture_output=True)
    return path


def train_overrides(manifest: Path, out: Path, tag: str, args, store: Path | None) -> list[str]:
    overrides = [
        f"data.dataset={manifest}", f"experiment.output_dir={out / 'runs'}", f"experiment.name={tag}",
        "training.device=cpu", "training.amp=false", "training.batch_size=2",
        f"training.iterations={args.iterations}", f"training.iterations_per_epoch={args.iterations}",
        "training.val_every=0", f"training.num_workers={args.workers}", "training.warmup_iterations=0",
    ]
    if store is not None:
        overrides.append(f"data.store={store}")
    return overrides + (QUICK_MODEL if args.quick else [])


def bench_n(n: int, data: Path, out: Path, args, env: dict[str, str]) -> dict:
    manifest = write_manifest(data, n)
    row: dict = {"n": n, "raw_bytes_per_case": round(raw_bytes(data, n) / n)}
    config = CONFIG
    base = [f"data.dataset={manifest}", f"experiment.output_dir={out / 'runs'}"]
    stores = {}
    for jobs in (1, 2):
        store = out / f"store_{n}_j{jobs}"
        shutil.rmtree(store, ignore_errors=True)
        cmd = [sys.executable, "-m", "segfuse", "preprocess", "--config", str(config), *base, f"data.store={store}",
               "-j", str(jobs), "--no-progress"]
        result = run_measured(cmd, env, out)
        if result["returncode"] != 0:
            raise SystemExit(f"preprocess -j {jobs} failed:\n{result['stderr'][-3000:]}")
        row[f"preprocess_j{jobs}_s_per_case"] = round(result["seconds"] / n, 3)
        row[f"preprocess_j{jobs}_peak_pss_mib"] = result["peak_pss_mib"]
        stores[jobs] = store
        print(f"N={n}: preprocess -j {jobs}: {result['seconds'] / n:.2f} s per case", flush=True)
    row["store_bytes_per_case"] = round(folder_bytes(stores[1]) / n)
    if not args.keep_stores:
        shutil.rmtree(stores[2])

    paths = [("store", str(ROOT), stores[1])]
    if n <= args.old_max_n and not args.skip_old:
        paths.append(("in_memory_98fe8fa", str(old_checkout(out)), None))
    for label, pythonpath, store in paths:
        tag = f"train_{label}_{n}"
        shutil.rmtree(out / "runs" / tag, ignore_errors=True)
        cmd = [sys.executable, __file__, "--child-train", json.dumps(train_overrides(manifest, out, tag, args, store)),
               "--run-dir", str(out / "runs" / tag)]
        result = run_measured(cmd, {**env, "PYTHONPATH": pythonpath}, out)
        if result["returncode"] != 0:
            row[f"{label}_error"] = result["stderr"][-2000:]
            print(f"N={n}: train ({label}) FAILED\n{result['stderr'][-2000:]}", flush=True)
            continue
        timing = json.loads(result["stdout"].strip().splitlines()[-1])
        row[label] = {**timing, "peak_rss_mib": result["peak_rss_mib"], "peak_pss_mib": result["peak_pss_mib"],
                      "wall_s": round(result["seconds"], 1)}
        print(f"N={n}: train ({label}): first batch after {timing['first_batch_s']} s, {timing['its_per_s']} it/s, "
              f"peak RSS {result['peak_rss_mib']} MiB (PSS {result['peak_pss_mib']} MiB)", flush=True)
    if not args.keep_stores:
        shutil.rmtree(stores[1])
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| N | path | preprocess s/case -j 1 | -j 2 | train start → 1st iteration (s) | it/s (CPU, batch 2) "
        "| peak RSS tree (MiB) | peak PSS tree (MiB) | disk bytes/case (raw .nii.gz) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for label in ("store", "in_memory_98fe8fa"):
            t = r.get(label)
            if t is None:
                continue
            pre = (f"{r['preprocess_j1_s_per_case']} | {r['preprocess_j2_s_per_case']}" if label == "store"
                   else "(inside train) | ")
            disk = f"{r['store_bytes_per_case']:,} ({r['raw_bytes_per_case']:,})" if label == "store" else ""
            lines.append(f"| {r['n']} | {label} | {pre} | {t['first_batch_s']} | {t['its_per_s']} | "
                         f"{t['peak_rss_mib']} | {t['peak_pss_mib']} | {disk} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", default="20,100,400", help="comma-separated case counts")
    p.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    p.add_argument("--iterations", type=int, default=20, help="training iterations timed per run")
    p.add_argument("--workers", default="0", help="training.num_workers for the training runs")
    p.add_argument("--old-max-n", type=int, default=100, help="largest N run on the old in-memory path")
    p.add_argument("--skip-old", action="store_true", help="do not run the old in-memory path")
    p.add_argument("--out", type=Path, default=Path("/tmp/segfuse_data_scale"))
    p.add_argument("--keep-stores", action="store_true", help="keep the stores (disk!) instead of deleting them")
    p.add_argument("--quick", action="store_true", help="N = 4, 64×64×40 volumes, 4 iterations, tiny network")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child-train", default=None, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_train is not None:
        child_train(json.loads(args.child_train), args.run_dir)
        return 0
    if args.quick:
        args.n, args.shape, args.iterations = "4", [64, 64, 40], 4
        args.out = args.out.with_name(args.out.name + "_quick")
    counts = sorted(int(v) for v in args.n.split(","))
    shape = tuple(args.shape)
    out = args.out.resolve()
    data = out / f"data_{'x'.join(map(str, shape))}"
    out.mkdir(parents=True, exist_ok=True)

    voxels = shape[0] * shape[1] * shape[2]
    need = max(counts) * (voxels * STORE_BYTES_PER_VOXEL * (2 if args.keep_stores else 1) + voxels * 0.6)
    free = shutil.disk_usage(out).free
    if need > free:
        raise SystemExit(f"{out}: about {need / 2**30:.1f} GiB needed for N={max(counts)}, "
                         f"{free / 2**30:.1f} GiB free; use smaller --n or another --out")
    sys.path.insert(0, str(ROOT))
    started = time.time()
    for i in range(max(counts)):
        if not (data / f"case{i:04d}" / "seg.nii.gz").is_file():
            make_case(data / f"case{i:04d}", i, shape)
    print(f"{max(counts)} synthetic cases of {shape} in {data} ({time.time() - started:.0f} s to make missing ones)",
          flush=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    try:
        rows = [bench_n(n, data, out, args, env) for n in counts]
    finally:  # the old checkout is registered in the repository's worktree list: take it out again
        old = out / f"segfuse_{OLD_COMMIT}"
        if old.exists():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
    print("\n" + table(rows))
    report = {
        "benchmark": "benchmarks/data_scale.py (issue 11)",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "shape": shape,
        "old_commit": OLD_COMMIT,
        "rows": rows,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if all("store" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
