"""CLI commands: checks (what this machine can run: libraries, GPU, providers, video, Jetson)."""

from __future__ import annotations

import json

import typer

from dronseg_edge.cli.app import app

FAILED_EXIT_CODE = 1  # a FAIL line; 2 stays the code of a command-line mistake


@app.command()
def checks(
    json_output: bool = typer.Option(False, "--json", help="Print a JSON list of {name, status, detail} instead of lines."),
) -> None:
    """Check what this machine can run (torch/CUDA/GPUs, ONNX Runtime providers, TensorRT, video, Jetson); exit 1 on a FAIL."""
    from dronseg_edge.checks import FAIL, run_checks, summary

    results = run_checks()
    if json_output:
        typer.echo(json.dumps([check.to_dict() for check in results], indent=2))
    else:
        width = max((len(check.name) for check in results), default=0)
        for check in results:
            typer.echo(check.line(width))
        typer.echo(f"checks: {summary(results)}")
    if any(check.status == FAIL for check in results):
        raise typer.Exit(FAILED_EXIT_CODE)
