"""The entry point: command-line mistakes are one-line errors with a non-zero exit, help still works."""

from __future__ import annotations

import importlib

import pytest

from dronseg_edge.cli import main


def run(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.mark.parametrize("args, words", [
    (["train", "--data", "d", "--epochs", "abc"], "Invalid value for '--epochs'"),
    (["train", "--data", "d", "--save-every-steps", "x"], "'--save-every-steps'"),
    (["infer", "m.pt", "video.mp4", "--bogus"], "No such option: --bogus"),
    (["export"], "Missing argument 'CHECKPOINT'"),
    (["nosuch"], "No such command 'nosuch'"),
])
def test_command_line_mistakes_are_one_line(capsys, args, words):
    code, out, err = run(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
    assert "-h`)" in lines[0] and "Traceback" not in err


def test_help_exits_zero_and_lists_the_commands_and_exit_codes(capsys):
    code, out, _err = run(capsys, "-h")
    assert code == 0
    for command in ("synth", "train", "eval", "submit", "export", "parity", "infer", "bench", "checks"):
        assert command in out
    text = " ".join(out.split())
    for words in ("Exit codes: 0 done", "2 usage or configuration error", "3 an optional runtime", "4 a parity check",
                  "5 runtime failure a restart may cure", "a camera or stream that cannot be opened",
                  "130 interrupted (Ctrl-C, SIGTERM, SIGHUP)", "RestartPreventExitStatus=2 3 4",
                  "SuccessExitStatus=130"):
        assert words in text, words


def test_a_full_disk_no_command_caught_is_still_one_line_with_exit_code_5(capsys, monkeypatch, tmp_path):
    import errno

    app_module = importlib.import_module("dronseg_edge.cli.main")  # the module that runs the Typer app

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "weights" / "last.pt"))

    monkeypatch.setattr(app_module, "app", full)
    code, out, err = run(capsys, "train")
    assert code == 5 and out == "" and "Traceback" not in err
    assert err.startswith(f"error: cannot write {tmp_path}/weights/last.pt: No space left on device (") and \
        err.count("\n") == 1


@pytest.mark.skipif(not __import__("os").path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_standard_output_on_a_full_disk_is_named_as_such():
    """`checks > /full/disk/checks.txt` said "cannot write .: No space left on device (60.4 GB free)": the current
    folder and its free space, where standard output's file system was full."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with open("/dev/full", "w") as full:  # every write: ENOSPC
        done = subprocess.run([sys.executable, "-m", "dronseg_edge", "--version"], env=env, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 5 and done.stderr.startswith("error: cannot write standard output: No space left on "
                                                           "device (") and done.stderr.count("\n") == 1, done.stderr


def test_an_input_this_user_cannot_read_is_a_usage_error_not_a_failed_write(capsys, monkeypatch, tmp_path):
    import errno
    import os

    app_module = importlib.import_module("dronseg_edge.cli.main")  # the module that runs the Typer app
    locked = tmp_path / "data" / "imgs"
    locked.mkdir(parents=True)

    def refused(*args, **kwargs):  # listing data/imgs/imgs inside the folder this user may not enter
        raise PermissionError(errno.EACCES, "Permission denied", str(locked / "imgs"))

    monkeypatch.setattr(app_module, "app", refused)
    real_access = os.access  # root reads every folder: the permission bits as a user meets them
    monkeypatch.setattr(os, "access", lambda path, mode: os.fspath(path) != str(locked) and real_access(path, mode))
    code, out, err = run(capsys, "train")
    assert (code, out) == (2, "") and err == (f"error: cannot read {locked}: Permission denied: make it readable by "
                                              "this user (chmod, chown) or run as its owner\n")
    monkeypatch.setattr(os, "access", real_access)  # the same refusal on a folder this user may read: a refused write
    code, _, err = run(capsys, "train")
    assert code == 5 and err.startswith(f"error: cannot write {locked}/imgs: Permission denied")

    def nameless(*args, **kwargs):  # naming no file: a write to standard output (_unreadable(None) was a TypeError)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(app_module, "app", nameless)
    code, _, err = run(capsys, "train")
    assert code == 5 and err.startswith("error: cannot write standard output: Permission denied")


def test_other_os_errors_stay_bugs_with_their_traceback(monkeypatch):
    app_module = importlib.import_module("dronseg_edge.cli.main")  # the module that runs the Typer app

    def broken(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "/nowhere")

    monkeypatch.setattr(app_module, "app", broken)
    with pytest.raises(FileNotFoundError):
        app_module.main(["infer"])


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_package_version_and_exits_zero(capsys, flag):
    from dronseg_edge import __version__

    code, out, err = run(capsys, flag)
    assert code == 0 and err == ""
    assert out == f"dronseg-edge {__version__}\n"


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_termination_signal_stops_any_command_like_ctrl_c(tmp_path, signame):
    """systemd's stop (SIGTERM) and a closed terminal (SIGHUP) reach a command as KeyboardInterrupt: its
    cleanup runs and it exits 130 with one line, where the default action would kill it outright (-15/-1)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-m", "dronseg_edge", "synth", str(tmp_path / "data"), "--images", "400",
                             "--size", "640x360", "--video-frames", "0"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "data").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)  # the command is running (its output folder exists): its handlers are in place
    time.sleep(0.5)
    assert proc.poll() is None, "synth finished before the signal: give it more images"
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert not list((tmp_path / "data").rglob(".*.tmp*"))  # no temporary file of an atomic write left



