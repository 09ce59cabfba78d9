"""Atomic file writes: a reader never sees a half-written output file.

Every write goes to a temporary file in the target's folder, is flushed and
fsync'ed, and then moved over the target with :func:`os.replace` (atomic on
POSIX and Windows when both paths are on the same file system). If anything
fails, the temporary file is removed and the target is left as it was; an
``OSError`` (disk full, permissions) is raised again as a
:class:`~segfuse.io.errors.SegfuseWriteError` naming the target file.

Temporary names are ``.tmp-<pid>-<random>-<name>``: a process killed while
writing (SIGKILL, power loss) leaves one behind, and
:func:`remove_stale_temporaries` removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from segfuse.io.errors import SegfuseWriteError

__all__ = [
    "atomic_output_path",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_text",
    "file_sha256",
    "is_temporary",
    "remove_stale_temporaries",
]

# .tmp-<pid>-<12 hex>-<name>; older segfuse versions wrote .tmp-<12 hex>-<name>
_TEMP_NAME = re.compile(r"^\.tmp-(?:(?P<pid>\d+)-)?[0-9a-f]{12}-.+")
# A temporary file without a process id is stale once untouched for this long.
_STALE_SECONDS = 600.0


def _temp_path_for(path: Path) -> Path:
    # Keep the full original name at the end so that libraries which choose a
    # format from the extension (nibabel, SimpleITK) still see ".nii.gz" etc.
    return path.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(6)}-{path.name}")


def _write_error(target: Path, err: OSError) -> SegfuseWriteError:
    if isinstance(err, SegfuseWriteError):
        return err
    reason = err.strerror or str(err) or type(err).__name__
    return SegfuseWriteError(err.errno, f"{target}: cannot write it ({reason}); the file is unchanged")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write to; move it onto ``path`` when the body succeeds.

    For libraries that write by file name (nibabel, SimpleITK). The temporary
    name ends with the target's name, so extension-based format choice still
    works. On an exception the temporary file is deleted and ``path`` untouched.

    Example:
        >>> with atomic_output_path("out/seg.nii.gz") as tmp:  # doctest: +SKIP
        ...     nib.save(img, tmp)
    """
    target = Path(path)
    tmp = _temp_path_for(target)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{target}: the writer did not create the temporary file {tmp}")
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and not isinstance(err, FileNotFoundError | NotADirectoryError):
            raise _write_error(target, err) from err
        raise
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file for writing and move it onto ``path`` on success.

    Args:
        path: the final file. Its folder must exist.
        mode: ``"wb"`` (default) or ``"w"`` (text, UTF-8).

    Example:
        >>> with atomic_write("metrics.json", "w") as f:  # doctest: +SKIP
        ...     json.dump(metrics, f)
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    tmp = _temp_path_for(target)
    encoding = None if "b" in mode else "utf-8"
    try:
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError):
            raise _write_error(target, err) from err
        raise
    _fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path.

    Example:
        >>> atomic_write_text("run/config.yaml", yaml.safe_dump(cfg))  # doctest: +SKIP
    """
    with atomic_write(path, "w") as handle:
        handle.write(text)
    return Path(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj, path)`` atomically; read back with ``torch.load(..., weights_only=True)``.

    Example:
        >>> atomic_torch_save({"model": net.state_dict()}, "ckpt/last.pt")  # doctest: +SKIP
    """
    import torch  # local: keeps `import segfuse.io` light for tools that never save tensors

    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)
    return Path(path)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks.

    Example:
        >>> file_sha256("ckpt/last.pt")  # doctest: +SKIP
        '9f86d081884c7d65...'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_temporary(path: str | os.PathLike[str]) -> bool:
    """True for the name of an atomic write's temporary file (``.tmp-...``).

    Example:
        >>> is_temporary("out/.tmp-4242-0123456789ab-seg.nii.gz"), is_temporary("out/seg.nii.gz")
        (True, False)
    """
    return _TEMP_NAME.match(Path(path).name) is not None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or unknowable): keep its file
    return True


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files left in ``folder`` by killed writers; return what was deleted.

    A temporary file is stale when the process id in its name no longer runs on
    this machine (another process's write in progress is never touched), or,
    for names without a process id, when it has not changed for 10 minutes.

    Example:
        >>> remove_stale_temporaries("preds")  # doctest: +SKIP
        [PosixPath('preds/.tmp-81234-0a1b2c3d4e5f-case_007.nii.gz')]
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for path in folder.iterdir():
        match = _TEMP_NAME.match(path.name)
        if match is None or not path.is_file():
            continue
        pid = match.group("pid")
        if pid is not None:
            stale = int(pid) != os.getpid() and not _process_alive(int(pid))
        else:
            try:
                stale = now - path.stat().st_mtime > _STALE_SECONDS
            except OSError:
                continue
        if stale:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed
