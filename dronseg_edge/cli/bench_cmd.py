"""CLI commands: bench."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional

import typer

from dronseg_edge.cli.app import app


@app.command()
def bench(
    models: List[Path] = typer.Argument(..., help="Model files: .pt checkpoint, .onnx, .engine (one or more)."),
    size: Optional[str] = typer.Option(None, "--size", help="Input WxH (default: the model's own; dynamic models only)."),
    batch: int = typer.Option(1, "--batch", help="Frames per inference call."),
    warmup_s: float = typer.Option(1.0, "--warmup-s", help="Warm-up seconds before measuring."),
    warmup_iters: Optional[int] = typer.Option(None, "--warmup-iters", help="Warm-up call count (overrides --warmup-s)."),
    iters: Optional[int] = typer.Option(None, "--iters", help="Measured iterations (default: >= 20 and >= 3 s)."),
    duration_s: Optional[float] = typer.Option(None, "--duration-s", help="Measure for this many seconds."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: Optional[str] = typer.Option(None, "--precision", help="Checkpoints only: fp32, fp16 or bf16 (GPU)."),
    include_transfers: bool = typer.Option(False, "--include-transfers/--no-include-transfers",
                                           help="Count host<->device copies in the latency (GPU; always counted without a CUDA torch)."),
    cuda_graph: Optional[bool] = typer.Option(None, "--cuda-graph/--no-cuda-graph",
                                              help="Capture a CUDA graph where the backend supports it."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write results (device, versions, settings, stats) here."),
    markdown_path: Optional[Path] = typer.Option(None, "--markdown", help="Write the table as Markdown here."),
    matrix: bool = typer.Option(False, "--matrix", help="Export every format/precision this machine runs; parity + latency."),
    out: Optional[Path] = typer.Option(None, "--out", help="--matrix: folder for exported files (default: where `export` writes)."),
    data: Optional[Path] = typer.Option(None, "--data", help="--matrix: dataset root for parity/calibration images "
                                        "and for each row's mIoU/competition Dice (default: the checkpoint's data set "
                                        "and validation split)."),
    meta: Optional[Path] = typer.Option(None, "--meta", help="Metadata for one .engine without its .engine.json "
                                        "(built with trtexec or Polygraphy) or a foreign .onnx: the ONNX it was built "
                                        "from, or a sidecar JSON."),
) -> None:
    """Measure latency (min/mean/median/p90/p95/p99/max ms) and throughput of model files, or a whole --matrix."""
    from dronseg_edge.bench.report import (build_document, check_output_file, latency_table, markdown_document,
                                           settings_line, stage_lines, warning_lines, write_json, write_markdown)
    from dronseg_edge.bench.run import prepare_bench, resolve_bench_device, run_prepared
    from dronseg_edge.bench.system import describe_system, system_info
    from dronseg_edge.bench.timing import TimingSettings, host_timed_gpu, timer_name
    from dronseg_edge.errors import DronsegError
    from dronseg_edge.runtime.registry import check_model_file
    from dronseg_edge.sizes import format_size, parse_size

    run_size = parse_size(size) if size is not None else None
    if batch < 1:
        raise DronsegError(f"--batch {batch} must be at least 1")
    timing = TimingSettings(warmup_s=warmup_s, warmup_iters=warmup_iters, iters=iters, duration_s=duration_s,
                            include_transfers=include_transfers)
    if matrix:
        if len(models) != 1:
            raise DronsegError(f"--matrix takes one checkpoint, got {len(models)} files: pass a single .pt")
        for option, value in (("--precision", precision), ("--cuda-graph/--no-cuda-graph", cuda_graph)):
            if value is not None:
                raise DronsegError(f"{option} does not apply to --matrix (it runs every precision, with and "
                                   "without CUDA graphs): drop it")
    elif out is not None or data is not None:
        raise DronsegError("--out and --data belong to --matrix: add --matrix or drop them")
    if meta is not None and (matrix or len(models) != 1):
        raise DronsegError("--meta describes one .onnx or .engine file: bench that file alone, without --matrix")
    if out is not None:
        from dronseg_edge.cli.outputs import check_out_dir

        check_out_dir(out)  # before the matrix exports into it
    for option, path in (("--json", json_path), ("--markdown", markdown_path)):
        if path is not None:
            check_output_file(path, option)  # fail now, not after minutes of measuring
    for model in models:
        check_model_file(model)
    # A torch.device (checkpoints, --matrix, a GPU with CUDA torch: CUDA-event timing) or a torch-free
    # Device (.onnx/.engine on the CPU or without CUDA torch): torch is then never imported.
    run_device = resolve_bench_device(device, models, matrix=matrix)
    if cuda_graph and run_device.type != "cuda":
        raise DronsegError(f"--cuda-graph needs a CUDA device, but --device {device} is {run_device}: drop --cuda-graph")
    if host_timed_gpu(run_device):
        timing = dataclasses.replace(timing, include_transfers=True)  # timed on the host: the copies are in it
    # Every model is opened and shape-checked before anything is measured: a bad last file fails at once.
    prepared = [] if matrix else [prepare_bench(model, run_device, size=run_size, batch=batch, precision=precision,
                                                cuda_graph=cuda_graph, backend_options={"meta": meta} if meta else None)
                                  for model in models]
    settings = {"device": str(run_device), "size": format_size(run_size) if run_size else None, "batch": batch,
                "precision": precision, "cuda_graph": "per row" if matrix else cuda_graph, "timing": timing.to_dict(),
                "timer": timer_name(run_device)}
    system = system_info(run_device)
    system_lines = describe_system(system)
    for line in system_lines + [settings_line(settings)]:
        typer.echo(line)

    if matrix:
        from dronseg_edge.bench.matrix import matrix_markdown, matrix_table, run_matrix

        rows = run_matrix(models[0], run_device, timing, size=run_size, batch=batch, out_dir=out, data=data,
                          log=lambda text: typer.echo(text, err=True))
        typer.echo(matrix_table(rows))
        for line in warning_lines([row.result for row in rows if row.result is not None]):
            typer.echo(line)
        document = build_document(system, settings, matrix=[r.to_dict() for r in rows], kind="matrix")
        markdown = matrix_markdown(rows, system_lines, settings)
    else:
        results = []
        for item in prepared:
            typer.echo(f"measuring {item.path} ...", err=True)
            results.append(run_prepared(item, timing))
        typer.echo(latency_table(results))
        for line in stage_lines(results) + warning_lines(results):
            typer.echo(line)
        document = build_document(system, settings, results)
        markdown = markdown_document(system_lines, settings, latency_table(results, markdown=True))
    if json_path is not None:
        write_json(json_path, document)
        typer.echo(f"wrote {json_path}")
    if markdown_path is not None:
        write_markdown(markdown_path, markdown)
        typer.echo(f"wrote {markdown_path}")
