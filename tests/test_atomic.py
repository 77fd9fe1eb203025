"""atomic.py: a write lands whole under its final name or not at all, and leaves no temporary file,
whenever an interrupt arrives; storage faults that writers hide (in a chain of causes, or torch's
errno-less short write) are one line."""

import errno
import json
import os
import shutil
import stat
import threading
from collections import namedtuple
from pathlib import Path

import pytest

from dronseg_edge import atomic
from dronseg_edge.atomic import storage_cause, storage_faults
from dronseg_edge.errors import DronsegError, RuntimeFailure

TORCH_SHORT_WRITE = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
Usage = namedtuple("Usage", "total used free")


def test_an_interrupt_right_after_the_temporary_file_exists_leaves_nothing(tmp_path, monkeypatch):
    """SIGTERM becomes KeyboardInterrupt at any bytecode: here just after the temporary file was made
    (before, the file was made by mkstemp ahead of the try that removes it: a synth run under load
    left one behind)."""
    real_close = os.close

    def close_then_interrupt(fd):
        real_close(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "close", close_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_text_atomic(tmp_path / "a.txt", "text")
    assert list(tmp_path.iterdir()) == []


def test_a_write_lands_under_its_final_name_with_ordinary_permissions(tmp_path):
    path = atomic.write_text_atomic(tmp_path / "b.txt", "text")
    assert path.read_text() == "text" and [p.name for p in tmp_path.iterdir()] == ["b.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_name_the_file_system_takes_is_written_however_long(tmp_path):
    """The temporary name adds 31 bytes to the final one: a 240-byte image stem (which infer's mask sink
    writes) was 'File name too long' from Result.save; the temporary name is now shortened, its suffix kept."""
    final = tmp_path / ("x" + "é" * 110 + "x" * 19 + ".png")  # 244 bytes; the cut falls inside an "é"
    assert atomic.write_text_atomic(final, "text").read_text() == "text"
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


def test_storage_cause_follows_the_chain_but_not_a_suppressed_context():
    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("exporter failed") from exc
    except RuntimeError as wrapped:
        assert storage_cause(wrapped) is full
    try:
        try:
            raise full
        except OSError:
            raise ValueError("handled") from None
    except ValueError as handled:
        assert storage_cause(handled) is None
    assert storage_cause(OSError(errno.EIO, "I/O error")) is None  # not a storage errno: a real fault


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES])
def test_storage_faults_turn_a_wrapped_oserror_into_one_line(tmp_path, code):
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeFailure) as caught:
        with storage_faults(target):
            try:
                raise OSError(code, "boom")
            except OSError as exc:
                raise RuntimeError("wrapped") from exc
    message = str(caught.value)
    assert caught.value.exit_code == 5 and "\n" not in message
    assert message.startswith(f"cannot write {target}: boom (") and " free)" in message


def test_torch_short_write_is_a_full_disk_when_space_is_low(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: Usage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(RuntimeFailure, match=r"No space left on device \(1\.0 MB free\): free some space"):
        with storage_faults(tmp_path / "last.pt"):
            raise RuntimeError(TORCH_SHORT_WRITE)


def test_torch_short_write_with_space_left_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: Usage(100 << 30, 1 << 30, 99 << 30))
    with pytest.raises(RuntimeFailure, match=r"the write stopped short \(torch: .*unexpected pos 576 vs 534; "
                                             r"106\.3 GB free\): check the disk"):
        with storage_faults(tmp_path / "last.pt"):
            raise RuntimeError(TORCH_SHORT_WRITE)


def test_other_errors_pass_through(tmp_path):
    with pytest.raises(RuntimeError, match="not a write"):
        with storage_faults(tmp_path / "x"):
            raise RuntimeError("not a write")
    with pytest.raises(DronsegError, match="user error") as caught:
        with storage_faults(tmp_path / "x"):
            try:
                raise OSError(errno.ENOSPC, "full")
            except OSError:
                raise DronsegError("user error")  # our own message wins, its context notwithstanding
    assert caught.value.exit_code == 2


def test_low_space_asks_the_nearest_existing_folder(tmp_path, monkeypatch):
    asked = []

    def disk_usage(path):
        asked.append(Path(path))
        if not Path(path).exists():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        return Usage(1 << 30, 0, 1 << 20)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    assert atomic.low_space(tmp_path / "not" / "yet" / "made.pt")
    assert asked[-1] == tmp_path


