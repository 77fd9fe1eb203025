"""Per-epoch metrics: ``metrics.csv`` (rewritten atomically each epoch) and TensorBoard scalars.

metrics.csv is the record: a failed write of it stops the run (one line, exit code 5). TensorBoard
is a view of the same numbers: a failed write there (a full disk, a read-only folder) prints one
warning, turns TensorBoard logging off for the rest of the run, and training goes on.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path
from typing import Any, Callable

from dronseg_edge.atomic import storage_failure, write_text_atomic


LEADING_COLUMNS = ("epoch", "step", "lr", "train_loss", "val_loss", "val_miou", "val_mdice", "val_competition",
                   "val_pixel_acc", "train_img_per_s", "data_wait_frac", "epoch_s")


class MetricsLog:
    """Rows of scalars keyed by epoch; ``resume_from(epoch)`` drops rows a killed run wrote after its last checkpoint."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, warn: Callable[[str], None] | None = None):
        self.path = Path(run_dir) / "metrics.csv"
        self.rows: list[dict[str, Any]] = self._read() if self.path.is_file() else []
        self.warn = warn or (lambda text: print(text, file=sys.stderr))
        self.writer = None
        if tensorboard:
            from dronseg_edge.train.events import ScalarEventFile

            log_dir = Path(run_dir) / "tensorboard"
            try:
                self.writer = ScalarEventFile(log_dir)
            except ImportError:  # tensorboard is a dependency, but a trimmed Jetson install may lack it
                self.writer = None
            except OSError as exc:
                self._stop_tensorboard(exc, log_dir)

    def _stop_tensorboard(self, exc: OSError, path: Path) -> None:
        self.writer = None
        self.warn(f"warning: TensorBoard logging stopped, training goes on ({storage_failure(exc, path)}); "
                  f"{self.path.name} still gets every epoch")

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
            scalars = {key.replace("_", "/", 1): value for key, value in row.items()
                       if key != "epoch" and isinstance(value, (int, float)) and not math.isnan(float(value))}
            try:
                self.writer.add_scalars(scalars, int(row["epoch"]))
                self.writer.flush()
            except OSError as exc:
                path = self.writer.path
                try:
                    self.writer.close()
                except OSError:
                    pass  # the failed write is what gets reported
                self._stop_tensorboard(exc, path)

    def close(self) -> None:
        if self.writer is not None:
            path = self.writer.path
            try:
                self.writer.close()
            except OSError as exc:
                self._stop_tensorboard(exc, path)
            self.writer = None


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
