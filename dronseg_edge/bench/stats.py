"""Latency statistics of per-iteration times (ms): numpy's ``linear`` percentiles (type 7 of Hyndman &
Fan, as pandas), the sample standard deviation (ddof=1), and throughput in frames (``batch * 1000 / mean_ms``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

PERCENTILES = (50, 90, 95, 99)
HIGH_CV = 0.10  # above this the run is noisy: warm up longer, lock clocks, close other work


@dataclass(frozen=True)
class LatencyStats:
    """Summary of ``count`` per-iteration times in milliseconds; ``batch`` frames per iteration."""

    count: int
    batch: int
    min_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float
    cv: float  # std / mean, a fraction (0.05 = 5 %)
    throughput_fps: float  # frames per second

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarize(samples_ms: Sequence[float], batch: int = 1) -> LatencyStats:
    """Statistics of per-iteration latencies ``samples_ms`` (ms), each iteration processing ``batch`` frames."""
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no samples to summarize")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    p50, p90, p95, p99 = np.percentile(values, PERCENTILES, method="linear")
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return LatencyStats(int(values.size), int(batch), float(values.min()), mean, *map(float, (p50, p90, p95, p99)),
                        float(values.max()), std, std / mean if mean > 0 else 0.0,
                        batch * 1e3 / mean if mean > 0 else float("inf"))
