import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench_fakes import requires_cuda
from dronseg_edge.bench.matrix import (DEFAULT_VARIANTS, MatrixRow, Variant, default_out_dir, matrix_table,
                                       run_matrix, skip_reason)
from dronseg_edge.devices import tf32_mode
from dronseg_edge.bench.timing import TimingSettings
from dronseg_edge.errors import DronsegError

CPU = torch.device("cpu")
FAST = TimingSettings(warmup_iters=1, iters=2)


def test_gpu_only_variants_are_skipped_on_cpu_with_reasons():
    reasons = {v.label: skip_reason(v, CPU) for v in DEFAULT_VARIANTS}
    assert reasons["pytorch fp32"] is None
    assert reasons["pytorch fp16"] == "needs CUDA (PyTorch fp16)"
    assert reasons["pytorch fp16 (CUDA graph)"] == "needs CUDA (PyTorch fp16, CUDA graph)"
    try:
        import tensorrt  # noqa: F401
        has_trt = True
    except Exception:
        has_trt = False
    for precision in ("fp32", "fp16", "int8"):
        assert reasons[f"engine {precision}"].startswith("needs CUDA")
        assert ("tensorrt not installed" in reasons[f"engine {precision}"]) is not has_trt
    assert reasons["onnx fp32"] is None  # onnxruntime (CPU) is installed in the dev environment
    assert skip_reason(Variant("pytorch", "fp32", tf32=False), CPU) == "needs CUDA (TF32 switch)"


