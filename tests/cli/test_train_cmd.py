"""train / eval / submit from the command line: happy path and one-line errors."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from dronseg_edge.cli import main


def run_cli(capsys, *args):
    try:
        main(list(map(str, args)))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(capsys, *args) -> str:
    code, _out, err = run_cli(capsys, *args)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


TINY = ["--model", "lraspp_mobilenet_v3_large", "--weights", "none", "--size", "96x64", "--epochs", "1",
        "--batch", "8", "--device", "cpu", "--workers", "0", "--no-tensorboard"]


def test_train_missing_data(capsys, tmp_path):
    message = one_line_error(capsys, "train", "--data", tmp_path / "nowhere", *TINY)
    assert "nowhere" in message and "synth" in message


def test_train_bad_options(capsys, synth_root, tmp_path):
    assert "--size" in one_line_error(capsys, "train", "--data", synth_root, *TINY, "--size", "big")
    assert "--model" in one_line_error(capsys, "train", "--data", synth_root, *TINY, "--model", "unet")
    assert "--loss" in one_line_error(capsys, "train", "--data", synth_root, *TINY, "--loss", "l2")
    assert "--amp" in one_line_error(capsys, "train", "--data", synth_root, *TINY, "--amp", "fp8")
    assert "--weights" in one_line_error(capsys, "train", "--data", synth_root, *TINY, "--weights", tmp_path / "w.pth")
    assert "val-fraction" in one_line_error(capsys, "train", "--data", synth_root, *TINY, "--val-fraction", "1.5")
    assert "--save-every-steps" in one_line_error(capsys, "train", "--data", synth_root, *TINY, "--save-every-steps", "-1")
    assert "only at output stride 16" in one_line_error(capsys, "train", "--data", synth_root, *TINY, "--output-stride", "8")
    assert "--output-stride 12 is not one of 8, 16" in one_line_error(
        capsys, "train", "--data", synth_root, *TINY, "--model", "deeplabv3_resnet50", "--output-stride", "12")


@pytest.mark.parametrize("flags", [["--nesterov"], ["--momentum", "0.9"]])
def test_a_setting_the_optimizer_never_reads_is_refused_even_at_its_default(capsys, synth_root, tmp_path, flags):
    """AdamW reads neither: typed at their default, they were accepted without a word (only other values were refused)."""
    message = one_line_error(capsys, "train", "--data", synth_root, *TINY, "--optimizer", "adamw", *flags,
                             "--out", tmp_path / "run")
    assert message == f"error: {flags[0]} has no effect with --optimizer adamw (only with sgd): drop it"
    assert not (tmp_path / "run").exists()


def test_train_fp16_on_the_cpu_is_refused_before_the_run_starts(capsys, synth_root, tmp_path):
    message = one_line_error(capsys, "train", "--data", synth_root, *TINY, "--amp", "fp16", "--out", tmp_path / "run")
    assert "--amp fp16" in message and "--amp bf16 or --amp off" in message
    assert not (tmp_path / "run").exists()


def test_train_bad_mask_named_before_training(capsys, synth_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    victim = sorted((root / "masks/masks").glob("*.png"))[3]
    cv2.imwrite(str(victim), np.full((64, 96), 40, np.uint8))
    message = one_line_error(capsys, "train", "--data", root, *TINY, "--out", tmp_path / "run")
    assert victim.name in message and "0..11" in message
    assert not (tmp_path / "run" / "weights" / "last.pt").exists()


def test_resume_errors(capsys, tmp_path, tiny_checkpoint):
    assert "does not exist" in one_line_error(capsys, "train", "--data", tmp_path, "--resume", tmp_path / "last.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert "junk.pt" in one_line_error(capsys, "train", "--data", tmp_path, "--resume", tmp_path / "junk.pt")
    assert "training state" in one_line_error(capsys, "train", "--data", tmp_path, "--resume", tiny_checkpoint)
    # a run folder: its weights/last.pt, never best.pt (a run resumed from best.pt goes back to its best epoch)
    message = one_line_error(capsys, "train", "--resume", tmp_path)
    assert message == f"error: --resume {tmp_path} is a folder: pass the weights/last.pt of the run to continue (RUN/weights/last.pt)"


def test_resume_refuses_the_options_of_its_run(capsys, tmp_path):
    """`train --resume RUN/weights/last.pt --epochs 50 --out OTHER` continued RUN for its own epochs, exit 0."""
    message = one_line_error(capsys, "train", "--resume", tmp_path / "last.pt", "--epochs", "50", "--out", tmp_path / "o",
                             "--hflip", "0", "--device", "cpu", "--workers", "0", "--max-pixels", "9000000")
    assert message == ("error: --out, --epochs, --hflip: the run's own with --resume (which takes only --data, --device, "
                       "--workers and --max-pixels anew): leave them out, or start a new run")
    assert "does not exist" in one_line_error(capsys, "train", "--resume", tmp_path / "last.pt", "--device", "cpu")
    # a flag is named as typed: --no-tensorboard was named --tensorboard, the one spelling not given
    message = one_line_error(capsys, "train", "--resume", tmp_path / "last.pt", "--no-tensorboard", "--aux-loss")
    assert message.startswith("error: --aux-loss, --no-tensorboard: the run's own with --resume")


def test_resume_takes_the_data_folder_from_its_checkpoint_unless_given(capsys, synth_root, tmp_path):
    """The README form `train --resume RUN/weights/last.pt` needs no --data; a given one is checked first."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    code, _out, err = run_cli(capsys, "train", "--data", data, *TINY, "--out", tmp_path / "run", "--mosaic-every", "0")
    assert code == 0, err
    last = tmp_path / "run" / "weights" / "last.pt"
    code, out, err = run_cli(capsys, "train", "--resume", last, "--device", "cpu", "--workers", "0")
    assert code == 0, err
    assert f"train images in {data} validated" in out and f"resumed from {last}" in out
    saved = last.stat().st_mtime_ns
    message = one_line_error(capsys, "train", "--resume", last, "--data", "/nonexistent")
    assert message == ("error: --data /nonexistent is not a folder: pass the data set root in the Kaggle AeroScapes "
                       "layout (or leave --data out: the run's own)")
    assert last.stat().st_mtime_ns == saved  # refused before any work
    moved = data.rename(tmp_path / "moved")
    message = one_line_error(capsys, "train", "--resume", last, "--device", "cpu", "--workers", "0")
    assert message == (f"error: the data folder {data} that {last} trained on does not exist here: pass --data DIR "
                       "(the same data set, the run's split names its images)")
    code, out, err = run_cli(capsys, "train", "--resume", last, "--data", moved, "--device", "cpu", "--workers", "0")
    assert code == 0 and f"train images in {moved} validated" in out, err
    assert "--data DIR is needed" in one_line_error(capsys, "train", *TINY)  # a new run has no checkpoint to ask


