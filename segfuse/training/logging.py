"""What a run leaves behind: metrics CSV, TensorBoard events, a training-curve PNG."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from segfuse.io.atomic import atomic_write, atomic_write_text


class RunLogger:
    """Appends one row per epoch to ``metrics.csv`` and TensorBoard; redraws ``training_curve.png``."""

    def __init__(self, run_dir: Path, history: list[dict[str, Any]] | None = None, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.history: list[dict[str, Any]] = list(history or [])
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        self.history.append(row)
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
