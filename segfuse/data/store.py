"""The preprocessed store: every case prepared once, written to disk, read lazily by training.

``segfuse preprocess`` (or ``segfuse train``, when the store is missing or out of
date) runs each case through the one preprocessing path
(:func:`~segfuse.data.preprocess.prepare_case`, then
:func:`~segfuse.data.preprocess.crop_to_nonzero`) and writes it as plain ``.npy``
files that training memory-maps (:meth:`StoredCase.padded`)::

    STORE/
      store.json          manifest: store version, settings (the preprocessing config keys),
                          their digest, a fingerprint of settings + inputs, one record per case
      .lock               held (fcntl) by the one process building or updating the store
      cases/<case_id>/    published by one rename once complete, so never seen half-written
        primary.npy       (C, X, Y, Z) float32: network grid (canonical RAS, target spacing, cropped)
        aux_<name>.npy    (C_a, *ceil((X, Y, Z) / scale)) float32: the auxiliary on its own
                          edge-aligned grid, never upsampled; absent when the case lacks it
        label.npy         (X, Y, Z) uint8
        fg_<value>.npy    (N, 3) int32: voxels of each label value (at most 20 000)
        case.json         shapes, the grid's affine, the crop offset, the geometry that
                          restores the source grid, and the inputs' paths, sizes, mtimes and
                          SHA-256 digests

Where: ``data.store`` when set, else ``<experiment.output_dir>/preprocessed/<digest>``
with ``digest`` a hash of the settings, so changing a preprocessing key makes a new
store beside the old one. A store whose settings differ from the run's is refused
with the keys named; a case whose input files changed is prepared again, and only
that case. A file whose size and mtime are unchanged is taken as unchanged; one whose
mtime alone moved (a copy, a checkout, ``touch``) is read and compared by its SHA-256
digest, so a dataset copied to another disk is not prepared again. An interrupted build
leaves only ``.tmp-*`` folders behind, which the next build removes before it resumes
with the missing cases.

Example:
    >>> store, report = build_store(cfg, dataset.cases, workers=4)  # doctest: +SKIP
    >>> store.cases["hippocampus_004"].padded(scales, patch, margin).primary[:, :8, :8, :8].shape
    (1, 8, 8, 8)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segfuse.data.cases import Case
from segfuse.data.preprocess import (
    PreparedCase,
    Preprocessing,
    crop_to_nonzero,
    prepare_case,
    preprocessing_from_config,
)
from segfuse.data.sampling import PaddedCase, foreground_points, padded_view
from segfuse.io.atomic import atomic_write_text
from segfuse.io.errors import SegfuseInputError
from segfuse.io.geometry import canonical_grid

try:  # POSIX; elsewhere two builders of one store are not kept apart
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# 2: ``crop_to_nonzero`` crops to the primary's non-zero box found before normalisation
#    (version 1 looked after it, found the background moved off zero, and cropped nothing)
STORE_VERSION = 2
MANIFEST = "store.json"
CASES = "cases"
RECORD = "case.json"


# -- what made a store ---------------------------------------------------------------------


def store_settings(cfg) -> dict[str, Any]:
    """The config keys that decide what the store holds, by their dotted names, plus the store version.

    ``cfg.data.labels`` and ``cfg.data.primary`` must be resolved (as ``load_cases`` does).
    """
    d = cfg.data
    settings: dict[str, Any] = {
        "store_version": STORE_VERSION,
        "data.dataset": str(Path(d.dataset).resolve()),
        "data.primary": d.primary,
        "data.target_spacing": None if d.target_spacing is None else [float(v) for v in d.target_spacing],
        "data.primary_norm": d.primary_norm.to_dict(),
        "data.labels": sorted(int(k) for k in d.labels) if d.labels else [0, 1],
        "data.crop_to_nonzero": bool(d.crop_to_nonzero),
        "data.aux": sorted(d.aux),
    }
    for name, spec in sorted(d.aux.items()):
        settings[f"data.aux.{name}.scale"] = [int(s) for s in spec.scale]
        settings[f"data.aux.{name}.norm"] = spec.norm.to_dict()
    return settings


def settings_digest(settings: Mapping[str, Any]) -> str:
    """A short hex digest of ``settings`` (16 characters)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def store_path(cfg) -> Path:
    """``data.store``, or ``<experiment.output_dir>/preprocessed/<settings digest>``."""
    if cfg.data.store:
        return Path(cfg.data.store)
    return Path(cfg.experiment.output_dir) / "preprocessed" / settings_digest(store_settings(cfg))


