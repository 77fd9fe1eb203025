"""`dronseg-edge bench` end to end on the CPU, through the real entry point (main)."""

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dronseg_edge.cli import main


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *map(str, args)])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def assert_one_error_line(err, out, message):
    """The error is stderr's last line and its only error line; no traceback anywhere."""
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1]
    assert sum(line.startswith("error") for line in lines) == 1
    assert "Traceback" not in err + out


FAST = ("--warmup-iters", "1", "--iters", "3", "--device", "cpu")


def test_bench_checkpoint_prints_table_and_writes_json(tiny_checkpoint, tmp_path, capsys):
    code, out, err = run_cli(capsys, tiny_checkpoint, *FAST, "--json", tmp_path / "r.json",
                             "--markdown", tmp_path / "r.md")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "device: cpu" and any(line.startswith("versions: python") for line in lines)
    assert any(line.startswith("settings: device cpu") and "3 iterations" in line for line in lines)
    header = next(line for line in lines if line.startswith("model"))
    assert all(col in header for col in ("median", "p99", "fps"))
    row = next(line for line in lines if line.startswith("tiny.pt"))
    assert "torch" in row and "96x64" in row
    assert f"measuring {tiny_checkpoint} ..." in err.splitlines()
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["results"][0]["latency_ms"]["count"] == 3 and doc["settings"]["device"] == "cpu"
    assert "| tiny.pt |" in (tmp_path / "r.md").read_text()


def test_bench_size_and_batch_override_for_a_checkpoint(tiny_checkpoint, tmp_path, capsys):
    code, out, err = run_cli(capsys, tiny_checkpoint, *FAST, "--size", "64x32", "--batch", "2",
                             "--json", tmp_path / "r.json", "--include-transfers")
    assert code == 0, err
    assert "note: tiny.pt: transfers: none on the CPU (input and output stay in host memory)" in out.splitlines()
    result = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert result["input_size"] == "64x32" and result["batch"] == 2 and result["output_shape"] == [2, 12, 32, 64]


@pytest.mark.parametrize("args, message", [
    (("--size", "96by64"), "--size '96by64' is not a size"),
    (("--iters", "0"), "--iters 0 must be a whole number, at least 1 (or use --duration-s SECONDS)"),
    (("--warmup-s", "-1"), "--warmup-s -1.0 must be 0 or more"),
    (("--duration-s", "0"), "--duration-s 0.0 must be more than 0"),
    (("--batch", "0"), "--batch 0 must be a whole number, at least 1"),
    (("--device", "tpu"), "--device 'tpu' is not a device"),
    (("--cuda-graph",), "--cuda-graph needs a CUDA device"),
    (("--out", "x"), "--out and --data belong to --matrix"),
])
def test_invalid_options_give_one_line_errors(tiny_checkpoint, capsys, args, message):
    code, out, err = run_cli(capsys, tiny_checkpoint, "--iters", "1", "--device", "cpu", *args)
    assert code != 0
    assert_one_error_line(err, out, message)


def test_json_and_markdown_on_one_file_are_refused_before_measuring(tiny_checkpoint, tmp_path, capsys):
    code, out, err = run_cli(capsys, tiny_checkpoint, *FAST, "--json", tmp_path / "r.md", "--markdown", f"{tmp_path}/./r.md")
    assert code == 2 and not (tmp_path / "r.md").exists()  # the Markdown would have replaced the JSON
    assert_one_error_line(err, out, "is also the --json file: give the two different names")


@pytest.mark.parametrize("flag", ["--json", "--markdown"])
def test_a_report_named_as_the_matrix_folder_is_refused_before_exporting(flag, tiny_checkpoint, tmp_path, capsys):
    """`bench --matrix --out M --json M`: every variant exported into M, then an IsADirectoryError traceback, exit 1."""
    code, out, err = run_cli(capsys, tiny_checkpoint, "--matrix", "--out", tmp_path / "m", flag, f"{tmp_path}/m/",
                             "--device", "cpu")
    assert code == 2 and not (tmp_path / "m").exists()
    assert_one_error_line(err, out, f"{flag} {tmp_path / 'm'} is the folder --matrix exports into: give a file name")


def test_missing_and_unknown_model_files_are_user_errors(tmp_path, capsys):
    code, out, err = run_cli(capsys, tmp_path / "nope.pt", *FAST)
    assert code != 0 and out == ""  # checked before anything is measured or printed
    assert err.strip() == f"error: model {tmp_path / 'nope.pt'} does not exist: pass a .pt checkpoint, .onnx file or .engine file"
    weird = tmp_path / "model.tflite"
    weird.write_bytes(b"x")
    code, out, err = run_cli(capsys, weird, *FAST)
    assert code != 0
    assert_one_error_line(err, out, "unknown kind (.tflite)")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    code, out, err = run_cli(capsys, broken, *FAST)
    assert code != 0
    assert_one_error_line(err, out, f"checkpoint {broken} cannot be read")


def test_json_path_that_is_a_folder_fails_before_measuring(tiny_checkpoint, tmp_path, capsys):
    code, out, err = run_cli(capsys, tiny_checkpoint, *FAST, "--json", tmp_path)
    assert code != 0 and "is a folder" in err and out == ""


