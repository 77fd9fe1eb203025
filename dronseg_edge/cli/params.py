"""Typer parameters from option fields (option_fields.py), and the options of commands that feed no dataclass.

Old spellings of an option (``aliases``) are accepted and hidden from --help; an option with a ``parse``
function (a WxH size) keeps the field's default unless given. Options shared by commands without a
dataclass (``--device``, ``--meta``, ``--json`` ...) are ``Annotated`` aliases: ``device: Device = "auto"``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from dronseg_edge.devices import DEVICE
from dronseg_edge.errors import DronsegError
from dronseg_edge.media import MAX_PIXELS
from dronseg_edge.metadata import META
from dronseg_edge.option_fields import OptionSpec, option_fields, value_type

_KEYWORD = inspect.Parameter.KEYWORD_ONLY


def typer_info(spec: OptionSpec, name: str, kind: Any, default: Any = None, hidden: bool = False, names=None):
    """The ``typer.Option`` (or ``Argument``) of ``spec`` for parameter ``name`` of type ``kind``; --help shows
    ``default`` (sizes as 1280x720; None: nothing, unless ``spec.default_text`` says what None means)."""
    if spec.argument:
        return typer.Argument(metavar=spec.metavar or name.upper(), help=spec.help)
    names = names or spec.cli_names(name)
    if kind is bool and len(names) == 1 and "/" not in names[0]:
        names = (f"{names[0]}/--no-{names[0][2:]}",)  # every flag has its negative
    show = spec.default_text if spec.default_text is not None else (
        "x".join(map(str, default)) if isinstance(default, tuple) else default is not None)
    return typer.Option(*names, help=spec.help, show_default=show, hidden=hidden, metavar=spec.metavar)


def annotated(spec: OptionSpec, kind: Any) -> Any:
    """``Annotated[Optional[kind], typer.Option(...)]`` of ``spec``, for a command that feeds no dataclass."""
    return Annotated[Optional[kind], typer_info(spec, spec.cli_names("")[0], kind, default=True)]


def parameters(cls: type) -> list[inspect.Parameter]:
    """One keyword parameter per option field of ``cls`` (and of its option groups), plus one hidden
    parameter per old spelling (``NAME__N``)."""
    made = []
    for f, spec in option_fields(cls):
        if not isinstance(spec, OptionSpec):
            made += parameters(spec)
            continue
        kind, default = value_type(f), f.default
        cli_default = inspect.Parameter.empty if spec.argument else None if spec.parse is not None else default
        info = typer_info(spec, f.name, kind, default)
        annotation = Optional[kind] if cli_default is None else kind
        made.append(inspect.Parameter(f.name, _KEYWORD, default=cli_default, annotation=Annotated[annotation, info]))
        for number, alias in enumerate(spec.aliases):
            old = typer_info(spec, f.name, kind, hidden=True, names=(alias,))
            made.append(inspect.Parameter(f"{f.name}__{number}", _KEYWORD, default=None,
                                          annotation=Annotated[Optional[kind], old]))
    return made


def build(cls: type, values: dict[str, Any]) -> Any:
    """``cls`` made from the command-line ``values`` of its option fields (taken out of ``values``)."""
    given = {}
    for f, spec in option_fields(cls):
        if not isinstance(spec, OptionSpec):
            given[f.name] = build(spec, values)
            continue
        value = values.pop(f.name)
        for number, alias in enumerate(spec.aliases):
            old = values.pop(f"{f.name}__{number}")
            if old is not None and value not in (None, f.default, old):
                raise DronsegError(f"{alias} is the old spelling of {spec.cli_names(f.name)[0]}: give one of them")
            value = value if old is None else old
        if spec.parse is not None:
            if value is None:
                continue  # not given: the field's default
            value = spec.parse(value)
        given.update(dict.fromkeys((f.name, *spec.also), value))
    return cls(**given)


def takes(**groups: type) -> Callable[[Callable], Callable]:
    """Decorator: the command gains the option fields of each dataclass in ``groups`` (keyword -> class)
    as parameters, and is called with the dataclass, made and validated, under that keyword."""

    def wrap(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [p.replace(kind=_KEYWORD) for p in signature.parameters.values() if p.name not in groups]
        made = [param for cls in groups.values() for param in parameters(cls)]
        names = [p.name for p in own + made]
        if len(names) != len(set(names)):
            raise TypeError(f"{command.__name__}: two parameters share a name in {names}")

        def run(**values: Any) -> Any:
            for keyword, cls in groups.items():
                values[keyword] = build(cls, values)
            return command(**values)

        for attribute in ("__name__", "__qualname__", "__doc__", "__module__"):
            setattr(run, attribute, getattr(command, attribute))
        run.__signature__ = signature.replace(parameters=own + made)
        return run

    return wrap


# Options of commands that feed no dataclass, each spelled once.
Device = annotated(DEVICE, str)
Meta = annotated(META, Path)
MaxPixels = annotated(MAX_PIXELS, int)
Json = annotated(OptionSpec("Write the command's results as JSON to FILE; '-' prints them on standard output "
                            "instead (the text then goes to standard error).", names=("--json",),
                            metavar="FILE", default_text="none"), Path)
MinAgreement = annotated(OptionSpec("Parity: minimum argmax agreement, %.", names=("--min-agreement",),
                                    default_text="by precision: fp32 99.9, fp16 99.5, int8 98"), float)
MaxMiouDrop = annotated(OptionSpec("Parity: maximum mIoU loss against the ground truth, points.",
                                   names=("--max-miou-drop",), default_text="int8 1.0, else none"), float)
