"""benchmarks/latency.py: each output stride is a model of its own, with its own label and checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repository root off sys.path
    sys.path.insert(0, str(ROOT))

from benchmarks.latency import flops_per_frame, model_label, parse_strides, strides_for  # noqa: E402
from dronseg_edge.errors import DronsegError  # noqa: E402


def test_resnets_get_a_row_per_stride_and_mobilenets_their_only_one():
    assert strides_for("deeplabv3_resnet101", [8, 16]) == [8, 16]
    assert strides_for("deeplabv3_resnet50", [16]) == [16]
    assert strides_for("deeplabv3_mobilenet_v3_large", [8, 16]) == [16]
    assert strides_for("lraspp_mobilenet_v3_large", [8]) == [16]  # it has no stride 8: measured at 16, labelled so
    labels = {model_label(a, s) for a in ("deeplabv3_resnet101", "lraspp_mobilenet_v3_large")
              for s in strides_for(a, [8, 16])}
    assert labels == {"deeplabv3_resnet101 OS8", "deeplabv3_resnet101 OS16", "lraspp_mobilenet_v3_large OS16"}


def test_output_strides_option():
    assert parse_strides("16,8") == [8, 16] and parse_strides("16") == [16]
    for bad in ("", "4", "8,x"):
        with pytest.raises(DronsegError, match="--output-strides"):
            parse_strides(bad)


def test_stride_16_costs_fewer_operations():
    """The floor column follows the stride: ResNet-50 at 16 needs well under half the operations of 8."""
    size = (320, 192)
    os8, os16 = flops_per_frame("deeplabv3_resnet50", size, 8), flops_per_frame("deeplabv3_resnet50", size, 16)
    assert os16 < 0.4 * os8


def test_batches_option_is_checked_before_any_work(tmp_path):
    """Before: --batches x was a ValueError traceback; --batches 0 made every checkpoint and export, wrote
    rows that all failed ("--batch 0 must be a whole number") and exited 0."""
    from benchmarks.latency import main

    for bad in ("x", "0", "1,-4", ","):
        with pytest.raises(DronsegError, match="--batches"):
            main(["--batches", bad, "--device", "cpu", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
    assert not list(tmp_path.iterdir())


def test_a_selection_that_leaves_nothing_to_measure_is_refused(tmp_path):
    """Before: --variants with a typo (or --archs ",") measured nothing, wrote an empty table and exited 0."""
    from benchmarks.latency import main

    common = ["--device", "cpu", "--size", "64x64", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    for args, option in ((["--variants", "onnx-fp32"], "--variants"), (["--exclude", "pytorch,onnx,engine"], "--variants"),
                         (["--archs", ","], "--archs")):
        args = [*args, "--archs", "lraspp_mobilenet_v3_large"] if option == "--variants" else args
        with pytest.raises(DronsegError, match=option):
            main([*args, *common])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("script", ["latency", "pipeline", "live_outputs", "tiling", "train_throughput"])
def test_a_script_runs_the_package_of_its_own_checkout(tmp_path, script):
    """Before: ``python benchmarks/X.py`` in one checkout imported whichever dronseg_edge came first on the path
    (an editable install of another checkout, a PYTHONPATH), and measured that one under this one's name."""
    other = tmp_path / "other" / "dronseg_edge"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("raise SystemExit('imported another checkout')\n")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--help"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path / "other")})
    assert done.returncode == 0 and done.stdout.startswith("usage:"), done.stderr[-500:]
