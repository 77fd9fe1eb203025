"""cli/params.py: a dataclass's option fields become a command's options, and its values the dataclass again."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import pytest
import typer
from typer.testing import CliRunner

from dronseg_edge.cli.app import App
from dronseg_edge.cli.params import Device, takes
from dronseg_edge.errors import DronsegError
from dronseg_edge.option_fields import option, option_group
from dronseg_edge.sizes import parse_size


@dataclasses.dataclass(frozen=True)
class Colour:
    brightness: float = option(0.25, "Jitter.", names=("--color",), also=("contrast",))
    contrast: float = 0.25


@dataclasses.dataclass(frozen=True)
class Settings:
    files: tuple[Path, ...] = option((), "Files.", argument=True, type=list[Path], parse=tuple, metavar="FILE")
    seconds: float | None = option(None, "A duration.", names=("--limit-s",), aliases=("--limit",), default_text="none")
    size: tuple[int, int] = option((96, 64), "WxH.", parse=parse_size)
    live: bool | None = option(None, "Newest frame only.", default_text="on for cameras")
    stride: int = option(1, "Every N-th.")
    queue: int = 8  # not an option
    colour: Colour = option_group(Colour)

    def __post_init__(self):
        if self.stride < 1:
            raise DronsegError(f"--stride {self.stride} must be at least 1")


seen: list = []
app = App(add_completion=False)


@app.command()
@takes(settings=Settings)
def run(device: Device = "auto", verbose: bool = typer.Option(False, "--verbose/--quiet", help="Talk."),
        settings: Settings = None, note: Optional[str] = typer.Option(None, help="A note.")) -> None:
    seen.append((device, verbose, note, settings))


@app.command()
def other() -> None:
    """A second command, so that `run` keeps its name."""


def invoke(*args: str) -> tuple:
    seen.clear()
    result = CliRunner().invoke(app, ["run", *args])
    assert result.exit_code == 0, result.output
    return seen[-1]


def test_the_dataclass_is_made_from_the_options_with_its_own_defaults():
    device, verbose, note, settings = invoke("a.onnx", "b.onnx")
    assert (device, verbose, note) == ("auto", False, None)
    assert settings == Settings(files=(Path("a.onnx"), Path("b.onnx")))  # size (96, 64), stride 1, live None, ...


def test_each_option_fills_its_field_and_parsed_ones_are_parsed():
    _, _, _, settings = invoke("a.onnx", "--limit-s", "2.5", "--size", "32x16", "--no-live", "--stride", "3",
                               "--color", "0.5", "--device", "0")
    assert (settings.seconds, settings.size, settings.live, settings.stride) == (2.5, (32, 16), False, 3)
    assert settings.colour == Colour(0.5, 0.5)  # one option, two fields
    assert seen[-1][0] == "0"


def test_an_old_spelling_still_works_and_stays_out_of_help():
    assert invoke("a.onnx", "--limit", "4")[3].seconds == 4.0
    text = CliRunner().invoke(app, ["run", "--help"]).output
    assert "--limit-s" in text and "--limit " not in text and "--queue" not in text


def test_the_old_and_new_spelling_with_different_values_is_an_error():
    with pytest.raises(DronsegError, match="--limit is the old spelling of --limit-s: give one of them"):
        CliRunner().invoke(app, ["run", "a.onnx", "--limit", "4", "--limit-s", "5"], catch_exceptions=False)
    assert invoke("a.onnx", "--limit", "4", "--limit-s", "4")[3].seconds == 4.0


def test_the_dataclass_validates_what_the_command_line_gives():
    with pytest.raises(DronsegError, match="--stride 0 must be at least 1"):
        CliRunner().invoke(app, ["run", "a.onnx", "--stride", "0"], catch_exceptions=False)
    with pytest.raises(DronsegError, match="--size 'big' is not a size"):
        CliRunner().invoke(app, ["run", "a.onnx", "--size", "big"], catch_exceptions=False)


def test_arguments_are_required_and_every_bool_has_its_negative():
    result = CliRunner().invoke(app, ["run"])
    assert result.exit_code == 2 and "Missing argument" in result.output
    text = " ".join(CliRunner().invoke(app, ["run", "--help"]).output.split())
    assert "--live --no-live" in text and "<bool>" not in text and "Usage: root run [OPTIONS] FILE" in text
    assert "(on for cameras)" in text and "(96x64)" in text


def test_two_options_of_one_name_are_refused_when_the_command_is_made():
    @dataclasses.dataclass
    class Clash:
        stride: int = option(1, "Again.")

    with pytest.raises(TypeError, match="two parameters share a name"):
        takes(a=Settings, b=Clash)(lambda a=None, b=None: None)
