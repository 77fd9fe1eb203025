"""Latency measurement: statistics, the timing harness, system description, the format matrix, reports.

    from dronseg_edge.bench import TimingSettings, bench_model
    result = bench_model("model.onnx", torch.device("cuda"), TimingSettings(warmup_s=2, iters=200))
    result.measurement.latency.median_ms
"""

from dronseg_edge.bench.run import BenchResult, bench_model
from dronseg_edge.bench.stats import LatencyStats, percentile, summarize
from dronseg_edge.bench.timing import Measurement, TimingSettings, measure

__all__ = ["BenchResult", "LatencyStats", "Measurement", "TimingSettings", "bench_model", "measure", "percentile",
           "summarize"]
