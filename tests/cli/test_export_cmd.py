"""`dronseg-edge export` and `dronseg-edge parity` through the real entry point (main)."""

from __future__ import annotations

import json
import sys
import types

import cv2
import numpy as np
import pytest

from dronseg_edge.checkpoint import model_state, save_checkpoint
from dronseg_edge.cli import main
from dronseg_edge.models import build_model
from testkit import break_onnx_classifier, sabotage_onnx_export


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main([*map(str, args)])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def assert_one_error_line(code, out, err, expected_code, message):
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], err
    assert sum(line.startswith("error") for line in lines) == 1
    assert "Traceback" not in err + out


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for i in range(4):
        image = np.zeros((64, 96, 3), np.uint8)
        image[:20] = (235, 170, 110)
        image[20:] = rng.integers(30, 120, 3)
        cv2.rectangle(image, (30, 30), (60, 50), (30, 30, 200), -1)
        cv2.imwrite(str(folder / f"{i}.png"), image)
    return folder


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, frames, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_export")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tiny_checkpoint), "--parity-data", str(frames), "--out", str(out), "--device", "cpu"])
    assert exit_info.value.code in (0, None)
    return out / "tiny_fp32.onnx"


def test_export_prints_the_parity_table_and_writes_the_file(exported, tiny_checkpoint, frames, tmp_path, capsys):
    assert exported.is_file() and exported.with_name("tiny_fp32.parity.json").is_file()
    code, out, err = run_cli(capsys, "export", tiny_checkpoint, "--parity-data", frames, "--out", tmp_path,
                             "--device", "cpu", "--head", "argmax")
    assert code in (0, None), err
    assert "PASSED | mask: agreement 100.00%" in out and "IoU of candidate vs reference masks" in out
    assert f"wrote {tmp_path / 'tiny_argmax_fp32.onnx'}" in out and "(parity NOT checked" not in out


def test_parity_command_passes_and_writes_json(exported, tiny_checkpoint, frames, tmp_path, capsys):
    code, out, err = run_cli(capsys, "parity", tiny_checkpoint, exported, "--data", frames, "--device", "cpu",
                             "--json", tmp_path / "p.json")
    assert code in (0, None), err
    assert out.strip().splitlines()[-2].startswith("PASSED | logits: agreement")
    assert json.loads((tmp_path / "p.json").read_text())["status"] == "PASSED"
    # its messages advise --parity-data, export's spelling: parity answered "No such option: --parity-data"
    code, out, err = run_cli(capsys, "parity", tiny_checkpoint, exported, "--parity-data", frames, "--device", "cpu")
    assert code in (0, None), err


def test_parity_against_an_onnx_reference_releases_both_sessions(exported, frames, capsys, monkeypatch):
    from dronseg_edge.runtime.onnxruntime import OnnxRuntimeBackend

    released = []
    monkeypatch.setattr(OnnxRuntimeBackend, "deactivate", lambda self: released.append(self.path))
    code, out, err = run_cli(capsys, "parity", exported, exported, "--data", frames, "--device", "cpu",
                             "--parity-images", 1)
    assert code in (0, None) and "PASSED | logits: agreement 100.00%" in out, err
    assert released == [exported, exported]  # the candidate's, then the reference's


def test_parity_command_fails_a_perturbed_onnx_with_exit_4(exported, tiny_checkpoint, frames, tmp_path, capsys):
    broken = break_onnx_classifier(exported, tmp_path / "broken.onnx")
    code, out, err = run_cli(capsys, "parity", tiny_checkpoint, broken, "--data", frames, "--device", "cpu")
    assert_one_error_line(code, out, err, 4, "does not match")
    assert "FAILED | logits: agreement" in out


def test_export_of_a_broken_artifact_exits_4_and_keeps_it_as_failed(tiny_checkpoint, frames, tmp_path, capsys, monkeypatch):
    sabotage_onnx_export(monkeypatch)
    code, out, err = run_cli(capsys, "export", tiny_checkpoint, "--parity-data", frames, "--out", tmp_path,
                             "--device", "cpu")
    assert_one_error_line(code, out, err, 4, "tiny_fp32.onnx.failed failed parity (logits: argmax agreement")
    assert "relax the limits" in err and "higher precision" not in err  # there is none above fp32
    assert (tmp_path / "tiny_fp32.onnx.failed").is_file() and not (tmp_path / "tiny_fp32.onnx").exists()
    assert json.loads((tmp_path / "tiny_fp32.parity.json").read_text())["status"] == "FAILED"