def test_onnx_on_gpu_without_cuda_provider_says_so(monkeypatch):
    from dronseg_edge.bench import matrix

    cpu_only = SimpleNamespace(get_available_providers=lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(matrix, "import_optional", lambda name: (cpu_only, None))
    assert skip_reason(Variant("onnx", "fp16"), torch.device("cuda")) == \
        "onnxruntime CUDA provider not available (pip install onnxruntime-gpu)"
    monkeypatch.setattr(matrix, "import_optional", lambda name: (None, "not installed"))
    assert skip_reason(Variant("onnx", "fp32"), CPU).startswith("onnxruntime not installed")


def test_tf32_mode_sets_and_restores_flags():
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    with tf32_mode(False):
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
    with tf32_mode(None):
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_default_out_dir(tmp_path):
    assert default_out_dir(tmp_path / "run" / "weights" / "best.pt") == tmp_path / "run" / "export"
    assert default_out_dir(tmp_path / "tiny.pt") == tmp_path  # as `dronseg-edge export` does


def test_pytorch_rows_on_cpu(tiny_checkpoint, tmp_path):
    variants = [Variant("pytorch", "fp32"), Variant("pytorch", "fp16"), Variant("engine", "fp16")]
    rows = run_matrix(tiny_checkpoint, CPU, FAST, out_dir=tmp_path, variants=variants, parity=False)
    assert [r.status for r in rows] == ["ok", "skipped", "skipped"]
    ok = rows[0]
    assert ok.result.measurement.latency.count == 2 and ok.result.input_size == (96, 64)
    assert ok.file_mb == pytest.approx(tiny_checkpoint.stat().st_size / 1e6)
    table = matrix_table(rows).splitlines()
    assert table[0].split()[:3] == ["format", "precision", "backend"]
    assert "ref" in table[2] and "torch / cpu fp32" in table[2]
    assert table[3].rstrip().endswith("skipped: needs CUDA (PyTorch fp16)")
    assert "tensorrt not installed" in table[4] or "needs CUDA" in table[4]
    json.dumps([r.to_dict() for r in rows])  # serialisable as it stands


def test_matrix_refuses_exported_files(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(DronsegError, match="needs a training checkpoint"):
        run_matrix(onnx, CPU, FAST)


def test_failed_row_keeps_one_line_reason(tiny_checkpoint, tmp_path, monkeypatch):
    from dronseg_edge.bench import matrix

    def broken(*args, **kwargs):
        raise DronsegError("calibration folder x has no images: pass --data DIR\nsecond line")

    monkeypatch.setattr(matrix, "_run_variant", broken)
    (row,) = run_matrix(tiny_checkpoint, CPU, FAST, out_dir=tmp_path, variants=[Variant("pytorch", "fp32")])
    assert isinstance(row, MatrixRow) and row.status == "failed"
    assert row.reason == "calibration folder x has no images: pass --data DIR"


@pytest.mark.slow
def test_onnx_rows_export_check_parity_and_are_reused(tiny_checkpoint, synth_root, tmp_path):
    variants = [Variant("onnx", "fp32"), Variant("onnx", "int8"), Variant("engine", "fp16")]
    rows = run_matrix(tiny_checkpoint, CPU, FAST, out_dir=tmp_path, data=synth_root, variants=variants)
    fp32, int8, engine = rows
    assert (fp32.status, int8.status, engine.status) == ("ok", "ok", "skipped"), [r.reason for r in rows]
    for row in (fp32, int8):
        assert not row.reused and row.path.endswith(f"tiny_{row.variant.precision}.onnx")
        assert row.result.backend == "onnxruntime" and row.result.provider.startswith("CPUExecutionProvider")
        assert row.parity["passed"] is row.parity_passed and 0.9 <= row.agreement <= 1.0
        assert row.miou_delta is not None  # the synthetic data set has masks
        assert row.file_mb == pytest.approx((tmp_path / Path(row.path).name).stat().st_size / 1e6)
    assert fp32.agreement > 0.999 and int8.file_mb < fp32.file_mb
    mtime = Path(fp32.path).stat().st_mtime_ns
    again = run_matrix(tiny_checkpoint, CPU, FAST, out_dir=tmp_path, data=synth_root, variants=variants[:1])
    assert again[0].reused and again[0].status == "ok" and Path(fp32.path).stat().st_mtime_ns == mtime
    assert "(reused)" in matrix_table(again)


def test_export_of_another_checkpoint_is_not_reused(tiny_checkpoint, tmp_path):
    from dronseg_edge.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(tiny_checkpoint)
    state.pop("path")
    first_weight = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][first_weight] = state["model"][first_weight] + 0.01
    ckpt = Path(shutil.copy2(tiny_checkpoint, tmp_path / "best.pt"))
    first = run_matrix(ckpt, CPU, FAST, out_dir=tmp_path, variants=[Variant("onnx", "fp32")], parity=False)
    save_checkpoint(ckpt, state)  # the same file with other weights (trained on since): its old export is replaced
    second = run_matrix(ckpt, CPU, FAST, out_dir=tmp_path, variants=[Variant("onnx", "fp32")], parity=False)
    assert first[0].path == second[0].path and second[0].status == "ok" and not second[0].reused


def test_int8_without_data_fails_with_the_bench_option(tiny_checkpoint, tmp_path):
    (row,) = run_matrix(tiny_checkpoint, CPU, FAST, out_dir=tmp_path, variants=[Variant("onnx", "int8")], parity=False)
    assert row.status == "failed" and "--calib-data" in row.reason and "--data DIR" in row.reason


def test_an_int8_file_the_user_calibrated_otherwise_is_kept(tiny_checkpoint, synth_root, tmp_path):
    """bench --matrix replaced RUN/export/best_int8.onnx, exported with --calib-method minmax, with its own calibration."""
    from dronseg_edge.export import export_artifact

    mine = export_artifact(tiny_checkpoint, precision="int8", calib_method="minmax", calib_data=synth_root, calib_images=2,
                           out_dir=tmp_path, device="cpu", parity=False).path
    before = mine.read_bytes()
    (row,) = run_matrix(tiny_checkpoint, CPU, FAST, out_dir=tmp_path, data=synth_root, variants=[Variant("onnx", "int8")],
                        parity=False)
    assert mine.read_bytes() == before
    assert row.status == "failed" and f"{mine} is this checkpoint's, calibrated otherwise (minmax, 2 images" in row.reason


def test_a_file_of_the_same_name_from_another_checkpoint_is_kept(tiny_checkpoint, tmp_path):
    """Exports of several runs gathered in one folder are all named best_*: `bench B/weights/best.pt --matrix --out
    models` replaced run A's models/best_fp32.onnx with run B's, without a word."""
    from testkit import make_checkpoint

    from dronseg_edge.export import export_artifact

    other = make_checkpoint(tmp_path / "other" / "tiny.pt", seed=1)
    theirs = export_artifact(other, out_dir=tmp_path / "models", device="cpu", parity=False).path
    before = theirs.read_bytes()
    (row,) = run_matrix(tiny_checkpoint, CPU, FAST, out_dir=tmp_path / "models", variants=[Variant("onnx", "fp32")],
                        parity=False)
    assert theirs.read_bytes() == before
    assert row.status == "failed" and f"{theirs} was exported from another checkpoint ({other})" in row.reason


@pytest.mark.gpu
@requires_cuda
def test_pytorch_gpu_rows_report_their_cuda_graph(tiny_checkpoint, tmp_path):
    variants = [Variant("pytorch", "fp32", tf32=False), Variant("pytorch", "fp16"),
                Variant("pytorch", "fp16", cuda_graph=True)]
    strict, eager, graph = run_matrix(tiny_checkpoint, torch.device("cuda"), FAST, out_dir=tmp_path, variants=variants)
    assert [r.status for r in (strict, eager, graph)] == ["ok", "ok", "ok"], [r.reason for r in (strict, eager, graph)]
    assert eager.result.cuda_graph is False and graph.result.cuda_graph is True
    assert graph.result.measurement.timer == "cuda-events" and graph.agreement is not None


def test_rows_carry_miou_and_competition_dice_on_the_validation_split(trained_checkpoint, tmp_path):
    variants = [Variant("pytorch", "fp32"), Variant("onnx", "fp32"), Variant("pytorch", "fp16")]
    said = []
    rows = run_matrix(trained_checkpoint, CPU, FAST, out_dir=tmp_path, variants=variants, parity=False, log=said.append)
    torch_row, onnx_row, skipped = rows
    assert any(line.startswith("accuracy: 8 images, val split recorded in") for line in said), said
    for row in (torch_row, onnx_row):
        assert row.accuracy["images"] == 8 and row.accuracy["split"] == "val" and 0.3 < row.accuracy["miou"] <= 1
        assert row.to_dict()["miou"] == row.accuracy["miou"] and row.to_dict()["competition"] == row.accuracy["competition"]
    assert abs(torch_row.accuracy["miou"] - onnx_row.accuracy["miou"]) < 0.005
    assert skipped.accuracy is None and skipped.to_dict()["miou"] is None
    table = matrix_table(rows).splitlines()
    header = [h.strip() for h in table[0].split("  ") if h.strip()]
    assert header[5:8] == ["mIoU delta", "mIoU", "comp. Dice"]
    assert f"{onnx_row.accuracy['miou']:.4f}" in table[3] and f"{onnx_row.accuracy['competition']:.4f}" in table[3]
    assert "| mIoU | comp. Dice |" in matrix_table(rows, markdown=True).replace("  ", " ")
    json.dumps([r.to_dict() for r in rows])


def test_the_reference_row_is_scored_at_the_matrix_size_as_the_exports(trained_checkpoint, tmp_path):
    # --size other than the training size: the checkpoint's row was scored at its training size while timed
    # (and the exports made) at --size, so its mIoU showed an export loss that was not there
    variants = [Variant("pytorch", "fp32"), Variant("onnx", "fp32")]
    torch_row, onnx_row = run_matrix(trained_checkpoint, CPU, FAST, size=(128, 96), out_dir=tmp_path, variants=variants,
                                     parity=False, log=lambda _m: None)
    assert abs(torch_row.accuracy["miou"] - onnx_row.accuracy["miou"]) < 0.002


def test_rows_without_a_data_set_say_why_accuracy_is_missing(tiny_checkpoint, tmp_path):
    said = []
    rows = run_matrix(tiny_checkpoint, CPU, FAST, out_dir=tmp_path, variants=[Variant("pytorch", "fp32")], parity=False,
                      log=said.append)
    assert rows[0].status == "ok" and rows[0].accuracy is None
    assert any(line.startswith("accuracy: not measured (") and "pass --data DIR" in line for line in said), said


def test_an_image_over_the_limit_is_not_advised_a_max_pixels_bench_lacks(tiny_checkpoint, tmp_path, monkeypatch):
    """bench --matrix scores and checks rows at the default limit and takes no --max-pixels."""
    from testkit import write_png_bomb

    from dronseg_edge.bench import matrix
    from dronseg_edge.media import checked_image_size

    bomb = write_png_bomb(tmp_path / "a.png", 9000, 8000)
    monkeypatch.setattr(matrix, "split_samples_for", lambda *args: checked_image_size(bomb))
    monkeypatch.setattr(matrix, "_run_variant", lambda *args: checked_image_size(bomb))
    said = []
    (row,) = run_matrix(tiny_checkpoint, CPU, FAST, out_dir=tmp_path, variants=[Variant("pytorch", "fp32")], log=said.append)
    for text in (row.reason, said[0]):
        assert "remove it or scale it down (this command takes no --max-pixels)" in text and "raise" not in text, text


def test_rows_record_their_files_as_absolute_paths(tiny_checkpoint, tmp_path, monkeypatch):
    """bench --matrix/--json run from another folder recorded 'path' and 'model' as typed, read from nowhere else."""
    monkeypatch.chdir(tmp_path)
    typed = Path(os.path.relpath(tiny_checkpoint, tmp_path))
    row = run_matrix(typed, CPU, FAST, out_dir=Path("exp"), variants=[Variant("pytorch", "fp32")], parity=False)[0]
    assert row.to_dict()["path"] == row.to_dict()["result"]["model"] == os.path.abspath(tiny_checkpoint)
