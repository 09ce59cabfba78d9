"""What a run leaves behind: metrics CSV, TensorBoard events, a training-curve PNG, a text log.

``train.log`` in the run folder is the plain-text record of the run: every message
of the ``segfuse.*`` loggers at INFO and above (run folder and case counts, one
line per epoch with its metrics, best checkpoints, warnings, the end), each with
a timestamp. A resumed run appends to it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segfuse.io.atomic import atomic_write, atomic_write_text

#: File name of the text log in a run folder.
LOG_NAME = "train.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger("segfuse.train")


class _RunLogHandler(logging.FileHandler):
    """A run's text log; its own class so a stale one (a run that raised) can be found and closed."""


def attach_log_file(path: str | Path) -> _RunLogHandler:
    """Copy every ``segfuse.*`` message at INFO and above to ``path`` (appending), with timestamps.

    Any run log still attached (from a run that ended in an exception) is closed
    first, so a process writes to one run log at a time. Undo with :func:`detach_log_file`.
    """
    package = logging.getLogger("segfuse")
    for stale in [h for h in package.handlers if isinstance(h, _RunLogHandler)]:
        detach_log_file(stale)
    handler = _RunLogHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.previous_level = package.level  # type: ignore[attr-defined]
    if package.getEffectiveLevel() > logging.INFO:
        # INFO must reach the file; the console is unchanged (Python's last-resort handler prints WARNING+)
        package.setLevel(logging.INFO)
    package.addHandler(handler)
    return handler


def detach_log_file(handler: logging.Handler) -> None:
    """Close a handler from :func:`attach_log_file` and restore the ``segfuse`` logger's level."""
    package = logging.getLogger("segfuse")
    package.removeHandler(handler)
    handler.close()
    if not any(isinstance(h, _RunLogHandler) for h in package.handlers):
        package.setLevel(getattr(handler, "previous_level", logging.NOTSET))


@contextlib.contextmanager
def log_file(path: str | Path) -> Iterator[Path]:
    """``with log_file(run_dir / "train.log"):`` — :func:`attach_log_file` for the block."""
    handler = attach_log_file(path)
    try:
        yield Path(path)
    finally:
        detach_log_file(handler)


def _format_row(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


class RunLogger:
    """Appends one row per epoch to ``metrics.csv``, TensorBoard and ``train.log``; redraws ``training_curve.png``."""

    def __init__(self, run_dir: Path, history: list[dict[str, Any]] | None = None, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.history: list[dict[str, Any]] = list(history or [])
        self.log_handler: logging.Handler | None = attach_log_file(self.run_dir / LOG_NAME)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        log.info("%s", _format_row(row))
        if self.writer is not None:
            for key, value in row.items():
                if key != "iteration" and isinstance(value, int | float):
                    self.writer.add_scalar(key, value, row["iteration"])
            self.writer.flush()
        self._write_csv()
        self._plot()

    def _write_csv(self) -> None:
        keys: list[str] = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(self.run_dir / "metrics.csv", buffer.getvalue())

    def _plot(self) -> None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 3.5))
        loss_ax, dice_ax = fig.subplots(1, 2)
        its = [r["iteration"] for r in self.history]
        loss_ax.plot(its, [r["train_loss"] for r in self.history], label="train loss")
        loss_ax.set_xlabel("iteration")
        loss_ax.set_title("training loss")
        val = [r for r in self.history if "val_mean_dice" in r]
        for key in sorted({k for r in val for k in r if k.startswith("val_dice_")}):
            dice_ax.plot([r["iteration"] for r in val], [r.get(key) for r in val], label=key[len("val_dice_") :])
        if val:
            dice_ax.plot([r["iteration"] for r in val], [r["val_mean_dice"] for r in val], "k--", label="mean")
            dice_ax.legend(fontsize=7)
        dice_ax.set_ylim(0, 1)
        dice_ax.set_xlabel("iteration")
        dice_ax.set_title("validation Dice")
        fig.tight_layout()
        with atomic_write(self.run_dir / "training_curve.png") as f:
            fig.savefig(f, format="png", dpi=100)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.log_handler is not None:
            detach_log_file(self.log_handler)
            self.log_handler = None