def _stat(path: Path) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a file; for a folder (DICOM series) the sum of sizes and the newest mtime."""
    if path.is_dir():
        stats = [p.stat() for p in sorted(path.rglob("*")) if p.is_file()]
        return sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def content_digest(path: Path) -> str:
    """SHA-256 of a file's bytes; for a folder (DICOM series), of its files' relative paths and bytes."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(2**20):
                digest.update(chunk)
    return digest.hexdigest()


def _with_digests(inputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """:func:`input_stats` entries with each file's ``sha256`` added."""
    return [{**entry, "sha256": content_digest(Path(entry["path"]))} for entry in inputs]


def _stats_only(inputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in entry.items() if k != "sha256"} for entry in inputs]


def unchanged_inputs(stored: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]]) -> list | None:
    """The stored input entries brought up to date when ``current`` holds the same files, else ``None``.

    Args:
        stored: a case record's ``inputs`` (entries may carry ``sha256``).
        current: :func:`input_stats` of the case now.

    Returns:
        ``stored`` itself when nothing moved; a copy with the new mtimes when only mtimes
        moved and every such file's SHA-256 still matches the stored one; ``None`` when a
        path, channel, size or content differs (or an mtime moved on a file stored
        without a digest).
    """
    if _stats_only(stored) == list(current):
        return list(stored)
    if len(stored) != len(current):
        return None
    refreshed = []
    for old, new in zip(stored, current, strict=True):
        same_file = all(old.get(k) == new.get(k) for k in ("role", "path", "channel", "size"))
        if not same_file:
            return None
        moved = old.get("mtime_ns") != new["mtime_ns"]
        if moved and ("sha256" not in old or content_digest(Path(new["path"])) != old["sha256"]):
            return None
        refreshed.append({**new, **({"sha256": old["sha256"]} if "sha256" in old else {})})
    return refreshed


def input_stats(case: Case, aux_names: Sequence[str]) -> list[dict[str, Any]]:
    """One entry per input file of ``case``: role, path, channel, size and mtime (ns)."""
    refs: list[tuple[str, Path, int | None]] = [("primary", Path(case.primary.path), case.primary.channel)]
    for name in aux_names:
        if name in case.aux:
            refs.append((f"aux {name}", Path(case.aux[name].path), case.aux[name].channel))
    if case.label is not None:
        refs.append(("label", Path(case.label), None))
    out = []
    for role, path, channel in refs:
        size, mtime = _stat(path)
        out.append({"role": role, "path": str(path.resolve()), "channel": channel, "size": size, "mtime_ns": mtime})
    return out


def _what_changed(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> str:
    """Which input files differ between two :func:`input_stats` lists, in words."""
    before = {e["role"]: e for e in old}
    after = {e["role"]: e for e in new}
    parts = []
    for role in sorted(set(before) | set(after)):
        a, b = before.get(role), after.get(role)
        if a is None:
            parts.append(f"{role} {b['path']} is new")
        elif b is None:
            parts.append(f"{role} {a['path']} is gone")
        elif a["path"] != b["path"] or a["channel"] != b["channel"]:
            parts.append(f"{role} is now {b['path']} (was {a['path']})")
        elif a["size"] != b["size"]:
            parts.append(f"{b['path']} changed (size {a['size']} -> {b['size']} bytes)")
        elif a["mtime_ns"] != b["mtime_ns"]:
            if "sha256" not in a:
                parts.append(f"{b['path']} changed (mtime {a['mtime_ns']} -> {b['mtime_ns']} ns; stored without a "
                             "content digest, so it cannot be compared)")
            elif content_digest(Path(b["path"])) != a["sha256"]:
                parts.append(f"{b['path']} changed (same size, {a['size']} bytes, other content: SHA-256 differs)")
    return "; ".join(parts) or "its record was made with other settings"


def _settings_mismatch(path: Path, stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> SegfuseInputError:
    keys = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    details = "; ".join(f"{k}: store {stored.get(k)!r}, this run {wanted.get(k)!r}" for k in keys)
    hint = "choose another data.store, or delete that folder to rebuild it"
    return SegfuseInputError(f"{path}: the preprocessed store was made with other settings ({details}); {hint}")


# -- one stored case -----------------------------------------------------------------------


def folder_name(case_id: str) -> str:
    """The case's folder name: the id itself when it is a safe file name, else a hash of it."""
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,100}", case_id):
        return case_id
    return "case-" + hashlib.sha256(case_id.encode()).hexdigest()[:16]


@dataclass
class StoredCase:
    """A case in the store: its folder and its ``case.json`` record; arrays are read on demand.

    Attributes:
        folder: ``STORE/cases/<case_id>``.
        record: the parsed ``case.json`` (see the module docstring).
    """

    folder: Path
    record: dict[str, Any]

    @property
    def case_id(self) -> str:
        return self.record["case_id"]

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape of the primary ``(X, Y, Z)``."""
        return tuple(self.record["shape"])

    @property
    def channels(self) -> int:
        return int(self.record["channels"])

    @property
    def affine(self) -> np.ndarray:
        """Voxel → RAS mm of the stored (cropped) primary grid."""
        return np.asarray(self.record["affine"], dtype=np.float64)

    @property
    def offset(self) -> tuple[int, ...]:
        """Start of the stored primary inside the canonical grid at the target spacing."""
        return tuple(self.record["offset"])

    @property
    def geometry(self) -> dict[str, Any]:
        """What prediction needs to go back to the source grid: ``source_affine``, ``source_shape``,
        ``canonical_affine``/``canonical_shape`` (the source after flips and permutations),
        ``grid_affine``/``grid_shape`` (the canonical grid at the target spacing, before the crop)."""
        g = self.record["geometry"]
        return {k: np.asarray(v, dtype=np.float64) if k.endswith("affine") else tuple(v) for k, v in g.items()}

    def path(self, name: str) -> Path:
        return self.folder / name

    def load(self, mmap: bool = False) -> PreparedCase:
        """The case as a :class:`PreparedCase` (``source`` is ``None``); ``mmap``: memory-mapped arrays."""
        mode = "r" if mmap else None
        aux: dict[str, np.ndarray | None] = {}
        for name, entry in self.record["aux"].items():
            aux[name] = np.load(self.path(f"aux_{name}.npy"), mmap_mode=mode) if entry is not None else None
        label = np.load(self.path("label.npy"), mmap_mode=mode) if self.record["label"] else None
        return PreparedCase(
            case_id=self.case_id,
            primary=np.load(self.path("primary.npy"), mmap_mode=mode),
            aux=aux,
            label=label,
            affine=self.affine,
            source=None,
            offset=self.offset,
        )

    def padded(self, scales: Mapping[str, Sequence[int]], patch: Sequence[int], margin: Sequence[int]) -> PaddedCase:
        """The case padded for sampling, a view over its memory-mapped files (see ``sampling.pad_case``)."""
        r = self.record
        aux = {}
        for name in scales:
            entry = r["aux"].get(name)
            aux[name] = None if entry is None else (self.path(f"aux_{name}.npy"), entry["shape"], np.float32)
        label = (self.path("label.npy"), r["shape"], np.uint8) if r["label"] else None
        foreground = {int(v): (self.path(f"fg_{v}.npy"), n) for v, n in r["foreground"].items()}
        primary = (self.path("primary.npy"), [r["channels"], *r["shape"]], np.float32)
        return padded_view(self.case_id, r["shape"], self.affine, primary, aux, label, foreground, scales, patch,
                           margin)


@dataclass
class Store:
    """An opened store: its folder, settings and the cases asked for."""

    path: Path
    settings: dict[str, Any]
    cases: dict[str, StoredCase]

    def size_bytes(self) -> int:
        """Bytes on disk of the whole store folder."""
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


@dataclass
class StoreReport:
    """What a build did: cases written (and why), reused, the size on disk."""

    path: Path
    built: list[str] = field(default_factory=list)
    reused: int = 0
    touched: int = 0  # reused cases whose files' mtimes moved but whose contents (SHA-256) did not
    changed: dict[str, str] = field(default_factory=dict)
    size_bytes: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [
            f"store {self.path}: {len(self.built) + self.reused} cases ({len(self.built)} preprocessed, "
            f"{self.reused} reused) in {self.seconds:.1f} s; {self.size_bytes / 2**30:.2f} GiB on disk"
        ]
        if self.touched:
            lines.append(f"  {self.touched} reused cases had input files with a new mtime and the same content "
                         "(SHA-256)")
        lines += [f"  {case}: preprocessed again: {why}" for case, why in self.changed.items()]
        return "\n".join(lines)


# -- writing -------------------------------------------------------------------------------


def _save(folder: Path, name: str, array: np.ndarray) -> None:
    with open(folder / name, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class _Job:
    case: Case
    spec: Preprocessing
    crop: bool
    cases_dir: Path
    digest: str
    inputs: list


def _write_case(job: _Job) -> dict[str, Any]:
    """Prepare one case and publish its folder with one rename; returns its record (runs in a worker)."""
    case = job.case
    tmp = job.cases_dir / f".tmp-{folder_name(case.case_id)}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        inputs = _with_digests(job.inputs)  # hashed before reading: a file rewritten meanwhile gets prepared again
        prepared = prepare_case(case, job.spec)
        source = prepared.source
        grid_affine, grid_shape = prepared.affine, list(prepared.shape)
        if job.crop:
            prepared = crop_to_nonzero(prepared, job.spec.aux_scales)
        _save(tmp, "primary.npy", prepared.primary.astype(np.float32, copy=False))
        aux_record: dict[str, Any] = {}
        for name, array in prepared.aux.items():
            if array is None:
                aux_record[name] = None
                continue
            _save(tmp, f"aux_{name}.npy", array.astype(np.float32, copy=False))
            aux_record[name] = {"shape": list(array.shape)}
        foreground: dict[str, int] = {}
        if prepared.label is not None:
            _save(tmp, "label.npy", prepared.label.astype(np.uint8, copy=False))
            for value, points in foreground_points(prepared.label).items():
                _save(tmp, f"fg_{value}.npy", points.astype(np.int32))
                foreground[str(value)] = len(points)
        src_shape = [int(n) for n in source.shape[:3]] + [1] * (3 - len(source.shape[:3]))
        canon_affine, canon_shape = canonical_grid(source.affine, src_shape)
        record = {
            "case_id": case.case_id,
            "digest": job.digest,
            "inputs": inputs,
            "shape": list(prepared.shape),
            "channels": int(prepared.primary.shape[0]),
            "affine": prepared.affine.tolist(),
            "offset": [int(o) for o in prepared.offset],
            "aux": aux_record,
            "label": prepared.label is not None,
            "foreground": foreground,
            "geometry": {
                "source_affine": np.asarray(source.affine).tolist(),
                "source_shape": [int(n) for n in source.shape],
                "canonical_affine": canon_affine.tolist(),
                "canonical_shape": list(canon_shape),
                "grid_affine": grid_affine.tolist(),
                "grid_shape": grid_shape,
            },
            "source_path": str(source.path) if source.path is not None else None,
        }
        atomic_write_text(tmp / RECORD, json.dumps(record, indent=1))
        _fsync_dir(tmp)
        _publish(tmp, job.cases_dir / folder_name(case.case_id))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _publish(tmp: Path, target: Path) -> None:
    """Move the finished ``tmp`` folder to ``target``, replacing an older version of the case."""
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{secrets.token_hex(4)}")
        os.rename(target, old)
    os.rename(tmp, target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise SegfuseInputError(f"{path / MANIFEST}: not a readable store manifest ({exc}); delete the store") from exc


def _fingerprint(settings: Mapping[str, Any], records: Mapping[str, Mapping[str, Any]]) -> str:
    inputs = {case_id: r["inputs"] for case_id, r in records.items()}
    payload = json.dumps({"settings": settings, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path/.lock`` (waits for another builder of the same store)."""
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("%s: another process is building this store; waiting for it", path)
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def default_workers() -> int:
    """Preprocessing processes for a large dataset: the cores, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


#: Below this many input bytes to prepare, one process does it: starting a worker
#: (a fresh interpreter importing torch and MONAI) costs seconds, more than small cases take.
SMALL_JOB_BYTES = 64 * 2**20


def _auto_workers(jobs: Sequence[_Job]) -> int:
    total = sum(entry["size"] for job in jobs for entry in job.inputs)
    return 1 if total < SMALL_JOB_BYTES else default_workers()


def build_store(
    cfg, cases: Sequence[Case], *, workers: int | None = None, progress: bool = True
) -> tuple[Store, StoreReport]:
    """Make sure the store holds every case of ``cases`` as ``cfg`` prepares it; write what is missing.

    Cases already stored with the same inputs (size and mtime, or size and SHA-256
    where only the mtime moved) and settings are reused; new or changed ones are
    prepared in ``workers`` processes (1: in this process; ``None``: one process
    below :data:`SMALL_JOB_BYTES` of inputs, else :func:`default_workers`) and
    published atomically.

    Raises:
        SegfuseInputError: the store was made with other settings (the keys are named),
            or a case's input cannot be read.
    """
    started = time.monotonic()
    settings = store_settings(cfg)
    digest = settings_digest(settings)
    root = store_path(cfg)
    cases_dir = root / CASES
    cases_dir.mkdir(parents=True, exist_ok=True)
    report = StoreReport(root)
    with _locked(root):
        manifest = _read_manifest(root)
        if manifest is None:  # record the settings before the first case, so a half-built store is recognisable
            manifest = {"version": STORE_VERSION, "settings": settings, "digest": digest, "cases": {}}
            atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1))
        elif manifest.get("settings") != settings:
            raise _settings_mismatch(root, manifest.get("settings", {}), settings)
        for leftover in cases_dir.glob(".*"):  # half-written cases of an interrupted build
            shutil.rmtree(leftover, ignore_errors=True)

        spec = preprocessing_from_config(cfg)
        aux_names = list(cfg.data.aux)
        records: dict[str, dict[str, Any]] = {}
        jobs: list[_Job] = []
        known = manifest.get("cases", {})
        for case in cases:
            inputs = input_stats(case, aux_names)
            folder = cases_dir / folder_name(case.case_id)
            record = known.get(case.case_id)
            if record is None or _stats_only(record["inputs"]) != inputs or not (folder / RECORD).is_file():
                record = _read_record(folder)  # the case's own record is the authority; the manifest a summary
            if record is not None and record.get("digest") == digest and record.get("case_id") == case.case_id:
                same = unchanged_inputs(record["inputs"], inputs)
                if same is not None:
                    if same != record["inputs"]:  # only mtimes moved: remember them so the next start skips hashing
                        record = {**record, "inputs": same}
                        atomic_write_text(folder / RECORD, json.dumps(record, indent=1))
                        report.touched += 1
                    records[case.case_id] = record
                    report.reused += 1
                    continue
                report.changed[case.case_id] = _what_changed(record["inputs"], inputs)
                log.warning("%s: %s; preprocessing it again", case.case_id, report.changed[case.case_id])
            jobs.append(_Job(case, spec, bool(cfg.data.crop_to_nonzero), cases_dir, digest, inputs))

        if jobs:
            for record in _run(jobs, workers or _auto_workers(jobs), progress):
                records[record["case_id"]] = record
                report.built.append(record["case_id"])
        manifest["cases"] = {c.case_id: records[c.case_id] for c in cases}
        manifest["fingerprint"] = _fingerprint(settings, manifest["cases"])
        if _read_manifest(root) != manifest:
            atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1))
    store = Store(root, settings, {cid: StoredCase(cases_dir / folder_name(cid), r) for cid, r in records.items()})
    report.size_bytes = store.size_bytes()
    report.seconds = time.monotonic() - started
    return store, report


def _run(jobs: list[_Job], workers: int, progress: bool) -> Iterator[dict[str, Any]]:
    """Records of ``jobs`` as they finish, with a progress bar (ETA)."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="preprocessing", unit="case", disable=not progress)
    try:
        if workers <= 1 or len(jobs) == 1:
            for job in jobs:
                yield _write_case(job)
                bar.update()
            return
        # spawn: a fresh interpreter per worker, safe whatever threads (OpenMP, CUDA) this process started
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
            futures = [pool.submit(_write_case, job) for job in jobs]
            try:
                for future in as_completed(futures):
                    yield future.result()
                    bar.update()
            except BrokenProcessPool as exc:
                raise RuntimeError(
                    "a preprocessing worker process died (killed, or out of memory?); the cases it had not "
                    "finished were not stored; run the same command again to resume (with fewer -j workers "
                    "if memory ran out)"
                ) from exc
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        bar.close()


# -- reading -------------------------------------------------------------------------------


def open_store(cfg, cases: Sequence[Case]) -> Store:
    """Open the store ``cfg`` names for ``cases`` without writing anything.

    Raises:
        SegfuseInputError: no store there, other settings (keys named), a case missing,
            or an input file changed since it was stored (the file named).
    """
    root = store_path(cfg)
    manifest = _read_manifest(root)
    if manifest is None:
        raise SegfuseInputError(f"{root}: no preprocessed store here; make it with segfuse preprocess --config FILE")
    settings = store_settings(cfg)
    if manifest.get("settings") != settings:
        raise _settings_mismatch(root, manifest.get("settings", {}), settings)
    out: dict[str, StoredCase] = {}
    aux_names = list(cfg.data.aux)
    for case in cases:
        record = manifest["cases"].get(case.case_id)
        if record is None:
            raise SegfuseInputError(f"{root}: case {case.case_id} is not in the store; run segfuse preprocess again")
        inputs = input_stats(case, aux_names)
        if unchanged_inputs(record["inputs"], inputs) is None:
            raise SegfuseInputError(
                f"{root}: case {case.case_id} is out of date: {_what_changed(record['inputs'], inputs)}; "
                "run segfuse preprocess again"
            )
        out[case.case_id] = StoredCase(root / CASES / folder_name(case.case_id), record)
    return Store(root, settings, out)


def preprocess(cfg, *, workers: int | None = None, progress: bool = True) -> tuple[Store, StoreReport]:
    """``segfuse preprocess``: read ``cfg``'s dataset and build or update its store (see :func:`build_store`)."""
    from segfuse.data.layouts import read_dataset

    dataset = read_dataset(cfg.data.dataset, primary=cfg.data.primary, aux=list(cfg.data.aux))
    if not cfg.data.labels:
        cfg.data.labels = dict(dataset.labels)
    if cfg.data.primary is None:
        cfg.data.primary = dataset.primary_name
    return build_store(cfg, dataset.cases, workers=workers, progress=progress)
