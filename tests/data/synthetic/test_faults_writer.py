"""``synth`` on a disk that fills up: one line naming the file, exit code 5, and a data set without its
CSVs (which are written last), so nothing reads it as finished."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from testkit import mount_tmpfs, remount_tmpfs

from dronseg_edge.cli import main


def test_synth_on_a_real_full_disk_exits_5_and_leaves_no_finished_looking_data_set(tmp_path, capsys):
    with mount_tmpfs(tmp_path / "disk", size="64k") as disk:  # about 15 of the 40 tiny images fit
        root = disk / "data"
        try:
            main(["synth", str(root), "--images", "40", "--size", "96x64", "--video-frames", "0"])
            code = 0
        except SystemExit as exc:
            code = exc.code
        stderr = capsys.readouterr().err
        assert code == 5 and "Traceback" not in stderr
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and re.fullmatch(
            rf"error: cannot write {re.escape(str(root))}/(imgs/imgs|masks/masks|test_masks)/\d{{6}}_\d{{3}}\.(jpg|png): "
            r"No space left on device \([0-9.]+ k?B free\): free some space or choose another output folder", errors[0]), stderr
        assert not [name for name in os.listdir(root) if name.endswith(".csv")]
        assert json.loads((root / "synth.json").read_text()) == {"generator": "dronseg-edge synth", "finished": False}
        for folder, _dirs, files in os.walk(root):
            assert not [name for name in files if name.startswith(".")], folder  # no temporary file left
        remount_tmpfs(disk, "size=4m")  # the user frees some space: synth --force redoes the set
        try:
            main(["synth", str(root), "--images", "40", "--size", "96x64", "--video-frames", "0", "--force"])
        except SystemExit as exc:
            assert exc.code == 0, capsys.readouterr().err
        assert json.loads((root / "synth.json").read_text())["finished"] is True and (root / "train.csv").is_file()


def test_synth_into_a_folder_whose_name_opencv_cannot_take_is_one_line_and_writes_nothing(tmp_path):
    # Latin-1 bytes in the name: OpenCV's video writer crashed the process (SIGSEGV) after the images were written
    root = tmp_path / os.fsdecode(b"d\xe9mo")
    done = subprocess.run([sys.executable, "-m", "dronseg_edge", "synth", root, "--images", "2", "--size", "64x48",
                           "--video-frames", "2"], env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "take file names as UTF-8" in done.stderr and not root.exists()
