"""Per-epoch metrics: ``metrics.csv`` (rewritten atomically each epoch) and TensorBoard scalars.

metrics.csv is the record: a failed write of it stops the run (one line, exit code 5). TensorBoard
is a view of the same numbers: a failed write there (a full disk, a read-only folder) prints one
warning, turns TensorBoard logging off for the rest of the run, and training goes on.

The event file is TensorBoard's own format (tensorboard's ``RecordWriter``), written in the caller's
thread: torch's ``SummaryWriter`` writes from a background thread, where a full disk ends that thread
with a traceback and the error surfaces late if at all. A few dozen scalars an epoch cost nothing.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

from dronseg_edge.atomic import storage_failure, write_csv_atomic


LEADING_COLUMNS = ("epoch", "step", "lr", "train_loss", "val_loss", "val_miou", "val_mdice", "val_competition",
                   "val_pixel_acc", "train_img_per_s", "data_wait_frac", "epoch_s")


class MetricsLog:
    """Rows of scalars keyed by epoch; ``resume_from(epoch)`` drops rows a killed run wrote after its last checkpoint."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, warn: Callable[[str], None] | None = None):
        self.path = Path(run_dir) / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        if self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as handle:
                # an empty cell (epoch 0's lr under --val-at-start) stays empty, as in the uninterrupted run
                self.rows = [{k: _number(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]
        self.warn = warn or (lambda text: print(text, file=sys.stderr))
        self.writer = None  # tensorboard's RecordWriter on ``self.events`` while TensorBoard logging is on
        if tensorboard:
            log_dir = Path(run_dir) / "tensorboard"
            try:
                from tensorboard.compat.proto import event_pb2, summary_pb2
                from tensorboard.summary.writer.record_writer import RecordWriter
            except ImportError:  # tensorboard is a dependency, but a trimmed Jetson install may lack it
                return
            self._event_type, self._summary = event_pb2.Event, summary_pb2.Summary
            try:
                log_dir.mkdir(parents=True, exist_ok=True)
                self.events = log_dir / f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.0"
                self.writer = RecordWriter(open(self.events, "ab"))
                self._write_event(file_version="brain.Event:2")
            except OSError as exc:
                self._stop_tensorboard(exc, log_dir)

    def _write_event(self, **fields) -> None:
        """One Event record, flushed: raises OSError as soon as a write fails."""
        self.writer.write(self._event_type(wall_time=time.time(), **fields).SerializeToString())
        self.writer.flush()

    def _stop_tensorboard(self, exc: OSError, path: Path) -> None:
        if self.writer is not None:
            with contextlib.suppress(OSError):  # the failed write is what gets reported
                self.writer.close()
        self.writer = None
        self.warn(f"warning: TensorBoard logging stopped, training goes on ({storage_failure(exc, path)}); "
                  f"{self.path.name} still gets every epoch")

    def resume_from(self, completed_epochs: int) -> None:
        self.rows = [row for row in self.rows if int(row.get("epoch", 0)) <= completed_epochs]

    def log(self, row: dict[str, Any]) -> None:
        self.rows = [r for r in self.rows if r.get("epoch") != row["epoch"]] + [row]
        leading = [c for c in LEADING_COLUMNS if any(c in r for r in self.rows)]
        columns = list(dict.fromkeys(leading + [k for r in self.rows for k in r]))
        write_csv_atomic(self.path, [columns, *([f"{v:.6g}" if isinstance(v := r.get(k, ""), float) else v for k in columns]
                                                for r in self.rows)])
        if self.writer is not None:
            values = [self._summary.Value(tag=key.replace("_", "/", 1), simple_value=float(value)) for key, value in row.items()
                      if key != "epoch" and isinstance(value, (int, float)) and not math.isnan(float(value))]
            try:
                self._write_event(step=int(row["epoch"]), summary=self._summary(value=values))
            except OSError as exc:
                self._stop_tensorboard(exc, self.events)

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError as exc:
                self._stop_tensorboard(exc, self.events)
            self.writer = None


def _number(text: str | None) -> Any:
    """A metrics.csv cell as int or float where it is one, else as read (empty cells are left out before)."""
    for kind in (int, float):
        try:
            return kind(text)
        except (TypeError, ValueError):
            pass
    return text
