"""Command-line interface: thin commands that parse options, call the library and print.

Each ``*_cmd`` module registers its commands on the shared Typer ``app``.
"""

from dronseg_edge.cli.app import app, main
from dronseg_edge.cli import data_cmd, train_cmd, export_cmd, infer_cmd, bench_cmd, checks_cmd  # noqa: F401,E402

__all__ = ["app", "main"]