def test_a_command_started_with_standard_error_closed_runs(tmp_path):
    """`2>&-` or a daemon's closed descriptor makes sys.stderr None: tqdm's progress bar (synth, eval, submit, train),
    infer's and `checks`' ONNX Runtime probe failed on it, exit 1 with nothing said and, for infer, no summary.json."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(["sh", "-c", 'exec "$@" 2>&-', "sh", sys.executable, "-m", "dronseg_edge", "synth",
                           str(tmp_path / "data"), "--images", "2", "--size", "64x48", "--video-frames", "0"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and (tmp_path / "data" / "train.csv").is_file(), done.stdout[-2000:]


def test_infer_started_with_standard_output_closed_runs(tiny_checkpoint, tmp_path):
    """`>&-`: the next file opened took descriptor 1, and `--results -` wrote into it: exit 5 "Bad file descriptor
    ... check the disk" (a supervisor restarts on 5), or lines in a lock file. Now /dev/null holds it, as for `--json -`."""
    import os
    import json
    import subprocess
    import sys
    from pathlib import Path

    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((64, 96, 3), np.uint8))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "dronseg_edge", "infer",
                           str(tiny_checkpoint), str(tmp_path / "a.png"), "--out", str(tmp_path / "run"), "--results", "-",
                           "--device", "cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "error" not in done.stderr, done.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["results"]["lines"] == 1

@pytest.mark.parametrize("command", ["infer", "checks"])
def test_no_writable_temporary_folder_is_one_line_naming_tmpdir(command, tiny_checkpoint, tmp_path):
    """A read-only root (systemd's ProtectSystem=strict without PrivateTmp=): torch's import failed as 'installed
    but cannot be loaded: reinstall it' (exit 3; an .onnx model: a traceback in ctypes' search for CUDA's driver),
    and `checks` said ONNX Runtime 'could not be checked; please report this as a bug'."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for name in ("TMPDIR", "TORCHINDUCTOR_CACHE_DIR"):  # torch's import set the second (in the temporary folder)
        env.pop(name, None)
    code = ("import sys, tempfile; folder = sys.argv.pop(1); tempfile._candidate_tempdir_list = lambda: [folder]; "
            "from dronseg_edge.cli import main; main()")
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "frame.png"), np.zeros((48, 64, 3), np.uint8))
    args = ["infer", str(tiny_checkpoint), str(tmp_path / "frame.png")] if command == "infer" else ["checks"]
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "read-only"), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-3000:]
    assert "No usable temporary directory found" in done.stderr and "set TMPDIR to a writable folder" in done.stderr


def test_every_command_keeps_its_help_under_python_oo():
    """`python -OO` / PYTHONOPTIMIZE=2 (a small embedded image) drops docstrings: every command's description was
    gone from `dronseg-edge --help` and from its own -h."""
    import ast
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PYTHONDONTWRITEBYTECODE": "1"}
    code = ("import typer; from dronseg_edge.cli import app; "
            "print({name: c.help for name, c in typer.main.get_command(app).commands.items()})")
    done = subprocess.run([sys.executable, "-OO", "-c", code], env=env, capture_output=True, text=True, timeout=300)
    helps = ast.literal_eval(done.stdout)
    assert sorted(helps) == sorted(COMMANDS) and all(helps.values()), helps

COMMANDS = ("synth", "train", "eval", "submit", "export", "parity", "infer", "bench", "checks")


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_help_and_shows_its_default_and_flags_take_no_value(name, capsys):
    """Issue 22: one convention for every command, walked through click's own Command objects."""
    import typer
    import typer.main

    from dronseg_edge.cli import app

    command = typer.main.get_command(app).commands[name]
    for param in command.get_params(typer.Context(command, info_name=name)):
        label = f"{name} {(param.opts or [param.name])[0]}"
        if param.hidden or label.endswith("--help"):
            continue
        assert param.help, f"{label} has no help text"
        if param.param_type_name == "argument":
            assert param.required and param.metavar == param.metavar.upper(), f"{label}: a required argument, in capitals"
            continue
        assert param.required or isinstance(param.show_default, str) or (param.show_default and param.default is not None), \
            f"{label} shows no default: give it one, or show_default/default_text saying what none means"
        if param.is_flag:
            assert param.secondary_opts, f"{label}: a flag comes with its negative (--x/--no-x)"
    code, out, _err = run(capsys, name, "-h")
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert code == 0 and "<bool>" not in out and "{" not in usage and "[OPTIONS]" in usage, usage


