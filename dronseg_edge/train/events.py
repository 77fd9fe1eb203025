"""TensorBoard scalars, written in the caller's thread.

torch's ``SummaryWriter`` writes from a background thread: a full disk there ends that thread with
a traceback on stderr, and the error only surfaces (if at all) at a later call. Training logs a few
dozen scalars per epoch, so writing them synchronously costs nothing, and a failed write raises
its ``OSError`` right at ``add_scalars``/``flush``, where ``MetricsLog`` turns it into one warning.

The file is TensorBoard's own format (``events.out.tfevents.*``: length-prefixed, CRC-checked
``Event`` records, written by tensorboard's ``RecordWriter``), so ``tensorboard --logdir`` reads it.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path


class ScalarEventFile:
    """One event file in ``log_dir``; raises OSError as soon as a write fails. ImportError without tensorboard."""

    def __init__(self, log_dir: Path):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = log_dir / f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.0"
        self._records = RecordWriter(open(self.path, "ab"))
        try:
            self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))
            self.flush()
        except OSError:
            self.close()
            raise

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())

    def add_scalars(self, values: dict[str, float], step: int) -> None:
        """Scalars ``{tag: value}`` at ``step`` in one event."""
        summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=float(value))
                                       for tag, value in values.items()])
        self._write(self._event(wall_time=time.time(), step=int(step), summary=summary))

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        """Flush and close the file (closed even when that last flush raises)."""
        self._records.close()
