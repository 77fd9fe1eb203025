"""The Typer application every command registers on (cli/main.py runs it)."""

from __future__ import annotations

import typer
from typer.core import TyperCommand, TyperGroup

from dronseg_edge import __version__

# One paragraph (rich re-wraps help text): what a supervisor such as systemd can act on.
# Codes 5 and 130, in this and in `infer -h` (cli/infer_cmd.py).
RESTART_EXIT_CODES = (
    "5 runtime failure a restart may cure: disk full or read-only, a stream lost beyond --reconnect-s, a camera "
    "or stream that cannot be opened, the backend failing mid-run; 130 interrupted (Ctrl-C, SIGTERM, SIGHUP)"
)
EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 `checks` found a FAIL; 2 usage or configuration error (fix the command, "
    "do not restart); 3 an optional runtime (TensorRT, ONNX Runtime, CUDA) is missing; 4 a parity check "
    f"failed; {RESTART_EXIT_CODES}. "
    "systemd: Restart=on-failure with RestartPreventExitStatus=2 3 4 and SuccessExitStatus=130 (a stop is no failure)."
)

class _OneConvention:
    """A flag takes no value, so it shows no value placeholder (typer 0.2x writes ``<bool>``); an
    argument is named in capitals (MODEL, CHECKPOINT) in --help and in the usage line."""

    def get_params(self, ctx) -> list:
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
            elif param.param_type_name == "argument" and param.metavar is None:
                param.metavar = param.name.upper()
        return params

    def collect_usage_pieces(self, ctx) -> list[str]:
        # typer 0.2x writes a required argument as {MODEL}; the usage line spells it MODEL, as click does.
        return [piece[1:].replace("}", "", 1) if piece.startswith("{") else piece
                for piece in super().collect_usage_pieces(ctx)]


class Command(_OneConvention, TyperCommand):
    pass


class Group(_OneConvention, TyperGroup):
    pass


class App(typer.Typer):
    def command(self, *args, cls=Command, **kwargs):
        return super().command(*args, cls=cls, **kwargs)


app = App(
    cls=Group,
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

