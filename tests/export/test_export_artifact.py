"""ExportOptions (defaults and validation in one place), the checkpoint read once per export, and reuse."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

import dronseg_edge.metadata as metadata_module
from dronseg_edge.checkpoint import load_checkpoint
from dronseg_edge.errors import DronsegError
from dronseg_edge.export import ExportOptions, artifact_path, check_parity, export_artifact, reusable_artifact
from dronseg_edge.metadata import read_onnx_info


def test_defaults_are_the_cli_defaults_and_values_are_normalised(tmp_path):
    options = ExportOptions(size=[96, 64], out_dir=str(tmp_path), batch="2")
    assert options.fmt == "onnx" and options.precision == "fp32" and options.head == "logits"
    assert options.parity and not options.dynamic and not options.reuse and options.device == "auto"
    assert options.size == (96, 64) and options.out_dir == tmp_path and options.batch == 2
    assert options == ExportOptions(size=(96, 64), out_dir=tmp_path, batch=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.precision = "fp16"  # type: ignore[misc]


@pytest.mark.parametrize("changes, message", [
    ({"fmt": "tflite"}, "--format 'tflite' is not one of onnx, engine"),
    ({"fmt": "all"}, r"--format 'all' is not one of onnx, engine, triton \(the command line's `all` is onnx, then engine"),
    ({"precision": "fp8"}, "--precision 'fp8' is not one of fp32, fp16, int8"),
    ({"precision": "bf16"}, "--precision 'bf16' is not one of fp32, fp16, int8"),
    ({"head": "softmax"}, "--head 'softmax' is not one of logits, argmax"),
    ({"batch": 0}, "--batch 0 must be a whole number, at least 1"),
    ({"workspace_gib": 0}, "--workspace-gib 0 must be a positive number of GiB"),
    # inf was taken: --format triton then ended in an OverflowError traceback after the export, and 1e12 wrote a byte
    # count past uint64 into config.pbtxt
    ({"workspace_gib": float("inf")}, r"--workspace-gib inf must be a positive number of GiB, at most 1024"),
    ({"workspace_gib": 1e12}, r"--workspace-gib 1e\+12 must be a positive number of GiB, at most 1024"),
    ({"workspace_gib": "4GB"}, "--workspace-gib '4GB' must be a number"),  # float()'s ValueError traceback
    ({"parity_data": 3}, "--parity-data 3 must be a path"),  # Path()'s TypeError
    ({"calib_images": 0}, "--calib-images 0 must be a whole number, at least 1"),
    ({"parity_images": -1}, "--parity-images -1 must be a whole number, at least 1"),
    ({"precision": "int8", "calib_method": "entropy"}, "--calib-method 'entropy' is not one of minmax, percentile"),
    # sizes were taken unchecked: (0, 64) was torch's "Kernel size can't be greater than actual input size", (96,) an IndexError
    ({"size": (0, 64)}, "--size '0x64' is out of range"),
    ({"size": (96,)}, "--size '96' is not a size"),
    ({"io": "frames", "source_size": (0, 0)}, "--source-size '0x0' is out of range"),
])
def test_bad_options_are_one_line_user_errors(changes, message):
    with pytest.raises(DronsegError, match=message) as info:
        ExportOptions(**changes)
    assert "\n" not in str(info.value)
    with pytest.raises(DronsegError, match=message):  # a derived copy is validated again
        dataclasses.replace(ExportOptions(), **changes)


def test_calibration_method_is_checked_only_where_it_is_used():
    assert ExportOptions(precision="fp16", calib_method="entropy").calib_method == "entropy"  # fp16 never calibrates


def test_bad_options_fail_before_the_checkpoint_is_read(tmp_path):
    with pytest.raises(DronsegError, match="--precision 'fp8'"):
        export_artifact(tmp_path / "missing.pt", precision="fp8")


def test_artifact_path_takes_options_or_changes(tiny_checkpoint, tmp_path):
    options = ExportOptions(head="argmax", batch=2, out_dir=tmp_path)
    assert artifact_path(tiny_checkpoint, options) == tmp_path / "tiny_argmax_b2_fp32.onnx"
    assert artifact_path(tiny_checkpoint, options, precision="int8", size=(64, 32)) == tmp_path / "tiny_argmax_64x32_b2_int8.onnx"
    assert artifact_path(tiny_checkpoint, dynamic=True) == tiny_checkpoint.parent / "tiny_dyn_fp32.onnx"


class Counter:
    """Wraps ``target.name``, counting the calls whose first argument is ``path`` (all calls when None)."""

    def __init__(self, monkeypatch, target, name: str, path: Path | None = None):
        original = getattr(target, name)
        self.calls = 0

        def counting(*args, **kwargs):
            if path is None or Path(args[0]).resolve() == path.resolve():
                self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(target, name, counting)


@pytest.fixture(scope="module")
def counted_export(tiny_checkpoint, tmp_path_factory):
    """One parity-checked ONNX export of the tiny checkpoint, with its torch.load and checkpoint-hash calls counted."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        loads = Counter(monkeypatch, torch, "load")
        hashes = Counter(monkeypatch, metadata_module, "sha256_file", tiny_checkpoint)
        options = ExportOptions(out_dir=tmp_path_factory.mktemp("counted"), device="cpu", parity_images=2)
        result = export_artifact(tiny_checkpoint, options)
    return result, options, loads.calls, hashes.calls