def test_a_flag_takes_no_value(capsys):
    code, out, err = run(capsys, "infer", "m.onnx", "clip.mp4", "--half", "true")
    assert code == 2 and "unexpected extra argument" in err and "(true)" in err


def test_checks_json_without_a_file_still_prints_json(capsys):
    """`--json FILE` everywhere ('-': standard output); `checks --json` alone keeps its old meaning."""
    import json

    from dronseg_edge.cli.main import _bare_checks_json

    assert _bare_checks_json(["checks", "--json"]) == ["checks", "--json", "-"]
    assert _bare_checks_json(["checks", "--json", "-h"]) == ["checks", "--json", "-", "-h"]
    assert _bare_checks_json(["checks", "--json", "c.json"]) == ["checks", "--json", "c.json"]
    assert _bare_checks_json(["eval", "--json"]) == ["eval", "--json"]  # FILE is needed there: no guessing
    code, out, err = run(capsys, "checks", "--json")
    assert isinstance(json.loads(out), list) and "checks: " in err  # the lines go to stderr


@pytest.mark.parametrize("args, code", [(["eval", "missing.pt"], 2),
                                        (["export", "missing.pt", "--format", "engine"], 3)])
def test_a_standard_error_whose_reader_has_gone_keeps_the_exit_code(args, code, tmp_path):
    """`dronseg-edge ... 2>&1 | logger` with the logger gone: the error line raised BrokenPipeError, so every error
    exited 1, and a supervisor told to skip 2, 3 and 4 restarted a usage error (2) or a missing TensorRT (3)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    read, write = os.pipe()
    os.close(read)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-m", "dronseg_edge", *args], stdout=subprocess.DEVNULL, stderr=write,
                          env=env, cwd=tmp_path, timeout=300)
    os.close(write)
    assert done.returncode == code


def test_a_second_stop_signal_takes_its_default_action_not_a_traceback_in_the_cleanup():
    """Ctrl-C twice (or SIGTERM twice) during `train --workers 2`: the second KeyboardInterrupt was raised inside the
    cleanup the first had started (the DataLoader joining its workers: "Exception ignored in ... __del__", a traceback).
    Now the first one hands every stop signal back to its default action: a second ends the process at once."""
    import signal

    entry = importlib.import_module("dronseg_edge.cli.main")  # the module: dronseg_edge.cli.main is also the function
    from dronseg_edge.pipeline.interrupts import STOP_SIGNALS, handle_stop_signals

    ignored = {sig for sig in STOP_SIGNALS if signal.getsignal(sig) == signal.SIG_IGN}  # a background job's SIGINT
    previous = entry._stop_like_ctrl_c()
    try:
        assert all(signal.getsignal(sig) is entry._interrupt for sig in STOP_SIGNALS if sig not in ignored)  # Ctrl-C
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            signal.raise_signal(signal.SIGTERM)
        assert all(signal.getsignal(sig) == (signal.SIG_IGN if sig in ignored else signal.SIG_DFL)
                   for sig in STOP_SIGNALS)
    finally:
        handle_stop_signals(previous)


def test_a_second_signal_while_the_program_exits_ends_it_without_a_traceback(tmp_path):
    """Ctrl-C again after `interrupted` (torch's atexit hooks still running): the handlers put back at the end made it a
    KeyboardInterrupt in an atexit callback, "Exception ignored ... Traceback". Now it ends the process by the
    signal. The first signal comes as synth starts, the second from an atexit hook."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = ("import atexit, os, signal, sys, time\n"
              "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(5)))  # the second signal\n"
              "import dronseg_edge.data.synthetic as synthetic\n"
              "synthetic.synthesize = lambda *a, **k: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(5))\n"
              f"sys.argv = ['dronseg-edge', 'synth', {str(tmp_path / 'data')!r}]\n"
              "from dronseg_edge.cli import main\nmain()\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.stderr.strip().splitlines() == ["interrupted"] and done.returncode == -2, done.stderr[-2000:]


def test_a_progress_bar_whose_reader_has_gone_keeps_the_exit_code(monkeypatch, capsys, tiny_checkpoint, tmp_path):
    """`eval ... 2>&1 | head -1` (submit, train alike): tqdm's bar raised BrokenPipeError on standard error, which
    click turned into exit 1 with the scores lost. Now the bar goes to /dev/null and the command ends as it would."""
    import os
    import sys

    from dronseg_edge.data.synthetic import synthesize

    synthesize(tmp_path / "data", images=4, size=(96, 64), video_frames=0, seed=0, test_fraction=0.25)
    read, write = os.pipe()
    os.close(read)
    stderr = open(write, "w")  # noqa: SIM115 (closed below)
    monkeypatch.setattr(sys, "stderr", stderr)
    code, out, _ = run(capsys, "eval", str(tiny_checkpoint), "--data", str(tmp_path / "data"), "--split", "all",
                       "--workers", "0", "--device", "cpu")
    assert code == 0 and "mIoU" in out
    assert sys.stderr is stderr  # the caller's stream is back
    stderr.close()  # its fd now /dev/null's
