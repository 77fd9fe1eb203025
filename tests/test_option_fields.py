"""Option fields: a dataclass field that is also a command-line option, its type read from the annotation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from dronseg_edge.devices import DEVICE
from dronseg_edge.errors import DronsegError
from dronseg_edge.option_fields import OptionSpec, number, one_of, option, option_fields, option_group, value_type, whole
from dronseg_edge.sizes import parse_size


@dataclasses.dataclass
class Inner:
    hflip: float = option(0.5, "Flip probability.")


@dataclasses.dataclass
class Example:
    count: int = option(1, "How many.")
    limit: float | None = option(None, "Upper bound.", default_text="none")
    out: Path | None = option(None, "Folder.")
    on: bool = option(False, "Switch.")
    size: tuple[int, int] = option((96, 64), "WxH.", parse=parse_size)
    device: str = option("auto", DEVICE, help="Where it runs.")
    weird: dict | None = option(None, "No command-line type.")
    plain: int = 3
    inner: Inner = option_group(Inner)


def fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(Example)}


def test_only_option_fields_are_options_and_groups_name_their_dataclass():
    found = {f.name: spec for f, spec in option_fields(Example)}
    assert list(found) == ["count", "limit", "out", "on", "size", "device", "weird", "inner"]  # not "plain"
    assert found["inner"] is Inner and isinstance(found["count"], OptionSpec)
    assert Example().inner == Inner() and Example().count == 1  # the defaults are the dataclass's own


@pytest.mark.parametrize("name, kind", [("count", int), ("limit", float), ("out", Path), ("on", bool), ("size", str),
                                        ("device", str)])
def test_the_command_line_type_comes_from_the_annotation(name, kind):
    assert value_type(fields()[name]) is kind


def test_a_type_the_command_line_cannot_take_is_a_programming_error():
    with pytest.raises(TypeError, match="weird.*give option\\(type=...\\)"):
        value_type(fields()["weird"])


def test_a_shared_spec_keeps_its_names_and_takes_replacements():
    spec = fields()["device"].metadata["option"]
    assert spec.names == ("--device",) and spec.help == "Where it runs." and DEVICE.help != spec.help
    assert fields()["count"].metadata["option"].cli_names("count") == ("--count",)
    assert fields()["limit"].metadata["option"].cli_names("max_duration") == ("--max-duration",)


@pytest.mark.parametrize("value", [True, False, 2.0, 2.5, "2", -1, 0, 10, None])
def test_whole_refuses_what_is_not_a_whole_number_in_range_naming_the_flag(value):
    with pytest.raises(DronsegError, match=r"^--count .* must be a whole number, from 1 to 9 \(hint\)$"):
        whole(value, "--count", hint=" (hint)", most=9)


def test_whole_takes_python_and_numpy_ints_as_ints():
    for value in (1, 9, np.int64(3), np.uint8(9), np.int32(1)):
        assert type(whole(value, "--count", most=9)) is int and whole(value, "--count", most=9) == value
    assert whole(0, "--count", least=0) == 0 and whole(10**30, "--count") == 10**30  # no upper bound by default
    with pytest.raises(DronsegError, match=r"^--count -1 must be a whole number, at least 0$"):
        whole(-1, "--count", least=0)
    # RunOptions(max_frames=10**5000): repr() of an int past 4300 digits raised ValueError inside the refusal
    with pytest.raises(DronsegError, match=r"^--count of 16610 bits must be a whole number, from 1 to 9$"):
        whole(-10**5000, "--count", most=9)


@pytest.mark.parametrize("value", ["0.5", True, None, [1], 1j])
def test_number_refuses_what_is_not_a_real_number_naming_the_flag(value):
    with pytest.raises(DronsegError, match=r"^--alpha .* must be a number$"):
        number(value, "--alpha")
    assert [type(number(v, "--alpha")) for v in (1, np.float32(0.5), np.int64(2))] == [float] * 3


@pytest.mark.parametrize("value", ["tflite", "", None, ["onnx"], {"onnx": 1}])
def test_one_of_refuses_in_one_line_naming_the_flag_and_the_choices(value):
    # ["onnx"] against a dict's keys was a TypeError (unhashable), not the option's refusal
    with pytest.raises(DronsegError, match=r"^--format .* is not one of onnx, engine \(hint\)$"):
        one_of(value, "--format", {"onnx": 1, "engine": 2}, " (hint)")
    one_of("engine", "--format", {"onnx": 1, "engine": 2})