def _other_class_count(path):
    model = build_model("lraspp_mobilenet_v3_large", num_classes=5)
    return save_checkpoint(path, model_state(model, "lraspp_mobilenet_v3_large", (96, 64),
                                             class_names=[f"c{i}" for i in range(5)], palette=[[0, 0, 0]] * 5))


@pytest.mark.parametrize("case", ["missing", "folder", "corrupt", "classes", "unwritable", "empty_calib", "size",
                                  "source_size", "precision", "format", "head", "opset", "min_agreement"])
def test_bad_inputs_give_one_line_errors(case, tiny_checkpoint, tmp_path, capsys):
    ckpt = tiny_checkpoint
    extra: list = []
    expected = {
        "missing": "does not exist",
        "folder": "is a folder, not a file: pass the file itself",
        "corrupt": "cannot be read",
        "classes": "predicts 5 classes, but 12 are needed",
        "unwritable": "cannot create output folder",
        "empty_calib": "holds no images",
        "size": "--size '96by64' is not a size",
        "source_size": "--source-size '8x8' is out of range",  # the option given, not --size
        "precision": "--precision 'fp8' is not one of fp32, fp16, int8",
        "format": "--format 'tflite' is not one of onnx, engine, all",
        "head": "--head 'softmax' is not one of logits, argmax",
        "opset": "--opset 7 is out of range",
        "min_agreement": "--min-agreement 150 must be a percentage 0..100",  # as given, not divided by 100
    }[case]
    if case == "missing":
        ckpt = tmp_path / "nope.pt"
    elif case == "folder":
        ckpt = tmp_path
    elif case == "corrupt":
        ckpt = tmp_path / "bad.pt"
        ckpt.write_bytes(b"PK\x03\x04 not really a zip")
    elif case == "classes":
        ckpt = _other_class_count(tmp_path / "five.pt")
    elif case == "unwritable":
        blocker = tmp_path / "a_file"
        blocker.write_text("x")
        extra = ["--out", blocker / "sub"]
    elif case == "empty_calib":
        (tmp_path / "empty").mkdir()
        extra = ["--precision", "int8", "--calib-data", tmp_path / "empty"]
    else:
        flag, value = {"size": ("--size", "96by64"), "source_size": ("--source-size", "8x8"), "precision": ("--precision", "fp8"), "format": ("--format", "tflite"),
                       "head": ("--head", "softmax"), "opset": ("--opset", "7"),
                       "min_agreement": ("--min-agreement", "150")}[case]
        extra = [flag, value]
    if "--out" not in extra:
        extra += ["--out", tmp_path / "out" / "sub"]
    code, out, err = run_cli(capsys, "export", ckpt, "--device", "cpu", *extra)
    assert_one_error_line(code, out, err, 2, expected)
    assert not (tmp_path / "out").exists()  # the folders an export made are not left behind empty (--opset, --calib-data)