def test_an_onnx_export_reads_and_hashes_its_checkpoint_once(counted_export):
    result, _, loads, hashes = counted_export
    assert result.passed and result.report.reference_provider == "torch (cpu fp32)"  # the checkpoint really ran
    assert (loads, hashes) == (1, 1)


def test_parity_against_a_loaded_checkpoint_does_not_read_it_again(counted_export, tiny_checkpoint, monkeypatch):
    state = load_checkpoint(tiny_checkpoint)
    loads = Counter(monkeypatch, torch, "load")
    report = check_parity(state, counted_export[0].path, device="cpu", max_images=1)
    assert report.passed and report.reference == str(tiny_checkpoint) and loads.calls == 0
    assert "synthetic" in report.data_source  # the tiny checkpoint records no split: images from the given dict


def test_reuse_returns_an_export_of_the_same_checkpoint_and_options_only(counted_export, tiny_checkpoint, tmp_path):
    first, options, _, _ = counted_export
    mtime = first.path.stat().st_mtime_ns
    again = export_artifact(tiny_checkpoint, options, reuse=True)
    assert again.reused and again.path == first.path and again.notes == ("reused tiny_fp32.onnx",)
    assert again.report is None and first.path.stat().st_mtime_ns == mtime and not first.reused
    info = read_onnx_info(first.path)
    assert reusable_artifact(first.path, info) == info
    assert reusable_artifact(first.path, dataclasses.replace(info, source_sha256="0" * 64)) is None
    assert reusable_artifact(first.path, dataclasses.replace(info, precision="fp16")) is None
    assert reusable_artifact(first.path, dataclasses.replace(info, batch=2)) is None
    assert reusable_artifact(tmp_path / "missing.onnx", info) is None
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    assert reusable_artifact(broken, info) is None