@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoint, onnx_export):
    """The tiny checkpoint exported as a static 96x64, batch-1 fp32 ONNX file."""
    return onnx_export(tiny_checkpoint)


def test_bench_onnx_and_checkpoint_side_by_side(tiny_onnx, tiny_checkpoint, tmp_path, capsys):
    code, out, err = run_cli(capsys, tiny_onnx, tiny_checkpoint, *FAST, "--json", tmp_path / "r.json")
    assert code == 0, err
    onnx_row = next(line for line in out.splitlines() if line.startswith(tiny_onnx.name))
    assert "onnxruntime / CPUExecutionProvider" in onnx_row and "fp32" in onnx_row
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [r["backend"] for r in results] == ["onnxruntime", "torch"]
    assert results[0]["output_shape"] == results[1]["output_shape"] == [1, 12, 64, 96]
    assert results[0]["cuda_graph"] is False  # the ONNX Runtime runner has the option; off on the CPU


# Run in a fresh interpreter (this test process has imported torch long ago); prints the torch
# modules loaded at the end as the last line.
TORCH_FREE_BENCH = """
import json, sys
from dronseg_edge.cli import main
try:
    main(["bench", *sys.argv[1:]])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))}))
"""


def test_bench_onnx_on_cpu_never_imports_torch(tiny_onnx, tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    args = [str(tiny_onnx), "--device", "cpu", "--iters", "5", "--warmup-iters", "1", "--json", str(tmp_path / "r.json")]
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE_BENCH, *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "torch": []}, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "r.json").read_text())
    result = doc["results"][0]
    assert result["backend"] == "onnxruntime" and result["output_shape"] == [1, 12, 64, 96]
    assert result["timer"] == "perf_counter" and not result["include_transfers"] and result["notes"] == []
    latency = result["latency_ms"]
    assert latency["count"] == 5 and 0 < latency["min_ms"] <= latency["median_ms"] <= latency["max_ms"]
    assert latency["throughput_fps"] == pytest.approx(1000 / latency["mean_ms"])
    system = doc["system"]
    assert system["torch_flags"] is None and system["cpu"]["torch_threads"] is None  # torch was never loaded
    assert system["versions"]["torch_imported"] is False
    assert system["versions"]["torch"] == importlib.metadata.version("torch")  # read from its metadata, not imported
    assert f"torch {importlib.metadata.version('torch')} (not imported)" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (("--size", "64x32"), "was built for 96x64 (static shape) and cannot run at 64x32"),
    (("--batch", "2"), "was built for batch 1 and cannot run batch 2"),
    (("--precision", "fp32"), "--precision applies to .pt checkpoints"),  # fine for the checkpoint, not the ONNX
])
def test_static_onnx_refuses_other_shapes_before_measuring(tiny_onnx, tiny_checkpoint, capsys, args, message):
    code, out, err = run_cli(capsys, tiny_checkpoint, tiny_onnx, *FAST, *args)
    assert code != 0
    assert_one_error_line(err, out, message)
    assert "measuring" not in err  # the checkpoint listed first was not measured either


@pytest.mark.slow
def test_matrix_on_cpu_skips_gpu_rows_with_reasons(tiny_checkpoint, synth_root, tmp_path, capsys):
    code, out, err = run_cli(capsys, tiny_checkpoint, "--matrix", *FAST, "--data", synth_root, "--out", tmp_path / "exp",
                             "--json", tmp_path / "m.json", "--markdown", tmp_path / "m.md", "--include-transfers")
    assert code == 0, err
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["kind"] == "matrix" and doc["settings"]["cuda_graph"] is None  # was "per row": one type, as plain bench's
    assert "cuda graph per row" in out and "cuda graph per row" in (tmp_path / "m.md").read_text()
    rows = {r["label"]: r for r in doc["matrix"]}
    for label in ("pytorch fp32", "onnx fp32", "onnx fp16", "onnx int8"):
        assert rows[label]["status"] == "ok", rows[label]["reason"]
        assert rows[label]["result"]["latency_ms"]["count"] == 3
    for label in ("onnx fp16", "onnx int8"):
        assert rows[label]["parity_passed"] in (True, False) and rows[label]["agreement"] > 0.9
    gpu_only = ["pytorch fp16", "pytorch fp16 (CUDA graph)", "onnx fp32 (CUDA graph)", "engine fp16", "engine int8"]
    for label in gpu_only:
        assert rows[label]["status"] == "skipped" and "needs CUDA" in rows[label]["reason"]
    assert "tensorrt not installed" in rows["engine fp16"]["reason"]
    table = [line for line in out.splitlines() if line.startswith(("pytorch", "onnx", "engine"))]
    assert len(table) == len(doc["matrix"])
    assert any("skipped: needs CUDA; tensorrt not installed" in line for line in table)
    assert "note: tiny_int8.onnx: transfers: none on the CPU (input and output stay in host memory)" in out.splitlines()
    assert "onnx int8: running" in err.splitlines() and "engine fp16: skipped (needs CUDA; tensorrt not installed)" in err
    assert "| onnx | int8 |" in (tmp_path / "m.md").read_text()
    assert sorted(p.name for p in (tmp_path / "exp").glob("*.onnx")) == ["tiny_fp16.onnx", "tiny_fp32.onnx", "tiny_int8.onnx"]