def test_eval_prints_table_and_json(capsys, trained_run, tmp_path):
    code, out, err = run_cli(capsys, "eval", trained_run.best, "--device", "cpu", "--workers", "0", "--json", tmp_path / "s.json")
    assert code == 0, err
    assert "vegetation" in out and "mIoU" in out and "competition" in out
    scores = json.loads((tmp_path / "s.json").read_text())
    assert len(scores["iou"]) == 12 and 0 < scores["miou"] <= 1 and scores["split"] == "val"
    assert scores["images"] == len(json.loads((trained_run.run_dir / "split.json").read_text())["val"])
    code, _out, err = run_cli(capsys, "eval", trained_run.best, "--split", "all", "--device", "cpu", "--workers", "0")
    assert code == 0, err


def test_eval_errors(capsys, tiny_checkpoint, tmp_path):
    assert "record its data set" in one_line_error(capsys, "eval", tiny_checkpoint, "--device", "cpu")
    assert "--split 'test': choose val, train or all" in one_line_error(capsys, "eval", tiny_checkpoint, "--data", tmp_path,
                                                                      "--split", "test")
    assert "holds no val split: use --split all" in one_line_error(capsys, "eval", tiny_checkpoint, "--data", tmp_path)
    assert "does not exist" in one_line_error(capsys, "eval", tmp_path / "none.pt")


