"""CLI commands: checks (what this machine can run: libraries, GPU, providers, video, Jetson)."""

from __future__ import annotations

import typer

from dronseg_edge.cli.app import app
from dronseg_edge.cli.outputs import check_json_out, json_out, text_out
from dronseg_edge.cli.params import Json

FAILED_EXIT_CODE = 1  # a FAIL line; 2 stays the code of a command-line mistake


@app.command(help="Check what this machine can run (torch/CUDA/GPUs, ONNX Runtime providers, TensorRT, video, Jetson); "
                  "exit 1 on a FAIL.")
def checks(json_path: Json = None) -> None:
    from dronseg_edge.checks import FAIL, run_checks, summary

    check_json_out(json_path)
    results, say = run_checks(), text_out(json_path)
    width = max((len(check.name) for check in results), default=0)
    for check in results:
        say(check.line(width))
    say(f"checks: {summary(results)}")
    json_out(json_path, [check.to_dict() for check in results])  # a list of {name, status, detail}
    if any(check.status == FAIL for check in results):
        raise typer.Exit(FAILED_EXIT_CODE)