def test_free_space_is_known_for_a_path_under_a_file(tmp_path):
    """--out file.txt/run (a mistake the error message must still describe): the file's own file system."""
    (tmp_path / "file.txt").write_text("x")
    free = atomic.free_bytes(tmp_path / "file.txt" / "run" / "x.png")
    assert free is not None and abs(free - shutil.disk_usage(tmp_path).free) < 64 << 20  # others may write meanwhile


def test_a_ctrl_c_that_a_writer_wrapped_stays_a_ctrl_c(tmp_path):
    """torch.save turns a KeyboardInterrupt raised in its Python write callback into a short-write RuntimeError."""
    with pytest.raises(KeyboardInterrupt):
        with storage_faults(tmp_path / "last.pt"):
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise RuntimeError(TORCH_SHORT_WRITE)


def test_json_files_hold_no_nan_summaries_write_null_and_reports_keep_the_finding(tmp_path):
    data = {"a": [float("nan"), 1.5, (float("inf"),)], "b": {"c": float("-inf")}}
    path = atomic.write_json_atomic(tmp_path / "s.json", data)
    assert json.loads(path.read_text(), parse_constant=pytest.fail) == {"a": [None, 1.5, [None]], "b": {"c": None}}
    assert atomic.json_safe(data, str) == {"a": ["nan", 1.5, ["inf"]], "b": {"c": "-inf"}}  # parity reports


def test_numpy_and_torch_scalars_are_written_as_numbers_not_text(tmp_path):
    # synth.json had "images": "60" for synthesize(images=np.int64(60)) (json's default=str), a torch loss "tensor(0.25)"
    import numpy as np
    import torch
    data = {"images": np.int64(60), "share": np.float32(0.5), "ok": np.bool_(True), "nan": np.float32("nan"),
            "loss": torch.tensor(0.25), "list": [np.uint8(3)]}
    text = atomic.write_json_atomic(tmp_path / "s.json", data).read_text()
    assert json.loads(text) == {"images": 60, "share": 0.5, "ok": True, "nan": None, "loss": 0.25, "list": [3]}


def test_a_folder_that_turns_read_only_mid_run_is_the_runs_failure_not_a_usage_error(tmp_path):
    # A run writes its folder again and again (checkpoints, metrics.csv, summary.json): once the disk turns
    # read-only, the write fails as the disk's failure (exit 5, the errno named), not "choose another folder".
    from testkit import mount_tmpfs, remount_tmpfs

    with mount_tmpfs(tmp_path / "disk") as disk:
        atomic.write_json_atomic(disk / "run" / "summary.json", {"epoch": 1})
        remount_tmpfs(disk, "ro")
        with pytest.raises(RuntimeFailure, match=r"cannot write .*summary.json: Read-only file system") as error:
            atomic.write_json_atomic(disk / "run" / "summary.json", {"epoch": 2})
        assert error.value.exit_code == 5 and error.value.stopped == "unwritable"
        assert json.loads((disk / "run" / "summary.json").read_text()) == {"epoch": 1}


def test_files_other_threads_make_meanwhile_keep_the_umask(tmp_path, monkeypatch):
    """atomic_path read the umask by setting it to 0 for a moment: a file another thread made just then (a
    server saving results from two threads, one Segmenter each) was world-writable, and two threads reading
    it at once could leave the process's umask at 0 for good."""
    made = []

    def another_thread_makes_a_file():
        path = tmp_path / f"other{len(made)}.txt"
        thread = threading.Thread(target=path.write_text, args=("x",))
        thread.start()
        thread.join()
        made.append(path)

    real_umask = os.umask

    def umask_then_another_thread(mask):
        previous = real_umask(mask)
        another_thread_makes_a_file()  # the other thread runs right after each change of the umask
        return previous

    monkeypatch.setattr(atomic.os, "umask", umask_then_another_thread)
    previous = real_umask(0o022)
    try:
        with atomic.atomic_path(tmp_path / "result.png") as tmp:
            another_thread_makes_a_file()
            tmp.write_bytes(b"png")
    finally:
        real_umask(previous)
    assert made and {oct(stat.S_IMODE(p.stat().st_mode)) for p in [*made, tmp_path / "result.png"]} == {"0o644"}


def test_a_folder_this_user_cannot_write_into_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic.os, "access", lambda *_args: False)  # root writes anywhere: a read-only mount's answer
    with pytest.raises(atomic.DronsegError, match=f"^output folder {tmp_path} is not writable; choose another"):
        atomic.ensure_writable_dir(tmp_path)