def test_eval_whose_recorded_data_folder_is_gone_names_data_not_synth(capsys, tiny_checkpoint, tmp_path):
    """`synth DIR`, the data check's advice, would make a new data set whose image IDs the split may share."""
    from dronseg_edge.checkpoint import load_checkpoint, save_checkpoint
    from dronseg_edge.export import export_artifact

    recorded = {"config": {"data": str(tmp_path / "gone")}, "split": {"train": ["a"], "val": ["b"]}}
    ckpt = save_checkpoint(tmp_path / "best.pt", {**load_checkpoint(tiny_checkpoint), **recorded})
    onnx_file = export_artifact(ckpt, device="cpu", out_dir=tmp_path, parity=False).path  # scored on its checkpoint's data
    for model in (ckpt, onnx_file):
        assert one_line_error(capsys, "eval", model, "--device", "cpu", "--workers", "0") == (
            f"error: the data folder {tmp_path / 'gone'} that {ckpt} trained on does not exist here: pass --data DIR "
            "(the same data set, the run's split names its images)")


def test_submit_writes_competition_csv(capsys, trained_run, synth_root, tmp_path):
    from dronseg_edge.data.aeroscapes import dataset_samples, read_mask
    from submissions import read_submission, score_submission

    test_ids = [s.image_id for s in dataset_samples(synth_root, "test")]
    scores = {}
    for order in ("row", "column"):
        out = tmp_path / f"{order}.csv"
        code, stdout, err = run_cli(capsys, "submit", trained_run.best, "--data", synth_root, "--out", out,
                                    "--rle-order", order, "--device", "cpu", "--workers", "0")
        assert code == 0, err
        rows = read_submission(out)
        assert len(rows) == 12 * len(test_ids)
        assert set(rows) == {f"{i}_{c}" for i in test_ids for c in range(12)}
        assert out.read_text().splitlines()[0] == "ImageID,EncodedPixels"
        truth = {i: read_mask(synth_root / "test_masks" / f"{i}.png") for i in test_ids}
        scores[order] = score_submission(out, truth, order="row")
    # Decoding column-major runs as row-major scrambles the masks: the row-order file must score higher.
    assert scores["row"] > scores["column"]
    assert "--rle-order" in one_line_error(capsys, "submit", trained_run.best, "--data", synth_root,
                                           "--out", tmp_path / "x.csv", "--rle-order", "diagonal")
    before = (synth_root / "test.csv").read_bytes()  # the data set's own CSV was replaced, exit 0
    assert "is also an input" in one_line_error(capsys, "submit", trained_run.best, "--data", synth_root,
                                                "--out", synth_root / "test.csv")
    assert (synth_root / "test.csv").read_bytes() == before


def test_module_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "dronseg_edge", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for command in ("train", "eval", "submit"):
        assert command in proc.stdout


