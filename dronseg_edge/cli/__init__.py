"""Command-line interface: thin commands that parse options, call the library and print.

Each ``*_cmd`` module registers its commands on the shared Typer ``app`` (cli/app.py); ``main``
(cli/main.py) runs it.
"""

from dronseg_edge.cli.app import app
from dronseg_edge.cli.main import main

__all__ = ["app", "main"]
