"""Running an exported ONNX file imports nothing it does not need.

The deployable path runs on a Jetson next to a camera, where every import costs seconds and shared
CPU/GPU memory: no torchvision (models), onnx/onnxslim (export), training, plotting or logging
libraries, and no torch: ONNX Runtime takes and returns numpy, and the Segmenter's host work
(runtime/host.py) pre- and post-processes with OpenCV. Each case runs in a fresh interpreter,
since this test process has imported everything; the `infer` case runs the whole command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "torchvision", "onnx", "onnxslim", "dronseg_edge.train", "dronseg_edge.export", "dronseg_edge.data",
             "matplotlib", "tensorboard")
# The CLI builds every command's --help from the option dataclasses (option_fields.py): their modules, and the
# packages above them, import nothing heavy (torch and the rest above stay forbidden).
CLI_OPTIONS = ("dronseg_edge.train", "dronseg_edge.train.config", "dronseg_edge.data", "dronseg_edge.data.augment",
               "dronseg_edge.export", "dronseg_edge.export.options")

CASES = {
    "backend": """
from dronseg_edge.runtime.registry import load_backend
import numpy as np
backend = load_backend(MODEL, device="cpu")
with backend:
    out = backend.infer(np.zeros((1, 3, 64, 96), np.float32))
assert tuple(out.shape) == (1, 12, 64, 96) and isinstance(out, np.ndarray), out.shape
""",
    "segmenter": """
from dronseg_edge import Segmenter
import numpy as np
with Segmenter(MODEL, device="cpu") as segmenter:
    result = segmenter.predict(np.zeros((64, 96, 3), np.uint8))
assert result.mask.shape == (64, 96), result.mask.shape
""",
    "infer": """
import cv2, numpy as np, os, tempfile
from dronseg_edge.cli import main
folder = tempfile.mkdtemp()
video = os.path.join(folder, "clip.avi")
writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
for i in range(3):
    writer.write(np.full((64, 96, 3), 40 * i, np.uint8))
writer.release()
try:
    main(["infer", MODEL, video, "--out", os.path.join(folder, "out"), "--device", "cpu", "--no-progress",
          "--save-masks", "--codec", "mp4v"])
except SystemExit as exc:
    assert exc.code == 0, exc.code
assert len(os.listdir(os.path.join(folder, "out", "masks"))) == 3
""",
}

REPORT = """
import json, sys
loaded = [m for m in sys.modules if any(m == name or m.startswith(name + ".") for name in FORBIDDEN)]
print(json.dumps(sorted(loaded)))
"""


@pytest.fixture(scope="module")
def onnx_file(tiny_checkpoint, onnx_export) -> Path:
    return onnx_export(tiny_checkpoint)


@pytest.mark.parametrize("case", sorted(CASES))
def test_running_an_onnx_file_imports_no_export_or_training_code(onnx_file, case):
    script = f"MODEL = {str(onnx_file)!r}\nFORBIDDEN = {FORBIDDEN!r}\n" + CASES[case] + REPORT
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    loaded = [name for name in loaded if case != "infer" or name not in CLI_OPTIONS]
    assert loaded == [], f"{case}: {loaded} imported (find who with `python -X importtime`)"