def test_an_unchecked_export_removes_the_earlier_report_and_its_picture(tiny_checkpoint, tmp_path):
    """--no-parity removed NAME.parity.json of an earlier failed export but kept its NAME.parity.png,
    a picture of differences that no longer describes the file beside it."""
    for name in ("tiny_fp32.parity.json", "tiny_fp32.parity.png", "tiny_fp32.onnx.failed"):
        (tmp_path / name).write_text("of an earlier export")
    result = export_artifact(tiny_checkpoint, out_dir=tmp_path, device="cpu", parity=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [result.path.name]


@pytest.mark.parametrize("name", ["tiny_fp32.onnx", "tiny_fp32.parity.json"])
def test_a_folder_at_a_name_the_export_places_is_refused_before_any_work(tiny_checkpoint, tmp_path, name):
    """A folder at tiny_fp32.onnx: the export ran, wrote a PASSED tiny_fp32.parity.json for a file it never placed and
    ended in an IsADirectoryError traceback (a folder at the report's name: that traceback)."""
    (tmp_path / name).mkdir()
    report = tmp_path / "tiny_fp32.parity.json"
    if not report.is_dir():
        report.write_text("of an earlier export")
    with pytest.raises(DronsegError, match=f"^{tmp_path / name} is a folder, where the export places a file: move it"):
        export_artifact(tiny_checkpoint, out_dir=tmp_path, device="cpu", parity_images=1)
    assert report.is_dir() or report.read_text() == "of an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({name, report.name})


@pytest.mark.parametrize("fmt", ["onnx", "triton"])
def test_a_long_checkpoint_name_whose_files_fit_is_exported(tiny_checkpoint, tmp_path, fmt):
    """The hidden working names add up to 31 bytes to the files': a stem of 215-238 bytes, whose files fit in 255,
    failed with 'file name too long' naming a hidden file after the work (215-219: after placing the file and its
    report)."""
    checkpoint = tmp_path / ("c" * 222 + ".pt")
    checkpoint.write_bytes(tiny_checkpoint.read_bytes())
    result = export_artifact(checkpoint, out_dir=tmp_path / "out", device="cpu", parity_images=1, fmt=fmt)
    assert result.passed and result.path.exists()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_a_name_too_long_for_a_file_the_export_may_place_is_refused_before_any_work(tiny_checkpoint, tmp_path,
                                                                                     monkeypatch):
    """A 240-byte stem: tiny_fp32.onnx fits in 255 bytes, its .failed name and parity report do not; the export
    failed after the work (minutes, for int8), in a line naming a hidden working file."""
    import dronseg_edge.export.artifact as artifact

    checkpoint = tmp_path / ("c" * 240 + ".pt")
    checkpoint.write_bytes(tiny_checkpoint.read_bytes())
    monkeypatch.setattr(artifact, "_write_onnx", lambda *args: pytest.fail("the export began"))
    with pytest.raises(DronsegError, match=r"^file name too long: .*c_fp32\.onnx\.failed \(\d+ characters\): .*"):
        export_artifact(checkpoint, out_dir=tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["onnx", "triton"])
def test_parity_data_without_images_is_refused_before_any_work(tiny_checkpoint, tmp_path, monkeypatch, fmt):
    """`export CKPT --parity-data EMPTY` (or a folder with a damaged image) was refused only after the ONNX export had
    run (minutes for a large model)."""
    import dronseg_edge.export.artifact as artifact

    (tmp_path / "empty").mkdir()
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "a.jpg").write_bytes(b"not a JPEG")
    monkeypatch.setattr(artifact, "_write_onnx", lambda *args: pytest.fail("the export began"))
    for folder, why in (("empty", "--parity-data .*empty holds no images"), ("nowhere", "--parity-data .*nowhere does not"),
                        ("damaged", "image .*a.jpg cannot be read")):
        with pytest.raises(DronsegError, match=f"^{why}.*: (pass a folder of images|replace or remove it)"):
            export_artifact(tiny_checkpoint, out_dir=tmp_path / "out", parity_data=tmp_path / folder, device="cpu", fmt=fmt)
    assert not (tmp_path / "out").exists()


def test_a_damaged_calibration_image_is_refused_before_any_work(tiny_checkpoint, tmp_path, monkeypatch):
    """`export --precision int8 --calib-data DIR` with a damaged image failed at quantisation, after the ONNX export."""
    import dronseg_edge.export.artifact as artifact

    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "a.jpg").write_bytes(b"not a JPEG")
    monkeypatch.setattr(artifact, "_write_onnx", lambda *args: pytest.fail("the export began"))
    with pytest.raises(DronsegError, match="^image .*a.jpg cannot be read .*: replace or remove it"):
        export_artifact(tiny_checkpoint, out_dir=tmp_path / "out", precision="int8", calib_data=tmp_path / "damaged",
                        parity=False, device="cpu")


@pytest.mark.parametrize("theirs, message", [("triton", "triton is a file, where the Triton model repository goes"),
                                             ("triton/tiny_fp32", "tiny_fp32 exists and is not a model folder written by")])
def test_a_triton_repository_it_cannot_write_is_refused_before_any_work(tiny_checkpoint, tmp_path, monkeypatch, theirs,
                                                                        message):
    """Both were met after the work: the export failed (exit 2) and left a new ONNX file and its parity report."""
    import dronseg_edge.export.artifact as artifact

    (tmp_path / theirs).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / theirs).write_text("the user's")
    monkeypatch.setattr(artifact, "_write_onnx", lambda *args: pytest.fail("the export began"))
    with pytest.raises(DronsegError, match=message):
        export_artifact(tiny_checkpoint, out_dir=tmp_path, fmt="triton", device="cpu")
    assert [p.name for p in tmp_path.iterdir()] == ["triton"] and (tmp_path / theirs).read_text() == "the user's"


def test_keep_never_replaces_a_file_of_that_name_without_our_metadata(tiny_checkpoint, tmp_path):
    """bench --matrix (reuse and keep) kept another checkpoint's export of a variant's name but replaced the user's own
    ONNX file of that name, one with no dronseg-edge metadata, without a word."""
    from importlib.resources import files

    theirs = tmp_path / "tiny_fp32.onnx"
    theirs.write_bytes(files("dronseg_edge.checks").joinpath("probe_relu.onnx").read_bytes())
    with pytest.raises(DronsegError, match="tiny_fp32.onnx carries no dronseg-edge metadata .* and is kept"):
        export_artifact(tiny_checkpoint, out_dir=tmp_path, reuse=True, keep=True, parity=False, device="cpu")
    assert theirs.read_bytes() == files("dronseg_edge.checks").joinpath("probe_relu.onnx").read_bytes()


