"""Benchmark scripts (latency, pipeline, train_throughput) and the `make gpu-check` runner (gpu_check/).

A package so that ``python -m benchmarks.gpu_check`` finds these files before any unrelated
top-level ``benchmarks`` package a machine's site-packages may hold.
"""
