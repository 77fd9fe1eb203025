"""The entry point: command-line mistakes are one-line errors with a non-zero exit, help still works."""

from __future__ import annotations

import pytest

from dronseg_edge.cli import main


def run(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.mark.parametrize("args, words", [
    (["train", "--data", "d", "--epochs", "abc"], "Invalid value for '--epochs'"),
    (["train", "--data", "d", "--save-every-steps", "-1"], "'--save-every-steps'"),
    (["infer", "m.pt", "video.mp4", "--bogus"], "No such option: --bogus"),
    (["export"], "Missing argument 'checkpoint'"),
    (["nosuch"], "No such command 'nosuch'"),
])
def test_command_line_mistakes_are_one_line(capsys, args, words):
    code, out, err = run(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
    assert "-h`)" in lines[0] and "Traceback" not in err


def test_help_exits_zero_and_lists_the_commands(capsys):
    code, out, _err = run(capsys, "-h")
    assert code == 0
    for command in ("synth", "train", "eval", "submit", "export", "parity", "infer", "bench", "checks"):
        assert command in out


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_package_version_and_exits_zero(capsys, flag):
    from dronseg_edge import __version__

    code, out, err = run(capsys, flag)
    assert code == 0 and err == ""
    assert out == f"dronseg-edge {__version__}\n"
