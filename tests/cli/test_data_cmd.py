"""`dronseg-edge synth`: the happy path and one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

import dronseg_edge.cli  # noqa: F401  (registers the commands)
from dronseg_edge.cli import app, main


def test_synth_writes_the_data_set_and_prints_a_summary(tmp_path):
    out = tmp_path / "data"
    result = CliRunner().invoke(app, ["synth", str(out), "--images", "6", "--size", "96x64",
                                      "--video-frames", "4", "--seed", "1", "--test-fraction", "0.5", "--fps", "25"])
    assert result.exit_code == 0, result.output
    assert "wrote 6 images (3 train, 3 test) of 96x64" in result.output
    assert "video.mp4 (4 frames, 25 fps)" in result.output
    share_lines = [line for line in result.output.splitlines() if line.rstrip().endswith("%")]
    assert len(share_lines) == 12 and share_lines[0].split()[0] == "background"
    assert len(list((out / "imgs" / "imgs").glob("*.jpg"))) == 6
    assert len(list((out / "masks" / "masks").glob("*.png"))) == 3
    assert len(list((out / "video_masks").glob("*.png"))) == 4
    assert (out / "train.csv").is_file() and (out / "sampleSubmission.csv").is_file()


def test_video_frames_zero_writes_no_video(tmp_path):
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "d"), "--images", "3", "--size", "64x48", "--video-frames", "0"])
    assert result.exit_code == 0, result.output
    assert "video    none" in result.output
    assert not (tmp_path / "d" / "video.mp4").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--images", "0"], "--images 0"),
    (["--size", "5x5"], "--size '5x5'"),
    (["--size", "wide"], "WIDTHxHEIGHT"),
    (["--size", "97x64"], "even width and height"),
    (["--test-fraction", "1.5"], "--test-fraction 1.5"),
    (["--video-frames", "-1"], "--video-frames -1"),
    (["--fps", "0"], "--fps 0"),
    (["--seed", "-2"], "--seed -2"),
])
def test_bad_option_is_one_line_error(tmp_path, capsys, args, fragment):
    with pytest.raises(SystemExit) as info:
        main(["synth", str(tmp_path / "out"), "--images", "4", "--size", "96x64", *args])
    assert info.value.code != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and fragment in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_non_empty_folder_needs_force(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as info:
        main(["synth", str(out), "--images", "3", "--size", "64x48", "--video-frames", "0"])
    err = capsys.readouterr().err
    assert info.value.code != 0 and err.count("\n") == 1 and str(out) in err and "--force" in err
    with pytest.raises(SystemExit) as info:  # Typer exits 0 after a command succeeds
        main(["synth", str(out), "--images", "3", "--size", "64x48", "--video-frames", "0", "--force"])
    assert info.value.code in (0, None)
    assert (out / "notes.txt").read_text() == "mine"  # --force replaces synthetic files only
    assert len(list((out / "imgs" / "imgs").glob("*.jpg"))) == 3


@pytest.mark.slow
def test_module_entry_point_runs_synth(tmp_path):
    out = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-m", "dronseg_edge", "synth", str(out), "--images", "4", "--size", "96x64",
                           "--video-frames", "3"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 4 images" in proc.stdout and (out / "video.mp4").is_file()
    bad = subprocess.run([sys.executable, "-m", "dronseg_edge", "synth", str(out)], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
