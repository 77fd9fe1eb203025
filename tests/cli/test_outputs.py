"""An output path that cannot be written is refused before any work starts, by every command: one line,
exit code 2. Proven on a read-only mount (what root meets too) and, for other users, a 0555 folder."""

import json
import os
from pathlib import Path
import shutil
import subprocess
import sys

import pytest
from testkit import mount_tmpfs, remount_tmpfs, run_cli

from dronseg_edge.cli.outputs import check_out_dir, check_out_file
from dronseg_edge.errors import DronsegError


@pytest.fixture(scope="module")
def read_only(tmp_path_factory, tiny_checkpoint):
    """A read-only file system holding a run folder with weights/last.pt."""
    disk = tmp_path_factory.mktemp("ro") / "disk"
    with mount_tmpfs(disk, size="64m"):
        (disk / "run" / "weights").mkdir(parents=True)
        shutil.copy2(tiny_checkpoint, disk / "run" / "weights" / "last.pt")
        remount_tmpfs(disk, "ro")
        yield disk


COMMANDS = {
    "train": lambda ckpt, data, ro: ["train", "--data", data, "--out", ro / "run2"],
    "train --resume": lambda ckpt, data, ro: ["train", "--data", data, "--resume", ro / "run" / "weights" / "last.pt"],
    "export": lambda ckpt, data, ro: ["export", ckpt, "--out", ro / "export"],
    "parity --json": lambda ckpt, data, ro: ["parity", ckpt, ckpt, "--json", ro / "parity.json"],
    "eval --json": lambda ckpt, data, ro: ["eval", ckpt, "--json", ro / "scores.json"],
    "submit --out": lambda ckpt, data, ro: ["submit", ckpt, "--data", data, "--out", ro / "submission.csv"],
    "bench --matrix --out": lambda ckpt, data, ro: ["bench", ckpt, "--matrix", "--out", ro / "matrix"],
    "bench --json": lambda ckpt, data, ro: ["bench", ckpt, "--json", ro / "bench.json"],
    "synth": lambda ckpt, data, ro: ["synth", ro / "data"],
    "infer": lambda ckpt, data, ro: ["infer", ckpt, data / "imgs" / "imgs", "--out", ro / "infer", "--device", "cpu"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_a_read_only_output_at_once(command, read_only, tiny_checkpoint, synth_root, capsys):
    code, stderr = run_cli(capsys, *COMMANDS[command](tiny_checkpoint, synth_root, read_only))
    assert code == 2 and "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(read_only) in lines[0], stderr
    assert "Read-only file system" in lines[0] or "not writable" in lines[0], lines[0]
    assert sorted(os.listdir(read_only)) == ["run"]


def test_an_existing_read_only_folder_is_called_not_writable_not_uncreatable(read_only, tiny_checkpoint, capsys):
    code, stderr = run_cli(capsys, "export", tiny_checkpoint, "--out", read_only / "run")
    assert code == 2 and stderr.strip() == (f"error: output folder {read_only / 'run'} (--out) is not writable "
                                            "(Read-only file system): choose another folder, or make it writable")


def test_a_report_whose_folder_is_read_only_or_cannot_be_made_says_which(read_only, tiny_checkpoint, tmp_path, capsys):
    ro, long = read_only / "scores.json", tmp_path / ("a" * 300) / "scores.json"
    assert run_cli(capsys, "eval", tiny_checkpoint, "--json", ro) == (
        2, f"error: --json {ro}: folder {read_only} is not writable (Read-only file system); choose another path\n")
    assert run_cli(capsys, "eval", tiny_checkpoint, "--json", long) == (  # not "name too long" after the scoring
        2, f"error: --json {long}: cannot create its folder {long.parent} (File name too long); choose another path\n")


def test_infer_without_out_in_a_read_only_working_folder_is_refused_before_the_model_loads(read_only, tiny_checkpoint,
                                                                                           synth_root, monkeypatch, capsys):
    """The default runs/infer/expN could not be made: found after the model had loaded, in a line not naming --out."""
    import dronseg_edge.pipeline as pipeline

    monkeypatch.chdir(read_only)
    monkeypatch.setattr(pipeline, "Segmenter", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    code, stderr = run_cli(capsys, "infer", tiny_checkpoint, synth_root / "imgs" / "imgs", "--device", "cpu")
    assert code == 2 and stderr.strip() == (f"error: cannot make a run folder in {read_only / 'runs' / 'infer'} "
                                            "(Read-only file system): give --out DIR")
    assert sorted(os.listdir(read_only)) == ["run"]


def test_train_without_out_in_a_read_only_working_folder_is_refused_before_the_data_checks(read_only, synth_root,
                                                                                         monkeypatch, capsys):
    """runs/train could not be made: found after the data checks, in a line not naming --out."""
    import dronseg_edge.train.fit as fit

    monkeypatch.chdir(read_only)
    monkeypatch.setattr(fit, "fit", lambda *args, **kwargs: pytest.fail("training started"))
    code, stderr = run_cli(capsys, "train", "--data", synth_root)
    assert code == 2 and stderr.strip() == (f"error: cannot make a run folder in {read_only / 'runs' / 'train'} "
                                            "(Read-only file system): give --out DIR")
    assert sorted(os.listdir(read_only)) == ["run"]


@pytest.mark.parametrize("command", [["export"], ["bench", "--matrix", "--iters", "1"]])
def test_exports_beside_a_checkpoint_on_a_read_only_disk_are_refused_naming_out(command, read_only, capsys):
    """bench --matrix measured the checkpoint, then failed every ONNX row with 'choose another output folder' (exit 0);
    export's refusal did not name --out either."""
    checkpoint = read_only / "run" / "weights" / "last.pt"
    code, stderr = run_cli(capsys, command[0], checkpoint, "--device", "cpu", *command[1:])
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("error: cannot create output folder ") and "--out's default" in stderr, stderr


@pytest.fixture(scope="module")
def no_inode_left(tmp_path_factory, tiny_checkpoint):
    """A file system with space but no inode left (a card full of small mask PNGs), holding run/weights/last.pt."""
    disk = tmp_path_factory.mktemp("full") / "disk"
    with mount_tmpfs(disk, size="64m,nr_inodes=4"):  # the root, run, weights and last.pt
        (disk / "run" / "weights").mkdir(parents=True)
        shutil.copy2(tiny_checkpoint, disk / "run" / "weights" / "last.pt")
        yield disk


@pytest.mark.parametrize("command", ["infer", "train"])
def test_without_out_a_working_folder_on_a_full_disk_exits_5_at_once(command, no_inode_left, tiny_checkpoint,
                                                                      synth_root, monkeypatch, capsys):
    """The default runs/infer (runs/train) on a disk with no inode left was exit 2 "give --out DIR", as a read-only
    one; a full disk is 5, as with --out."""
    monkeypatch.chdir(no_inode_left)
    args = [tiny_checkpoint, synth_root / "imgs" / "imgs"] if command == "infer" else ["--data", synth_root]
    code, stderr = run_cli(capsys, command, *args, "--device", "cpu")
    assert code == 5 and stderr.startswith(f"error: cannot write {no_inode_left}/runs/") and "No space left" in stderr, \
        stderr
    assert sorted(os.listdir(no_inode_left)) == ["run"]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_on_a_full_disk_exits_5_at_once(command, no_inode_left, tiny_checkpoint, synth_root, capsys):
    """The probe file refused with ENOSPC was exit 2 "choose another folder", which a supervisor never restarts, where
    the same full disk found a moment later is 5, restarted once space is freed."""
    code, stderr = run_cli(capsys, *COMMANDS[command](tiny_checkpoint, synth_root, no_inode_left))
    assert code == 5 and stderr.startswith(f"error: cannot write {no_inode_left}/") and "No space left" in stderr, stderr
    assert sorted(os.listdir(no_inode_left)) == ["run"]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_a_name_too_long_at_once(command, tiny_checkpoint, synth_root, tmp_path, capsys):
    """Issue 19: a 300-character --out crashed every command (OSError ENAMETOOLONG from Path.exists)."""
    long = tmp_path / ("a" * 300)
    code, stderr = run_cli(capsys, *COMMANDS[command](tiny_checkpoint, synth_root, long))
    assert code == 2 and "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "name too long" in lines[0].lower(), stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args", [["infer", "{long}.onnx", "{image}", "--out", "{out}"], ["export", "{long}.pt"],
                                  ["infer", "{ckpt}", "{long}.png", "--out", "{out}"], ["train", "--data", "{long}"],
                                  ["bench", "{long}.onnx"], ["eval", "{long}.engine"]])
def test_a_name_too_long_anywhere_on_the_command_line_is_one_line(args, tiny_checkpoint, synth_root, tmp_path, capsys):
    long, image = tmp_path / ("b" * 300), next((synth_root / "imgs" / "imgs").iterdir())
    code, stderr = run_cli(capsys, *[a.format(long=long, ckpt=tiny_checkpoint, image=image, out=tmp_path / "o") for a in args])
    assert code == 2 and "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "too long" in lines[0], stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0555 folder anyway: the read-only mount test covers root")
def test_a_folder_without_write_permission_is_refused(tmp_path, tiny_checkpoint, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    code, stderr = run_cli(capsys, "export", tiny_checkpoint, "--out", locked / "export")
    assert code == 2 and stderr.startswith("error: cannot create output folder ") and "Permission denied" in stderr


def test_the_checks_create_nothing(tmp_path):
    assert check_out_dir(tmp_path / "new" / "folder") == tmp_path / "new" / "folder"
    assert check_out_file(tmp_path / "deeper" / "x.json", "--json") == tmp_path / "deeper" / "x.json"
    assert os.listdir(tmp_path) == []  # the probe files are gone, and no folder was made
    (tmp_path / "file").write_text("x")
    with pytest.raises(DronsegError, match=r"^cannot create output folder .*file/run \(--out\): .*file is a file; "):
        check_out_dir(tmp_path / "file" / "run")
    with pytest.raises(DronsegError, match=r"^--json .* is a folder: give a file name inside it$"):
        check_out_file(tmp_path, "--json")
    with pytest.raises(DronsegError, match=r"^--markdown - would write a file named '-': give a file name"):
        check_out_file("-", "--markdown")  # bench --markdown -: '-' is standard output only for --json


@pytest.mark.parametrize("args", [["synth", "-"], ["infer", "m.onnx", "v.mp4", "--out", "-"],
                                  ["export", "m.pt", "--out", "-"], ["train", "--data", ".", "--out", "-"],
                                  ["bench", "m.pt", "--matrix", "--out", "-"]])
def test_an_output_folder_named_dash_is_refused_not_made(args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(capsys, *args)
    assert code == 2 and err.startswith("error: ") and "would write into a folder named '-'" in err, err
    assert not (tmp_path / "-").exists()


def test_infer_refuses_an_unwritable_out_before_opening_the_model(tmp_path, monkeypatch, capsys):
    from dronseg_edge.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", str(tmp_path / "missing.onnx"), str(tmp_path / "missing.mp4"), "--out", str(blocker / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot create output folder") and "--out" in err and "missing" not in err


def test_a_full_disk_when_making_an_output_folder_is_a_runtime_failure(tmp_path, monkeypatch):
    import errno

    from dronseg_edge.atomic import ensure_writable_dir
    from dronseg_edge.errors import RuntimeFailure

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "mkdir", full)
    with pytest.raises(RuntimeFailure, match="No space left on device .*free"):
        ensure_writable_dir(tmp_path / "new")


@pytest.mark.parametrize("option", ["submit --out", "eval --json", "parity --json", "bench --json", "bench --markdown"])
def test_an_output_that_is_the_commands_model_is_refused(option, tiny_checkpoint, synth_root, tmp_path, capsys):
    """`submit best.pt --out best.pt` (or eval's --json) replaced the trained checkpoint with its CSV (JSON), exit 0."""
    ckpt = Path(shutil.copy2(tiny_checkpoint, tmp_path / "best.pt"))
    command, flag = option.split()
    extra = {"submit": ["--data", synth_root], "eval": ["--data", synth_root], "parity": [ckpt]}.get(command, [])
    code, stderr = run_cli(capsys, command, ckpt, *extra, flag, tmp_path / "." / "best.pt", "--device", "cpu")
    assert code == 2 and stderr.strip().startswith(f"error: {flag} ") and "is also an input" in stderr, stderr
    assert ckpt.read_bytes() == tiny_checkpoint.read_bytes()


@pytest.mark.parametrize("option, kept", [("submit --out", "imgs/imgs/{id}.jpg"), ("eval --json", "masks/masks/{id}.png"),
                                          ("bench --json", "other.onnx"), ("bench --markdown", "other.pt")])
def test_an_output_over_an_image_or_a_model_file_is_refused(option, kept, tiny_checkpoint, synth_root, tmp_path, capsys):
    """`submit best.pt --data DATA --out DATA/imgs/imgs/X.jpg` replaced a test image with the CSV, exit 0: a report
    never replaces an existing image or model file, the command's input or not."""
    data = Path(shutil.copytree(synth_root, tmp_path / "data"))
    image_id = (data / ("train.csv" if "masks" in kept else "test.csv")).read_text().split()[1]
    target = data / kept.format(id=image_id) if "/" in kept else Path(shutil.copy2(tiny_checkpoint, tmp_path / kept))
    before = target.read_bytes()
    command, flag = option.split()
    extra = ["--data", data] if command != "bench" else []
    code, stderr = run_cli(capsys, command, tiny_checkpoint, *extra, flag, target, "--device", "cpu")
    assert code == 2 and stderr.strip() == f"error: {flag} {target} is an image or model file and would be replaced: " \
                                           "give another name", stderr
    assert target.read_bytes() == before


def test_an_output_that_is_an_input_under_another_name_is_refused(tmp_path):
    """On a case-insensitive disk (macOS, the exFAT SD card of a drone) `submit best.pt --out BEST.PT` names the
    checkpoint, which resolve() does not see; a hard link is the same file under another name on any disk."""
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"weights")
    os.link(ckpt, tmp_path / "BEST.PT")
    with pytest.raises(DronsegError, match="--out .*BEST.PT is also an input of this command"):
        check_out_file(tmp_path / "BEST.PT", "--out", [ckpt])
    assert check_out_file(tmp_path / "other.csv", "--out", [ckpt]) == tmp_path / "other.csv"


