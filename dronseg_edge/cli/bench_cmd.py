"""CLI commands: bench."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import typer

from dronseg_edge.atomic import write_text_atomic
from dronseg_edge.bench.options import BenchOptions, TimingSettings
from dronseg_edge.cli.app import app
from dronseg_edge.cli.outputs import check_json_out, check_out_dir, data_files, echo, json_out, text_out
from dronseg_edge.cli.params import Json, takes
from dronseg_edge.errors import DronsegError
from dronseg_edge.sizes import format_size


@app.command(help="Measure latency (min/mean/median/p90/p95/p99/max ms) and throughput of model files, "
                  "or a whole --matrix.")
@takes(options=BenchOptions, timing=TimingSettings)
def bench(
    json_path: Json = None,
    markdown_path: Optional[Path] = typer.Option(None, "--markdown", metavar="FILE", show_default="none",
                                                 help="Write the table as Markdown here."),
    options: BenchOptions = None,
    timing: TimingSettings = None,
) -> None:
    from dronseg_edge.bench.report import (build_document, latency_table, markdown_document, settings_line, stage_lines,
                                           warning_lines)
    from dronseg_edge.bench.run import prepare_bench, resolve_bench_device, run_prepared
    from dronseg_edge.bench.system import describe_system, system_info
    from dronseg_edge.bench.timing import host_timed_gpu, timer_name
    from dronseg_edge.runtime.registry import check_model_file

    models, matrix, device, say = options.models, options.matrix, options.device, text_out(json_path)
    if options.out is not None:
        check_out_dir(options.out)  # before the matrix exports into it
    inputs = [*models, options.meta, *data_files(options.data)]
    check_json_out(json_path, inputs)  # fail now, not after minutes of measuring
    if markdown_path is not None:
        check_json_out(markdown_path, inputs, "--markdown")
        if json_path is not None and markdown_path.resolve() == json_path.resolve():  # the Markdown would replace the JSON
            raise DronsegError(f"--markdown {markdown_path} is also the --json file: give the two different names")
    if matrix:  # a new --out named as the file too: the JSON was refused as a folder after every export
        from dronseg_edge.export import default_out_dir

        folder = (options.out or default_out_dir(models[0])).resolve()
        for flag, path in (("--json", json_path), ("--markdown", markdown_path)):
            if path is not None and path.resolve() == folder:
                raise DronsegError(f"{flag} {path} is the folder --matrix exports into: give a file name")
    for model in models:
        check_model_file(model)
    if matrix and options.out is None:  # beside a checkpoint on a read-only disk every export row failed, exit 0
        from dronseg_edge.export import default_out_dir

        check_out_dir(default_out_dir(models[0]), "--out's default, beside the checkpoint")
    # A torch.device (checkpoints, --matrix, a GPU with CUDA torch) or a torch-free Device (.onnx/.engine on the
    # CPU or without CUDA torch): torch is then never imported. CUDA events time checkpoints only (bench/timing.py).
    run_device = resolve_bench_device(device, models, matrix=matrix)
    # Every model is opened and shape-checked before anything is measured: a bad last file fails at once.
    size, batch, meta = options.size, options.batch, options.meta
    prepared = [] if matrix else [prepare_bench(model, run_device, size=size, batch=batch, precision=options.precision,
                                                cuda_graph=options.cuda_graph,
                                                backend_options={"meta": meta} if meta else None) for model in models]
    kinds = [(item.backend.device, item.backend.native) for item in prepared]
    if kinds and all(host_timed_gpu(*kind) for kind in kinds):
        timing = dataclasses.replace(timing, include_transfers=True)  # timed on the host: the copies are in it
    settings = {"device": str(run_device), "size": format_size(size) if size else None, "batch": batch,
                "precision": options.precision, "cuda_graph": None if matrix else options.cuda_graph,  # a matrix: each row's
                "timing": timing.to_dict(), "timer": "per row" if matrix else
                ", ".join(sorted({timer_name(*kind) for kind in kinds}))}
    system = system_info(run_device)
    system_lines = describe_system(system)
    for line in system_lines + [settings_line(settings, matrix)]:
        say(line)

    if matrix:
        from dronseg_edge.bench.matrix import matrix_table, run_matrix

        rows = run_matrix(models[0], run_device, timing, size=size, batch=batch, out_dir=options.out,
                          data=options.data, log=lambda text: echo(text, err=True))
        say(matrix_table(rows))
        for line in warning_lines([row.result for row in rows if row.result is not None]):
            say(line)
        document = build_document(system, settings, matrix=[r.to_dict() for r in rows])
        markdown = markdown_document(system_lines, settings, matrix_table(rows, markdown=True), title="Latency matrix",
                                     matrix=True)
    else:
        results, failed = [], []  # one model that fails must not lose the others' numbers
        for item in prepared:
            echo(f"measuring {item.path} ...", err=True)
            try:
                results.append(run_prepared(item, timing))
            except DronsegError as exc:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                echo(f"{item.path}: failed ({reason})", err=True)
                failed.append(({"model": os.path.abspath(item.path), "reason": reason}, exc))
        if not results:
            raise failed[0][1]
        say(latency_table(results))
        for line in stage_lines(results) + warning_lines(results):
            say(line)
        document = build_document(system, settings, results, failed=[entry for entry, _ in failed])
        markdown = markdown_document(system_lines, settings, latency_table(results, markdown=True),
                                     failed=document["failed"])
    json_out(json_path, document)
    if markdown_path is not None:
        write_text_atomic(markdown_path, markdown)  # ends in a newline (markdown_document)
        say(f"wrote {markdown_path}")
    if not matrix and failed:
        raise failed[0][1]  # after the others' results are written: the first failure's message and exit code