def test_engine_without_tensorrt_says_how_to_get_it(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    code, out, err = run_cli(capsys, "export", tiny_checkpoint, "--format", "all", "--out", tmp_path, "--device", "cpu")
    assert_one_error_line(code, out, err, 3, "pip install 'dronseg-edge[trt]'")
    assert "JetPack" in err and "--system-site-packages" in err and list(tmp_path.iterdir()) == []


def test_option_refusals_come_before_the_missing_tensorrt(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """The command is fixed first: --dla-core with the default fp32 said 'TensorRT is not installed' (exit 3)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = run_cli(capsys, "export", tiny_checkpoint, "--format", "engine", "--dla-core", "0", "--out", tmp_path)
    assert_one_error_line(*result, 2, "DLA runs fp16 or int8 only")


def test_no_parity_is_said_out_loud_and_drops_a_stale_report(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "tiny_fp32.parity.json").write_text('{"status": "PASSED"}')  # from an earlier, other file
    code, out, err = run_cli(capsys, "export", tiny_checkpoint, "--no-parity", "--out", tmp_path, "--device", "cpu")
    assert code in (0, None), err
    assert "(parity NOT checked: --no-parity)" in out and not (tmp_path / "tiny_fp32.parity.json").exists()
    assert (tmp_path / "tiny_fp32.onnx").is_file()


def _fake_tensorrt(version: str, dla_cores: int) -> types.ModuleType:
    """Enough of ``tensorrt`` for the DLA check the export command runs before any ONNX work."""
    module = types.ModuleType("tensorrt")
    module.__version__ = version

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity):
            pass

    class Builder:
        num_DLA_cores = dla_cores

        def __init__(self, logger):
            pass

    module.Logger, module.Builder = Logger, Builder
    return module


@pytest.mark.parametrize("args, code, message", [
    (["--dla-core", "0"], 2, "--dla-core applies to TensorRT engines"),
    (["--builder-opt-level", "3"], 2, "--builder-opt-level applies to TensorRT engines"),
    (["--format", "all", "--dla-core", "0"], 2, "DLA runs fp16 or int8 only"),
    (["--format", "engine", "--precision", "fp16", "--dla-core", "0", "--dynamic"], 2, "DLA takes fixed shapes only"),
    (["--format", "engine", "--builder-opt-level", "7"], 2, "--builder-opt-level 7 must be a whole number, from 0 to 5"),
    (["--format", "all", "--precision", "fp16", "--dla-core", "0"], 3, "sees no DLA core on this machine"),
    (["--format", "engine", "--precision", "fp16", "--dla-core", "0", "--trt", "11.1.0"], 3, "TensorRT 11.1.0 has no DLA"),
    (["--format", "engine", "--precision", "fp16", "--dla-core", "2", "--cores", "2"], 2, "has 2 DLA cores (0..1)"),
    (["--dynamic", "--max-shape", "4x640x384"], 2, "--max-shape applies to TensorRT engines"),
    (["--trt-verbose"], 2, "--trt-verbose applies to TensorRT engines"),
    (["--format", "engine", "--min-shape", "1x64x64"], 2, "--min-shape shapes the profile of a --dynamic engine"),
    (["--format", "engine", "--dynamic", "--opt-shape", "4x96x64", "--max-shape", "2x96x64"], 2,
     "--opt-shape 4x96x64 is larger than --max-shape 2x96x64"),
    (["--format", "engine", "--dynamic", "--max-shape", "4x96"], 2, "shape '4x96'"),
])
def test_engine_options_are_refused_before_any_onnx_work(args, code, message, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    version, cores = "10.3.0", 0
    if "--trt" in args:
        version = args.pop(args.index("--trt") + 1)
        args.remove("--trt")
    if "--cores" in args:
        cores = int(args.pop(args.index("--cores") + 1))
        args.remove("--cores")
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(version, cores))
    result = run_cli(capsys, "export", tiny_checkpoint, "--out", tmp_path / "out", "--device", "cpu", *args)
    assert_one_error_line(*result, code, message)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("args, message", [
    (["--calib-method", "bogus"], "--calib-method has no effect without --precision int8"),
    (["--precision", "fp16", "--calib-data", "."], "--calib-data has no effect without --precision int8"),
    (["--no-parity", "--min-agreement", "90"], "--min-agreement has no effect with --no-parity"),
    (["--no-parity", "--parity-images", "3"], "--parity-images has no effect with --no-parity"),
    (["--workspace", "8"], "--workspace has no effect with --format onnx"),
    (["--dynamic", "--batch", "4"], "--batch has no effect with a free batch and --format onnx"),  # wrote best_dyn_fp32.onnx
    (["--dynamic-batch", "--batch", "4"], "--batch has no effect with a free batch and --format onnx"),
])
def test_options_this_export_would_not_read_are_refused(args, message, tiny_checkpoint, tmp_path, capsys):
    """They were accepted without a word (exit 0), as the engine options are not."""
    result = run_cli(capsys, "export", tiny_checkpoint, "--out", tmp_path / "out", "--device", "cpu", *args)
    assert_one_error_line(*result, 2, message)
    assert not (tmp_path / "out").exists()


def test_export_help_lists_the_engine_options(capsys):
    code, out, err = run_cli(capsys, "export", "--help")
    assert code in (0, None), err
    assert "--dla-core" in out and "--builder-opt-level" in out


def test_parity_takes_meta_for_a_candidate_without_metadata(exported, tiny_checkpoint, frames, tmp_path, capsys):
    import onnx

    graph = onnx.load(str(exported))
    del graph.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(graph, str(foreign))
    code, out, err = run_cli(capsys, "parity", tiny_checkpoint, foreign, "--data", frames, "--device", "cpu")
    assert code not in (0, None) and "or pass --meta FILE" in err.strip().splitlines()[-1]
    code, out, err = run_cli(capsys, "parity", tiny_checkpoint, foreign, "--data", frames, "--device", "cpu",
                             "--meta", exported)
    assert code in (0, None), err
    assert any(line.startswith("PASSED | logits: agreement") for line in out.splitlines()), out
    code, out, err = run_cli(capsys, "parity", foreign, exported, "--data", frames, "--device", "cpu", "--meta", exported)
    assert_one_error_line(code, out, err, 2, f"reference {foreign} has no dronseg-edge metadata (parity's --meta describes")
    assert "or pass --meta FILE" not in err  # it was the advice, for a --meta already given
    (tmp_path / "foreign.engine").write_bytes(b"plan")  # an engine without its sidecar: the same advice, refused alike
    code, out, err = run_cli(capsys, "parity", tmp_path / "foreign.engine", exported, "--device", "cpu", "--meta", exported)
    assert_one_error_line(code, out, err, 2, "reference " + str(tmp_path / "foreign.engine") + " has no dronseg-edge metadata")


def test_export_out_keeps_other_programs_hidden_files(tiny_checkpoint, tmp_path, capsys):
    """Issue 19, section 2, verbatim: hidden files that look like an export's working files but are not ours."""
    out = tmp_path / "x"
    (out / ".export-projectx").mkdir(parents=True)
    (out / ".export-projectx" / "notes.txt").write_text("work\n")
    (out / ".settings.json.abcd1234.tmp").write_text("k\n")
    (out / ".vscode.json.settings.tmp").write_text("k\n")
    (out / ".export.dronseg-0badc0de.abcd1234").mkdir()  # a killed export's, the one leftover here, and its claim:
    (out / ".dronseg-lock-0badc0de-999999-abcdefgh").write_text("")  # a lock file no process holds
    code, stdout, err = run_cli(capsys, "export", tiny_checkpoint, "--out", out, "--no-parity", "--device", "cpu")
    assert code == 0, err
    assert stdout.count("leftover") == 1 and "leftover" not in err
    assert f"removed 1 leftover of an interrupted export in {out}: .export.dronseg-0badc0de.abcd1234\n" in stdout
    assert (out / ".export-projectx" / "notes.txt").read_text() == "work\n"
    assert (out / ".settings.json.abcd1234.tmp").read_text() == "k\n"
    assert (out / ".vscode.json.settings.tmp").read_text() == "k\n"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [
        ".export-projectx", ".settings.json.abcd1234.tmp", ".vscode.json.settings.tmp"]


def test_min_agreement_in_percent_is_the_limit_it_names():
    """99.9 / 100 is 0.9990000000000001: exactly 99.9 % agreement (999 of 1000 pixels) failed `--min-agreement 99.9`."""
    from dronseg_edge.cli.export_cmd import _thresholds
    from dronseg_edge.export import ParityThresholds

    assert _thresholds("fp32", 99.9, None) == ParityThresholds.for_precision("fp32") == ParityThresholds(0.999)
    assert _thresholds("int8", 95.2, 2.0) == ParityThresholds(0.952, 2.0)


def test_parity_refuses_both_spellings_of_its_image_count(tiny_checkpoint, frames, capsys):
    """`parity --parity-images 4 --max-images 8` compared on 8 images: the hidden old spelling won silently."""
    code, out, err = run_cli(capsys, "parity", tiny_checkpoint, tiny_checkpoint, "--data", frames, "--parity-images", "4",
                             "--max-images", "8")
    assert_one_error_line(code, out, err, 2, "--max-images is the old spelling of --parity-images: give one of them")
    code, out, err = run_cli(capsys, "parity", tiny_checkpoint, tiny_checkpoint, "--parity-images", "0")
    assert_one_error_line(code, out, err, 2, "--parity-images 0 must be 1 or more")  # before a model is loaded