@pytest.mark.parametrize("command", ["eval", "bench", "parity", "export"])
def test_an_output_over_an_input_engines_sidecar_or_the_checkpoint_is_refused(command, tiny_checkpoint, tmp_path, capsys):
    """`eval X.engine --json X.engine.json` replaced the metadata the engine is read with (it then runs nowhere), and
    `export best.pt --format engine --timing-cache best.pt` would write TensorRT's cache over the checkpoint: both
    refused before any model is read (no TensorRT needed for the check)."""
    engine = tmp_path / "best.engine"
    engine.write_bytes(b"plan")
    (tmp_path / "best.engine.json").write_text("{}")
    ckpt = Path(shutil.copy2(tiny_checkpoint, tmp_path / "best.pt"))
    args = {"export": [ckpt, "--format", "engine", "--timing-cache", tmp_path / "." / "best.pt"],
            "parity": [ckpt, engine, "--json", tmp_path / "best.engine.json"]}.get(
        command, [engine, "--json", tmp_path / "best.engine.json"])
    code, stderr = run_cli(capsys, command, *args, "--device", "cpu")
    flag = "--timing-cache" if command == "export" else "--json"
    assert code == 2 and stderr.strip().startswith(f"error: {flag} ") and "is also an input" in stderr, stderr
    assert (tmp_path / "best.engine.json").read_text() == "{}" and ckpt.read_bytes() == tiny_checkpoint.read_bytes()