@pytest.mark.parametrize("changes, message", [
    ({"batch": 2000}, "metadata batch 2000 is outside 1..1024"),
    ({"batch": 300, "size": (512, 512)}, "metadata batch 300 of 512x512 \\(input_size\\) is 78643200 pixels"),
    ({"io": "frames", "source_size": (16384, 16384)}, "metadata source_size \\[16384, 16384\\] is 268435456 pixels"),
])
def test_a_batch_or_size_that_no_reader_takes_is_refused_before_any_work(tiny_checkpoint, tmp_path, changes, message):
    """Export wrote such files (after minutes, for a large one) that infer, eval and parity then refused, advising a
    re-export that made the same file; parity, reading the pending file, named that hidden file."""
    with pytest.raises(DronsegError, match=f"^export of .*tiny.pt: {message}.*: pass a smaller --batch, --size or --source-size$"):
        export_artifact(tiny_checkpoint, out_dir=tmp_path / "out", parity=False, device="cpu", **changes)
    assert not (tmp_path / "out").exists()


def test_export_leftover_patterns_match_our_working_names_only(tmp_path):
    """The names export's writers make match EXPORT_LEFTOVERS with this process's token; the issue's
    look-alikes of other programs match no pattern at all (leftovers.py)."""
    import tempfile

    from dronseg_edge.atomic import atomic_path
    from dronseg_edge.export.artifact import EXPORT_LEFTOVERS, _pending
    from dronseg_edge.leftovers import TOKEN, working_prefix

    def token_of(name):
        found = [m.group("token") for _, p in EXPORT_LEFTOVERS if (m := p.match(name))]
        return found[0] if found else None

    with atomic_path(tmp_path / "best_fp32.onnx") as tmp:
        atomic_name = tmp.name
    ours = [_pending(tmp_path / "best_fp32.onnx").name, _pending(tmp_path / "best_fp16_h100_sm90_trt10.3.engine").name + ".json",
            Path(tempfile.mkdtemp(prefix=working_prefix("export"), dir=tmp_path)).name,
            Path(tempfile.mkdtemp(prefix=working_prefix("best_fp16"), suffix=".tmp", dir=tmp_path)).name,
            working_prefix("best_int8_plan") + "old-k2j4h5g6", atomic_name]
    assert [token_of(name) for name in ours] == [TOKEN] * len(ours)
    foreign = [".export-projectx", ".settings.json.abcd1234.tmp", ".vscode.json.settings.tmp", ".best.pending.onnx",
               ".export-abcd1234", ".best_fp32.onnx.abcd1234.tmp", ".x_fp32.abcd1234.tmp"]
    assert [token_of(name) for name in foreign] == [None] * len(foreign)


def test_export_refuses_a_checkpoint_with_invalid_metadata_and_writes_nothing(tiny_checkpoint, tmp_path):
    """Issue 19: an invalid palette used to travel into a new ONNX file whose parity passed."""
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    ckpt["palette"] = [[300, -5, 0]] + ckpt["palette"][1:]
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    out = tmp_path / "out"
    with pytest.raises(DronsegError, match=r"metadata palette\[0\]\[0\] 300 is outside 0..255"):
        export_artifact(bad, out_dir=out, device="cpu")
    assert not out.exists()


def test_export_into_a_folder_whose_name_is_not_utf8_is_one_line_and_writes_nothing(tiny_checkpoint, tmp_path):
    # torch's ONNX exporter took the name as UTF-8: a TypeError traceback ("_export_onnx(): incompatible function arguments")
    out = tmp_path / os.fsdecode(b"exp\xe9")
    with pytest.raises(DronsegError, match=r"exp\\udce9'?: OpenCV, FFmpeg and ONNX Runtime take file names as UTF-8"):
        export_artifact(tiny_checkpoint, out_dir=out, device="cpu")
    assert not out.exists()


def test_whole_numbers_are_ints_and_2_5_is_refused_not_taken_as_2():
    assert ExportOptions(opset="17").opset == 17  # --reuse compares it with the file's int opset
    for changes, message in (({"batch": 2.5}, "--batch 2.5 must be a whole number"),
                             ({"opset": 17.5}, "--opset 17.5 must be a whole number"),
                             ({"batch": True}, "--batch True must be a whole number"),  # was batch 1
                             ({"fmt": "engine", "builder_opt_level": True}, "--builder-opt-level True must be"),
                             ({"thresholds": 0.99}, "thresholds=0.99: give a ParityThresholds")):
        with pytest.raises(DronsegError, match=message):
            ExportOptions(**changes)