def test_matrix_option_errors(tiny_checkpoint, tiny_onnx, capsys):
    code, out, err = run_cli(capsys, tiny_checkpoint, tiny_checkpoint, "--matrix", *FAST)
    assert code != 0
    assert_one_error_line(err, out, "--matrix takes one checkpoint, got 2 files")
    code, out, err = run_cli(capsys, tiny_checkpoint, "--matrix", "--precision", "fp16", *FAST)
    assert_one_error_line(err, out, "--precision does not apply to --matrix")


def test_matrix_of_an_onnx_is_refused_without_torch(tiny_onnx, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # a core install: the refusal must not ask for torch first
    code, out, err = run_cli(capsys, tiny_onnx, "--matrix", *FAST)
    assert code == 2
    assert_one_error_line(err, out, "--matrix needs a training checkpoint (.pt)")


def test_engine_on_cpu_is_refused_before_measuring(tiny_checkpoint, tmp_path, capsys):
    engine = tmp_path / "tiny_fp16_gpu_sm90_trt10.3.0.engine"
    engine.write_bytes(b"not read: refused before loading")
    code, out, err = run_cli(capsys, tiny_checkpoint, engine, *FAST)
    assert code == 3  # BackendUnavailable
    assert_one_error_line(err, out, f"TensorRT engine {engine} runs on a CUDA GPU only")


def test_meta_describes_one_file(tiny_onnx, tmp_path, capsys):
    import onnx

    ours = tiny_onnx
    graph = onnx.load(str(ours))
    del graph.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(graph, str(foreign))
    code, out, err = run_cli(capsys, foreign, *FAST, "--meta", ours)
    assert code in (0, None), err
    assert any(line.startswith("foreign.onnx") or "foreign.onnx" in line for line in out.splitlines() if "onnxruntime" in line)
    code, out, err = run_cli(capsys, foreign, ours, *FAST, "--meta", ours)
    assert_one_error_line(err, out, "--meta describes one .onnx or .engine file: bench that file alone, without --matrix")


def test_json_dash_prints_the_document_alone_on_stdout(tiny_checkpoint, capsys):
    """--json - (as for every command): the JSON on standard output, the table on standard error."""
    code, out, err = run_cli(capsys, tiny_checkpoint, *FAST, "--json", "-")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["results"][0]["latency_ms"]["count"] == 3 and "settings: device cpu" in err


def test_a_model_failing_at_measurement_keeps_the_others_results(tiny_onnx, tmp_path, capsys):
    """`bench a.onnx b.onnx`, b's metadata lying about its input: a's numbers were lost, no --json/--markdown written."""
    import onnx

    graph = onnx.load(str(tiny_onnx))
    next(prop for prop in graph.metadata_props if prop.key == "input_size").value = "[128, 64]"
    lying = tmp_path / "lying.onnx"
    onnx.save(graph, str(lying))
    report, markdown = tmp_path / "r.json", tmp_path / "r.md"
    code, out, err = run_cli(capsys, tiny_onnx, lying, *FAST, "--json", report, "--markdown", markdown)
    assert code == 2 and f"{lying}: failed ({lying}: its metadata says batch 1 at 128x64" in err
    assert_one_error_line(err, out, "its metadata says batch 1 at 128x64")  # the first failure, re-raised
    doc = json.loads(report.read_text())
    assert [r["model"] for r in doc["results"]] == [str(tiny_onnx)]
    assert doc["failed"] == [{"model": str(lying), "reason": err.splitlines()[-1].removeprefix("error: ")}]
    assert f"| {tiny_onnx.name} |" in markdown.read_text() and "lying.onnx |" not in markdown.read_text()
    reason = doc["failed"][0]["reason"]  # the Markdown lists it too, as the JSON does
    assert markdown.read_text().endswith(f"|\n\n- lying.onnx: failed ({reason})\n")
    report.unlink(), markdown.unlink()
    code, out, err = run_cli(capsys, lying, *FAST, "--json", report, "--markdown", markdown)  # all failed: as before
    assert code == 2 and not report.exists() and not markdown.exists()
    assert_one_error_line(err, out, "its metadata says batch 1 at 128x64")


def test_bench_whose_standard_error_reader_has_gone_still_measures(tiny_checkpoint, onnx_export, tmp_path):
    """`bench M --json R 2>&1 | logger` with the logger gone: "measuring M ..." raised BrokenPipeError, exit 1 with
    nothing measured and no R."""
    read, write = os.pipe()
    os.close(read)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-m", "dronseg_edge", "bench", str(onnx_export(tiny_checkpoint)), "--iters",
                           "3", "--warmup-s", "0", "--json", str(tmp_path / "r.json")], stdout=subprocess.DEVNULL,
                          stderr=write, env=env, timeout=300)
    os.close(write)
    assert done.returncode == 0 and json.loads((tmp_path / "r.json").read_text())["results"]