@pytest.mark.parametrize("args", [["eval", "{ckpt}", "--json"], ["parity", "{ckpt}", "{ckpt}", "--json"],
                                  ["bench", "{ckpt}", "--matrix", "--json"], ["bench", "{ckpt}", "--matrix", "--markdown"]])
def test_an_output_over_the_data_sets_csv_is_refused(args, tiny_checkpoint, tmp_path, capsys):
    """`eval best.pt --data DATA --json DATA/train.csv` replaced the data set's list with JSON, exit 0 (every later
    train or eval of DATA then failed); refused before any work, as `submit --out DATA/test.csv` already was."""
    (tmp_path / "data").mkdir()
    csv = tmp_path / "data" / "train.csv"
    csv.write_text("ImageID\n000001_001\n")
    args = [str(tiny_checkpoint) if arg == "{ckpt}" else arg for arg in args]
    code, stderr = run_cli(capsys, *args, csv, "--data", tmp_path / "data", "--device", "cpu")
    assert code == 2 and f"error: {args[-1]} " in stderr and "is also an input" in stderr, stderr
    assert csv.read_text() == "ImageID\n000001_001\n"


@pytest.mark.parametrize("command", [["eval", "--split", "all"], ["parity", "{ckpt}"], ["bench", "--matrix"],
                                     ["bench", "--matrix", "--markdown"]])
