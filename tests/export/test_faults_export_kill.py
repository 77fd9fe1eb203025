"""``export`` killed at several points (SIGTERM during the parity check, SIGKILL while the ONNX graph is
written): the good file of the same name stays as it was, and the next export into the folder removes
the hidden working files the killed ones left (and only those: other programs' hidden files stay), then succeeds."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dronseg_edge.export import export_artifact
from dronseg_edge.metadata import read_onnx_info

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow


def _ours(folder):
    """The hidden names in ``folder`` that this package made (they carry its tag)."""
    return sorted(name for name in os.listdir(folder) if name.startswith(".") and "dronseg-" in name)


def _kill_when(args, condition, sig, log, timeout: float = 240.0) -> int:
    """Run ``dronseg-edge export ARGS``, send it ``sig`` as soon as ``condition()`` holds; its exit status."""
    with open(log, "w") as handle:  # a file: an unread pipe could block the export
        proc = subprocess.Popen([sys.executable, "-m", "dronseg_edge", "export", *map(str, args)],
                                stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not condition():
            assert proc.poll() is None, f"export ended (code {proc.returncode}) before the kill point:\n{log.read_text()}"
            assert time.monotonic() < deadline, "the kill point was not reached"
            time.sleep(0.002)
        proc.send_signal(sig)
        return proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()


def test_killed_exports_leave_the_good_file_and_the_next_export_cleans_up(tiny_checkpoint, onnx_export, tmp_path):
    out = tmp_path / "out"
    final = out / "tiny_fp32.onnx"
    out.mkdir()
    first = Path(shutil.copy2(onnx_export(tiny_checkpoint), out))  # the good file: an earlier export of this checkpoint
    foreign = [".export-projectx", ".settings.json.abcd1234.tmp", ".tiny_fp32.pending.onnx"]  # another program's
    for name in foreign:
        (out / name).write_text("keep")
    assert first == final
    good = final.read_bytes()
    args = [tiny_checkpoint, "--out", out, "--device", "cpu", "--parity-images", 1]

    # 1. SIGTERM (systemd, docker stop) while the parity check runs on the new file, still under its pending name.
    def pending():
        return [n for n in _ours(out) if n.startswith(".tiny_fp32.dronseg-") and n.endswith(".pending.onnx")]

    code = _kill_when(args, pending, signal.SIGTERM, tmp_path / "1.log")
    assert code == 130  # stops like Ctrl-C (cli/main.py): temporary files removed, exit 130
    assert final.read_bytes() == good  # a checked file is renamed into place, an unchecked one never

    # 2. SIGKILL while torch.onnx.export writes into its hidden .export.dronseg-* working folder. This export's
    #    claim removed what export 1 may have left (its pending file) when it started.
    _kill_when(args, lambda: any(n.startswith(".export.dronseg-") for n in _ours(out)), signal.SIGKILL, tmp_path / "2.log")
    working = [n for n in _ours(out) if not n.startswith(".dronseg-lock-")]
    assert len(working) == 1 and working[0].startswith(".export.dronseg-"), working
    assert any(n.startswith(".dronseg-lock-") for n in _ours(out))  # the dead export's claim
    assert final.read_bytes() == good

    # 3. The next export removes export 2's leftovers, says so, and writes a new file.
    result = export_artifact(tiny_checkpoint, out_dir=out, parity=False, device="cpu")
    assert result.path == final and _ours(out) == []  # dead claims' lock files included
    assert [(out / name).read_text() for name in foreign] == ["keep"] * len(foreign)
    assert result.notes[0] == f"removed 1 leftover of an interrupted export in {out}: {working[0]}"
    assert read_onnx_info(final).precision == "fp32"
