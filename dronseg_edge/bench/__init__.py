"""Latency measurement: statistics, the timing harness, system description, the format matrix, reports.

    from dronseg_edge.bench import TimingSettings, bench_model
    result = bench_model("model.onnx", "cpu", TimingSettings(warmup_s=2, iters=200))  # never imports torch
    result.measurement.latency.median_ms

A ``--device`` string is resolved by ``bench.run.resolve_bench_device``: the kind of device it gives
(torch or torch-free) decides whether CUDA events or ``perf_counter`` time the runs (``bench/run.py``).
"""

import importlib

# Imported when first used: the CLI reads the option classes for --help without numpy.
_WHERE = {**dict.fromkeys(("BenchResult", "bench_model", "resolve_bench_device"), "dronseg_edge.bench.run"),
          **dict.fromkeys(("LatencyStats", "summarize"), "dronseg_edge.bench.stats"),
          **dict.fromkeys(("Measurement", "measure"), "dronseg_edge.bench.timing"),
          **dict.fromkeys(("BenchOptions", "TimingSettings"), "dronseg_edge.bench.options")}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'dronseg_edge.bench' has no attribute {name!r}")


def __dir__() -> list[str]:  # help() and a notebook's completion read dir(): the names above too
    return sorted({*globals(), *_WHERE})