def test_an_output_over_the_csv_of_the_data_set_the_checkpoint_records_is_refused(command, tiny_checkpoint, tmp_path, capsys):
    """Without --data the checkpoint's recorded data set is read: `eval best.pt --json DATA/train.csv` replaced its CSV."""
    import torch

    from dronseg_edge.checkpoint import save_checkpoint

    (tmp_path / "data" / "imgs" / "imgs").mkdir(parents=True)
    csv = tmp_path / "data" / "train.csv"
    csv.write_text("ImageID\n000001_001\n")
    state = torch.load(tiny_checkpoint, weights_only=True)
    ckpt = save_checkpoint(tmp_path / "best.pt", {**state, "config": {"data": str(tmp_path / "data")}})
    args = [ckpt if arg == "{ckpt}" else arg for arg in command]
    flag = "--markdown" if "--markdown" in args else "--json"  # bench --markdown went through check_out_file alone
    code, stderr = run_cli(capsys, args[0], ckpt, *[arg for arg in args[1:] if arg != flag], flag, csv, "--device", "cpu")
    assert code == 2 and f"error: {flag} {csv} is also an input" in stderr, stderr
    assert csv.read_text() == "ImageID\n000001_001\n"


def test_a_reader_that_has_gone_ends_the_text_not_the_command(tmp_path):
    """`checks | head -1` exited 1 (click's answer to a closed pipe, and checks' "a FAIL"), before writing its --json."""
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the first line
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-m", "dronseg_edge", "checks", "--json", str(tmp_path / "c.json")],
                          stdout=write, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    os.close(write)
    statuses = [check["status"] for check in json.loads((tmp_path / "c.json").read_text())]
    assert (done.returncode, done.stderr) == (int("FAIL" in statuses), "")


@pytest.mark.parametrize("command", ["export", "infer"])
def test_a_reader_gone_changes_no_exit_code_and_no_output(command, tiny_checkpoint, tmp_path):
    """`export ... | head -1` exited 1 with nothing said, where its parity report said PASSED (0) or FAILED (4), and
    `infer ... | true` exited 1 before its run began: click's answer to the closed pipe at the command's own first line."""
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((64, 96, 3), np.uint8))
    args = {"export": ["--precision", "fp16", "--min-agreement", "100"], "infer": [tmp_path / "a.png"]}[command]
    read, write = os.pipe()
    os.close(read)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-m", "dronseg_edge", command, tiny_checkpoint, *args, "--out", tmp_path / "out",
                           "--device", "cpu"], stdout=write, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    os.close(write)
    if command == "export":
        passed = json.loads(next((tmp_path / "out").glob("*.parity.json")).read_text())["passed"]
        assert done.returncode == (0 if passed else 4), done.stderr[-2000:]
    else:
        assert done.returncode == 0 and json.loads((tmp_path / "out" / "summary.json").read_text())["stopped"] == "end"
