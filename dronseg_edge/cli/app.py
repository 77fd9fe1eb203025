"""The Typer application every command registers on (cli/main.py runs it)."""

from __future__ import annotations

import typer

from dronseg_edge import __version__
from dronseg_edge.media import MAX_PIXELS_CEILING, MAX_PIXELS_HELP

# One paragraph (rich re-wraps help text): what a supervisor such as systemd can act on.
EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 `checks` found a FAIL; 2 usage or configuration error (fix the command, "
    "do not restart); 3 an optional runtime (TensorRT, ONNX Runtime, CUDA) is missing; 4 a parity check "
    "failed; 5 runtime failure a restart may cure (disk full or read-only, stream lost beyond "
    "--reconnect-s, backend failed mid-run); 130 interrupted (Ctrl-C, SIGTERM). "
    "systemd: Restart=on-failure with RestartPreventExitStatus=2 3 4."
)

app = typer.Typer(
    name="dronseg-edge",
    help="Drone-image segmentation (12 AeroScapes classes): synth, train, eval, submit, export, parity, infer, bench, checks.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"dronseg-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", "-V", callback=_print_version, is_eager=True,
                                 help="Print the version (dronseg-edge X.Y.Z) and exit."),
) -> None:
    # Options of the program itself, before any command; is_eager so --version needs no command.
    pass


def max_pixels_option():
    """``--max-pixels``, one definition for the commands that read images (infer, train, eval); None
    when not given (the default limit, or for ``train --resume`` the run's own)."""
    return typer.Option(None, "--max-pixels", min=1, max=MAX_PIXELS_CEILING, help=MAX_PIXELS_HELP)

