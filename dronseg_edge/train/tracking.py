"""Per-epoch metrics: ``metrics.csv`` (rewritten atomically each epoch) and TensorBoard scalars."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from dronseg_edge.atomic import write_text_atomic


LEADING_COLUMNS = ("epoch", "step", "lr", "train_loss", "val_loss", "val_miou", "val_mdice", "val_competition",
                   "val_pixel_acc", "train_img_per_s", "data_wait_frac", "epoch_s")


class MetricsLog:
    """Rows of scalars keyed by epoch; ``resume_from(epoch)`` drops rows a killed run wrote after its last checkpoint."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.csv"
        self.rows: list[dict[str, Any]] = self._read() if self.path.is_file() else []
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but a trimmed Jetson install may lack it
                self.writer = None

    def _read(self) -> list[dict[str, Any]]:
        with open(self.path, newline="", encoding="utf-8") as handle:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]

    def resume_from(self, completed_epochs: int) -> None:
        self.rows = [row for row in self.rows if int(row.get("epoch", 0)) <= completed_epochs]

    def log(self, row: dict[str, Any]) -> None:
        self.rows = [r for r in self.rows if r.get("epoch") != row["epoch"]] + [row]
        columns: list[str] = [c for c in LEADING_COLUMNS if any(c in r for r in self.rows)]
        for r in self.rows:
            columns += [k for k in r if k not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: _format(r.get(k, "")) for k in columns})
        write_text_atomic(self.path, buffer.getvalue())
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and not math.isnan(float(value)):
                    self.writer.add_scalar(key.replace("_", "/", 1), value, int(row["epoch"]))
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _format(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def _number(text: str) -> Any:
    if text == "":
        return float("nan")
    try:
        number = float(text)
    except (TypeError, ValueError):
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
