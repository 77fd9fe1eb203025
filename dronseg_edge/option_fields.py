"""Command-line options declared once, on the dataclass field they fill (:func:`option`): name, type (the
annotation), default and help stand there and nowhere else. ``cli/params.py`` turns the dataclass into Typer
parameters and the values back into the dataclass, which validates them for the command line and Python
callers alike. Specs shared by several dataclasses (``--device``, ``--meta``, ``--max-pixels``) are
:class:`OptionSpec` constants in the module that owns the concept.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from dronseg_edge.errors import DronsegError

_TYPES = {"bool": bool, "int": int, "float": float, "str": str, "Path": Path}


def whole(value, flag: str, least: int = 1, hint: str = "", most: float = math.inf) -> int:
    """``value`` as an int; DronsegError naming ``flag`` when it is not a whole number (2.5 is not taken as 2, nor
    "2" or True as a count) or is outside ``least``..``most``; ``hint`` ends the message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not least <= value <= most:
        span = f"at least {least}" if most == math.inf else f"from {least} to {most}"
        shown = f"of {value.bit_length()} bits" if isinstance(value, int) and value.bit_length() > 13_000 else repr(value)
        raise DronsegError(f"{flag} {shown} must be a whole number, {span}{hint}")  # repr(): ValueError past 4300 digits
    return int(value)


def number(value, flag: str) -> float:
    """``value`` as a float; DronsegError naming ``flag`` when it is not a real number ("0.1" or True is not taken)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DronsegError(f"{flag} {value!r} must be a number")
    return float(value)


def one_of(value, flag: str, choices, hint: str = "") -> None:
    """DronsegError naming ``flag`` and the ``choices`` when ``value`` is not one of them; ``hint`` ends the message."""
    if value not in tuple(choices):  # a tuple: an unhashable value ([...] for a dict's keys) is refused, not a TypeError
        raise DronsegError(f"{flag} {value!r} is not one of {', '.join(map(str, choices))}{hint}")


@dataclass(frozen=True)
class OptionSpec:
    """How a field reads on the command line.

    ``names``: its spellings (default ``--field-name``; a bool is always ``--x/--no-x``). ``aliases``: old
    spellings, still accepted, hidden from --help. ``parse``: the command-line text -> the field's value
    (a WxH size, a class list); such an option left out keeps the field's default. ``default_text``: the
    default as --help shows it (needed where the default is None: say what None means). ``also``: more
    fields of the same dataclass that take the same value. ``argument``: positional. ``type``: the
    command-line type where the annotation does not say it (``str | torch.device``, a list argument).
    """

    help: str
    names: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    parse: Callable[[str], Any] | None = None
    default_text: str | None = None
    metavar: str | None = None
    also: tuple[str, ...] = ()
    argument: bool = False
    type: Any = None

    def cli_names(self, field_name: str) -> tuple[str, ...]:
        return self.names or (f"--{field_name.replace('_', '-')}",)


def option(default: Any = dataclasses.MISSING, spec: str | OptionSpec = "", **settings) -> Any:
    """A dataclass field that is a command-line option: ``option(0.5, "Opacity ...")`` or
    ``option("auto", DEVICE)`` (a shared spec, ``settings`` replacing some of its parts)."""
    spec = spec if isinstance(spec, OptionSpec) else OptionSpec(spec)
    spec = dataclasses.replace(spec, **settings) if settings else spec
    return dataclasses.field(default=default, metadata={"option": spec})


def option_group(cls: type) -> Any:
    """A nested dataclass field whose options the command takes as its own (``TrainConfig.augment``)."""
    return dataclasses.field(default_factory=cls, metadata={"option_group": cls})


def option_fields(cls: type) -> Iterator[tuple[dataclasses.Field, OptionSpec | type]]:
    """(field, its OptionSpec, or the dataclass of an option group) for every option field of ``cls``."""
    for f in dataclasses.fields(cls):
        found = f.metadata.get("option") or f.metadata.get("option_group")
        if found is not None:
            yield f, found


def value_type(f: dataclasses.Field) -> Any:
    """The type of an option's command-line value: the spec's, ``str`` for a parsed option, else the
    field's annotation without ``None`` (bool, int, float, str or Path)."""
    spec: OptionSpec = f.metadata["option"]
    if spec.type is not None:
        return spec.type
    if spec.parse is not None:
        return str
    text = f.type if isinstance(f.type, str) else str(f.type).replace("pathlib.", "")
    parts = [part.strip() for part in text.split("|") if part.strip() != "None"]
    if len(parts) == 1 and parts[0] in _TYPES:
        return _TYPES[parts[0]]
    raise TypeError(f"option field {f.name}: cannot tell the command-line type of {text!r}; give option(type=...)")