def test_unwritable_output_folder(capsys, synth_root, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the run folder's parent should be")
    message = one_line_error(capsys, "train", "--data", synth_root, *TINY, "--out", blocker / "run")
    assert "blocker" in message and "cannot create" in message


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_a_new_run_never_overwrites_a_training_run_in_its_out_folder(capsys, synth_root, tmp_path, name):
    # the same command again after Ctrl-C (instead of --resume) replaced weights/last.pt with its first epoch; a run
    # whose last.pt was deleted to save space had its best.pt replaced by the new run's epoch 1, exit 0
    last = tmp_path / "run" / "weights" / name
    last.parent.mkdir(parents=True)
    last.write_bytes(b"epoch 2")
    message = one_line_error(capsys, "train", "--data", synth_root, *TINY, "--out", tmp_path / "run")
    assert f"already holds a training run ({last}): continue it with --resume {last}" in message
    assert last.read_bytes() == b"epoch 2"


@pytest.mark.parametrize("folder", ["masks/masks", "imgs/imgs"])
def test_a_run_folder_that_is_a_folder_of_the_data_set_is_refused(capsys, synth_root, tmp_path, folder):
    """`train --data D --out D/masks/masks`: the run's plots landed among the masks, and every later train or eval
    of D stopped at 'confusion_matrix.png has no image'."""
    data = shutil.copytree(synth_root, tmp_path / "data")
    before = sorted(os.listdir(data / folder))
    message = one_line_error(capsys, "train", "--data", data, *TINY, "--out", data / folder)
    assert f"--out {data / folder} is also an input of this command and its files would join" in message
    assert sorted(os.listdir(data / folder)) == before


def test_a_new_run_never_overwrites_its_own_weights_file(capsys, synth_root, tiny_checkpoint, tmp_path):
    """`train --weights RUN/weights/best.pt --out RUN` (its last.pt deleted) replaced the weights it started from, exit 0."""
    best = tmp_path / "run" / "weights" / "best.pt"
    best.parent.mkdir(parents=True)
    best.write_bytes(tiny_checkpoint.read_bytes())
    message = one_line_error(capsys, "train", "--data", synth_root, *TINY, "--weights", best, "--out", tmp_path / "run")
    assert f"--out {best} is also an input" in message
    assert best.read_bytes() == tiny_checkpoint.read_bytes()


def test_eval_scores_an_onnx_file_like_its_checkpoint(capsys, trained_run, onnx_export, tmp_path):
    onnx_file = onnx_export(trained_run.best)
    code, out, err = run_cli(capsys, "eval", onnx_file, "--device", "cpu", "--json", tmp_path / "onnx.json")
    assert code == 0, err
    assert "onnxruntime" in out and "val split recorded in" in out and "competition" in out
    code, _out, err = run_cli(capsys, "eval", trained_run.best, "--device", "cpu", "--workers", "0", "--json", tmp_path / "pt.json")
    assert code == 0, err
    onnx_scores, pt_scores = (json.loads((tmp_path / name).read_text()) for name in ("onnx.json", "pt.json"))
    assert onnx_scores["model"] == str(onnx_file) and onnx_scores["images"] == pt_scores["images"]
    assert abs(onnx_scores["miou"] - pt_scores["miou"]) < 0.005


def test_eval_of_an_engine_without_sidecar_names_meta(capsys, tmp_path, tiny_checkpoint):
    engine = tmp_path / "trtexec.engine"
    engine.write_bytes(b"plan")
    assert "pass --meta FILE" in one_line_error(capsys, "eval", engine, "--device", "cpu")
    assert "--meta applies to .onnx and .engine files" in one_line_error(
        capsys, "eval", tiny_checkpoint, "--device", "cpu", "--meta", engine)


class _RunsCode:
    """Unpickling this would run a command: what a hostile --weights file holds."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.marker)],))


def test_train_weights_that_hold_code_are_refused_before_any_work(capsys, tmp_path):
    """Issue 19: torch's paragraph advising weights_only=False, and weights/, split.json, config.json
    written before the refusal. Now: one line, nothing written, no code run, no unsafe advice."""
    import torch

    evil, marker = tmp_path / "evil.pt", tmp_path / "PWNED"
    torch.save({"model": _RunsCode(marker)}, evil)
    out = tmp_path / "run"
    args = [a if a != "none" else evil for a in TINY]
    (tmp_path / "data").mkdir()  # a folder (the command checks that first), but no data set: the weights come before it
    message = one_line_error(capsys, "train", "--data", tmp_path / "data", "--out", out, *args)
    assert message.startswith(f"error: --weights {evil} cannot be read (it holds Python objects, not plain data: ")
    assert "weights_only" not in message and "trust" not in message
    assert not out.exists() and not marker.exists()


def test_eval_json_records_the_model_and_data_as_absolute_paths(capsys, tiny_checkpoint, synth_root, tmp_path, monkeypatch):
    """eval --json run from another folder recorded 'checkpoint' and 'data' as typed: a reader elsewhere found neither."""
    monkeypatch.chdir(tmp_path)
    typed = [os.path.relpath(path, tmp_path) for path in (tiny_checkpoint, synth_root)]
    code, _out, err = run_cli(capsys, "eval", typed[0], "--data", typed[1], "--split", "all", "--device", "cpu",
                              "--workers", "0", "--json", "s.json")
    assert code == 0, err
    scores = json.loads((tmp_path / "s.json").read_text())
    assert (scores["model"], scores["data"]) == (str(tiny_checkpoint), str(synth_root))


def test_train_whose_output_reader_has_gone_still_trains(synth_root, tmp_path):
    """`train ... | head -1`: the second line raised BrokenPipeError, so the run stopped before its first step, exit 1
    with nothing said and no weights."""
    read, write = os.pipe()
    os.close(read)
    env = {**os.environ, "PYTHONPATH": str(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))}
    done = subprocess.run([sys.executable, "-m", "dronseg_edge", "train", "--data", str(synth_root), "--out",
                           str(tmp_path / "run"), *TINY], stdout=write, stderr=subprocess.PIPE, text=True, env=env,
                          timeout=600)
    os.close(write)
    assert done.returncode == 0 and (tmp_path / "run" / "weights" / "last.pt").is_file(), done.stderr[-2000:]
