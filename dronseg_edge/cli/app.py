"""The Typer application and the entry point that turns user errors into one-line messages."""

from __future__ import annotations

import sys

import typer

from dronseg_edge import __version__
from dronseg_edge.errors import DronsegError

app = typer.Typer(
    name="dronseg-edge",
    help="Drone-image segmentation (12 AeroScapes classes): synth, train, eval, submit, export, parity, infer, bench, checks.",
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


# click's base exception, found through typer's public BadParameter: typer >= 0.24 vendors its own click.
CLICK_ERROR = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``dronseg-edge`` and ``python -m dronseg_edge``).

    User errors, ours (DronsegError) and the command line's (a bad option value, an unknown option,
    a missing argument), are printed as one line and exit non-zero; a traceback means a bug.
    """
    import dronseg_edge.cli  # noqa: F401  (registers the commands)

    try:
        code = app(args=argv, prog_name="dronseg-edge", standalone_mode=False)
    except DronsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except CLICK_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare command: its help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} -h`)" if ctx is not None else ""
        message = " ".join(exc.format_message().split())
        print(f"error: {message}{hint}", file=sys.stderr)
        sys.exit(exc.exit_code)
    if code == 130:  # typer turns Ctrl-C outside our handlers into exit code 130
        print("interrupted", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)
