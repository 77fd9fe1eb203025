"""A full or unwritable disk while exporting: one line naming the file, exit code 5, the good file of
the same name untouched, no hidden leftovers. On a real small file system, and with writers made to fail."""

import errno
import os
import re
import shutil
from pathlib import Path

import pytest
from testkit import mount_tmpfs, remount_tmpfs, run_cli

from dronseg_edge.errors import RuntimeFailure
from dronseg_edge.export import export_artifact
from dronseg_edge.export.triton import write_model_repository
from dronseg_edge.metadata import read_onnx_info

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def good_export(tiny_checkpoint, onnx_export) -> Path:
    """A finished fp32 export of the tiny checkpoint (parity not checked: not what these tests are about)."""
    return onnx_export(tiny_checkpoint)


@pytest.fixture
def out_with_good_file(good_export, tmp_path) -> Path:
    """An export folder already holding a good tiny_fp32.onnx: a failed re-export must leave it as it is."""
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy2(good_export, out / good_export.name)
    return out


def test_export_on_a_real_full_disk_exits_5_and_the_next_export_succeeds(tiny_checkpoint, tmp_path, capsys):
    with mount_tmpfs(tmp_path / "disk", size="3m") as disk:  # the tiny fp32 graph is 13 MB
        out = disk / "export"
        code, stderr = run_cli(capsys, "export", tiny_checkpoint, "--out", out, "--no-parity", "--device", "cpu")
        assert code == 5 and "Traceback" not in stderr
        assert re.fullmatch(rf"error: cannot write {re.escape(str(out / 'tiny_fp32.onnx'))}: No space left on device "
                            r"\([0-9.]+ [kM]?B free\): free some space or choose another output folder\n", stderr), stderr
        assert not out.exists()  # no half file, no working folder, no lock, nor the folder it made

        remount_tmpfs(disk, "size=64m")  # the user frees some space
        code, stderr = run_cli(capsys, "export", tiny_checkpoint, "--out", out, "--no-parity", "--device", "cpu")
        assert code == 0, stderr
        assert os.listdir(out) == ["tiny_fp32.onnx"] and read_onnx_info(out / "tiny_fp32.onnx").precision == "fp32"


def _no_hidden_files(folder: Path) -> bool:
    return not [name for name in os.listdir(folder) if name.startswith(".")]


def test_a_parity_report_that_cannot_be_written_keeps_the_good_file(tiny_checkpoint, out_with_good_file, monkeypatch):
    good = out_with_good_file / "tiny_fp32.onnx"
    before = good.read_bytes()
    real_write_text = Path.write_text

    def full_disk_for_reports(self, *args, **kwargs):
        if ".parity.json" in self.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk_for_reports)
    report = out_with_good_file / "tiny_fp32.parity.json"
    with pytest.raises(RuntimeFailure, match=rf"^cannot write {re.escape(str(report))}: No space left on device \("):
        export_artifact(tiny_checkpoint, out_dir=out_with_good_file, parity_images=1, device="cpu")
    assert good.read_bytes() == before  # the checked-but-unreported file never replaced it
    assert os.listdir(out_with_good_file) == ["tiny_fp32.onnx"]


def test_a_rename_into_place_refused_keeps_the_good_file(tiny_checkpoint, out_with_good_file, monkeypatch):
    good = out_with_good_file / "tiny_fp32.onnx"
    before = good.read_bytes()
    real_replace = os.replace

    def read_only_final_names(src, dst, *args, **kwargs):
        if Path(dst) == good:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", read_only_final_names)
    with pytest.raises(RuntimeFailure, match=rf"^cannot write {re.escape(str(good))}: Read-only file system \(") as caught:
        export_artifact(tiny_checkpoint, out_dir=out_with_good_file, parity=False, device="cpu")
    assert caught.value.exit_code == 5
    assert good.read_bytes() == before and _no_hidden_files(out_with_good_file)


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                                   PermissionError(errno.EACCES, os.strerror(errno.EACCES))], ids=["ENOSPC", "EACCES"])
def test_a_triton_folder_that_cannot_be_written_keeps_the_previous_one(good_export, tmp_path, monkeypatch, error):
    source = tmp_path / good_export.name
    shutil.copy2(good_export, source)
    model = write_model_repository(source, tmp_path / "triton", "tiny_fp32")
    before = {p.relative_to(model): p.read_bytes() for p in model.rglob("*") if p.is_file()}

    def failing_copy(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(shutil, "copyfile", failing_copy)
    with pytest.raises(RuntimeFailure, match=rf"^cannot write {re.escape(str(model))}: {error.strerror} \("):
        write_model_repository(source, tmp_path / "triton", "tiny_fp32")
    assert {p.relative_to(model): p.read_bytes() for p in model.rglob("*") if p.is_file()} == before
    assert _no_hidden_files(tmp_path) and _no_hidden_files(tmp_path / "triton")
