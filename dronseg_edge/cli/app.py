"""The Typer application and the entry point that turns user errors into one-line messages."""

from __future__ import annotations

import sys

import typer

from dronseg_edge.errors import DronsegError

app = typer.Typer(
    name="dronseg-edge",
    help="Drone-image segmentation (12 AeroScapes classes): synth, train, eval, submit, export, parity, infer, bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``dronseg-edge`` and ``python -m dronseg_edge``)."""
    import dronseg_edge.cli  # noqa: F401  (registers the commands)

    try:
        app(args=argv, prog_name="dronseg-edge")
    except DronsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
