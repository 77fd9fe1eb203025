"""Latency measurement: statistics, the timing harness, system description, the format matrix, reports.

    from dronseg_edge.bench import TimingSettings, bench_model
    result = bench_model("model.onnx", "cpu", TimingSettings(warmup_s=2, iters=200))  # never imports torch
    result.measurement.latency.median_ms

A ``--device`` string is resolved by ``bench.run.resolve_bench_device``: the kind of device it gives
(torch or torch-free) decides whether CUDA events or ``perf_counter`` time the runs (``bench/run.py``).
"""

from dronseg_edge.bench.run import BenchResult, bench_model, resolve_bench_device
from dronseg_edge.bench.stats import LatencyStats, percentile, summarize
from dronseg_edge.bench.timing import Measurement, TimingSettings, measure

__all__ = ["BenchResult", "LatencyStats", "Measurement", "TimingSettings", "bench_model", "measure", "percentile",
           "resolve_bench_device", "summarize"]
