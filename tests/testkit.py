"""Helpers shared by the tests (import as ``from testkit import ...``; conftest modules are not importable
reliably under pytest's prepend import mode, several folders have one)."""

from __future__ import annotations

import csv
import functools
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dronseg_edge.checkpoint import model_state, save_checkpoint
from dronseg_edge.metadata import ModelInfo
from dronseg_edge.models import build_model
from dronseg_edge.runtime.base import Backend

TINY_ARCH = "lraspp_mobilenet_v3_large"
TINY_SIZE = (96, 64)  # (width, height): small enough for 2 CPU cores, still divisible by 32

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch)")


@functools.lru_cache(maxsize=None)
def ort_cuda_works() -> bool:
    """Whether onnxruntime really runs a session on its CUDA provider here.

    onnxruntime-gpu lists CUDAExecutionProvider even when its CUDA libraries cannot be loaded (it
    then runs the session on the CPU), so the provider list alone says nothing: this builds a
    one-node model and checks which providers its session really got.
    """
    try:
        import onnxruntime
        from onnx import TensorProto, helper
    except ImportError:
        return False
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return False
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 8)  # loadable by older onnxruntime builds too
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # the failure is the answer, not worth a log line
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), sess_options=options,
                                               providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    except Exception:
        return False
    return "CUDAExecutionProvider" in session.get_providers()


requires_ort_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and ort_cuda_works()),
    reason="needs a CUDA GPU and onnxruntime-gpu whose CUDAExecutionProvider really starts a session",
)


def make_checkpoint(path: Path, arch: str = TINY_ARCH, size: tuple[int, int] = TINY_SIZE, seed: int = 0) -> Path:
    """A randomly initialised model with *calibrated* BatchNorm statistics, saved as a checkpoint.

    Random BN statistics make logits explode (docs/facts.md#h100-baseline); a few forward passes in train
    mode give them sane values so fp16/int8 comparisons mean something.
    """
    torch.manual_seed(seed)
    model = build_model(arch, weights="none")
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(2, 3, size[1], size[0]))
    model.eval()
    return save_checkpoint(path, model_state(model, arch, size))


def break_onnx_classifier(source: Path, dest: Path | None = None) -> Path:
    """Negate the final classifier weights of an exported LR-ASPP graph: a broken artifact that parity must fail."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(source))
    for tensor in graph.graph.initializer:
        if "high_classifier.weight" in tensor.name:
            tensor.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(tensor), tensor.name))
    dest = Path(dest or source)
    onnx.save(graph, str(dest))
    return dest


def sabotage_onnx_export(monkeypatch) -> None:
    """Make every later export write a broken graph (see ``break_onnx_classifier``)."""
    import dronseg_edge.export.artifact as artifact

    original = artifact._write_onnx

    def broken(model, dest, *args, **kwargs):
        notes = original(model, dest, *args, **kwargs)
        break_onnx_classifier(dest)
        return notes

    monkeypatch.setattr(artifact, "_write_onnx", broken)


# The suite's one trained model (the fixtures ``scenes``, ``trained_run`` and ``trained_checkpoint`` of
# tests/conftest.py). Random weights give near-tied logits, so any rounding flips argmax pixels and
# fp16/int8 parity or backend agreement would say nothing (docs/facts.md#h100-baseline).

# class -> base RGB colour of the flat scenes' surfaces
SCENE_COLOURS = {0: (120, 100, 80), 1: (230, 190, 160), 3: (200, 30, 30), 9: (40, 140, 40), 10: (90, 90, 95),
                 11: (110, 170, 235)}


def render_scene(rng: np.random.Generator, size: tuple[int, int] = TINY_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One flat drone-like scene: (RGB image (H, W, 3) uint8, class mask (H, W) uint8) with sky, ground,
    road, cars and people, flat enough for the tiny model to learn well, so its logits are decisive."""
    width, height = size
    mask = np.zeros((height, width), np.uint8)
    horizon = int(rng.integers(height // 6, height // 3))
    mask[:horizon] = 11
    mask[horizon:] = 9
    road_x = int(rng.integers(0, width - 30))
    road_w = int(rng.integers(18, 30))
    mask[horizon:, road_x:road_x + road_w] = 10
    mask[horizon + int(rng.integers(4, 12)):, :int(rng.integers(5, 20))] = 0  # bare ground patch
    for _ in range(int(rng.integers(1, 3))):
        y = int(rng.integers(horizon + 2, height - 10))
        x = int(rng.integers(road_x, max(road_x + 1, road_x + road_w - 10)))
        mask[y:y + 8, x:x + 10] = 3
    for _ in range(int(rng.integers(1, 3))):
        y = int(rng.integers(horizon + 2, height - 8))
        x = int(rng.integers(0, width - 4))
        mask[y:y + 7, x:x + 3] = 1
    image = np.zeros((height, width, 3), np.float32)
    for cls, colour in SCENE_COLOURS.items():
        image[mask == cls] = colour
    image += rng.normal(0, 12, image.shape)
    image = cv2.GaussianBlur(image, (3, 3), 0)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def scene(index: int, size: tuple[int, int]) -> np.ndarray:
    """A (H, W, 3) uint8 BGR frame: gradient sky, a moving box and a road stripe, so frames differ
    (the pipeline tests' video is made of these)."""
    width, height = size
    frame = np.zeros((height, width, 3), np.uint8)
    frame[..., 0] = np.linspace(40, 220, width, dtype=np.uint8)[None, :]
    frame[..., 1] = np.linspace(30, 180, height, dtype=np.uint8)[:, None]
    x = (index * 3) % max(width - width // 4, 1)
    cv2.rectangle(frame, (x, height // 4), (x + width // 4, height // 2), (20, 40, 230), -1)
    cv2.rectangle(frame, (0, height - height // 5), (width - 1, height - 1), (90, 90, 90), -1)
    return frame


def scene_mask(index: int, size: tuple[int, int]) -> np.ndarray:
    """The (H, W) uint8 classes of :func:`scene`: sky (11) above, a car (3) box, road (10) below."""
    width, height = size
    mask = np.full((height, width), 11, np.uint8)
    x = (index * 3) % max(width - width // 4, 1)
    cv2.rectangle(mask, (x, height // 4), (x + width // 4, height // 2), 3, -1)
    cv2.rectangle(mask, (0, height - height // 5), (width - 1, height - 1), 10, -1)
    return mask


def write_scenes(root: Path, count: int = 40, frames: int = 8, seed: int = 0, size: tuple[int, int] = TINY_SIZE) -> list[str]:
    """``count`` images in the Kaggle layout (imgs/imgs/*.jpg, masks/masks/*.png, train.csv); returns their IDs.

    The first ``count - frames`` are flat scenes (``render_scene``), the last ``frames`` the pipeline
    tests' frames (``scene``, box positions spread over the width), so one model serves both.
    """
    rng = np.random.default_rng(seed)
    (root / "imgs/imgs").mkdir(parents=True, exist_ok=True)
    (root / "masks/masks").mkdir(parents=True, exist_ok=True)
    ids = [f"scene_{index:03d}" for index in range(count)]
    for index, image_id in enumerate(ids):
        if index < count - frames:
            rgb, mask = render_scene(rng, size)
            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        else:
            frame_index = 11 * (index - (count - frames)) + 3
            bgr, mask = scene(frame_index, size), scene_mask(frame_index, size)
        cv2.imwrite(str(root / "imgs/imgs" / f"{image_id}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(root / "masks/masks" / f"{image_id}.png"), mask)
    with open(root / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageID"])
        writer.writerows([i] for i in ids)
    return ids


def train_tiny_run(root: Path, out: Path, epochs: int = 10):
    """Train the tiny LR-ASPP with the package's own loop (dronseg_edge.train.fit) on ``root``; returns the FitResult.

    The whole network is trained (not only the head): a random backbone amplifies rounding far more
    than a trained one, which made int8 parity meaningless (about 97 % agreement with a trained head
    on a random backbone, 99.6 % when everything is trained). The run folder holds the ``config`` and
    ``split`` a training run writes, so the default data paths of eval and export are exercised too.
    """
    from dronseg_edge.data.augment import AugmentConfig
    from dronseg_edge.train.config import TrainConfig
    from dronseg_edge.train.fit import fit

    cfg = TrainConfig(data=str(root), out=str(out), model=TINY_ARCH, weights="none", size=TINY_SIZE, epochs=epochs,
                      batch=4, lr=0.005, optimizer="adamw", bn_momentum=0.1, device="cpu", workers=0, seed=0,
                      tensorboard=False, plots=False, augment=AugmentConfig(enabled=False))
    return fit(cfg, log=lambda _m: None)


class FakeBackend(Backend):
    """The one test backend: an artifact with the given metadata whose output is ``respond(batch)``.

    ``info`` fields default to a dynamic 8x6 logits model of 12 classes (any ModelInfo field may be
    given, e.g. ``head="argmax", batch=2, dynamic=False``); ``respond`` defaults to zero logits (or
    an all-zero class map for the argmax head). It records the batch shapes it ran (``batches``,
    ``calls``), metadata reads and activations; ``delay_s`` sleeps per call (timing tests);
    ``static_buffer`` keeps one input buffer made on the first call, as the CUDA-graph paths do.
    """

    name = "fake"

    def __init__(self, path: str | Path = "fake.onnx", device: str | torch.device = "cpu", *, respond=None,
                 delay_s: float = 0.0, static_buffer: bool = False, provider: str = "fake provider", **info):
        self.fields = {"arch": "fake", "input_size": (8, 6), "batch": None, "dynamic": True, **info}
        self.respond, self.delay_s, self.static_buffer, self.provider_name = respond, delay_s, static_buffer, provider
        self.batches: list[tuple] = []
        self.reads = self.activations = 0
        self.static: torch.Tensor | None = None
        super().__init__(Path(path), torch.device(device))

    @property
    def calls(self) -> int:
        return len(self.batches)

    def read_info(self) -> ModelInfo:
        self.reads += 1
        return ModelInfo(**self.fields)

    def activate(self) -> None:
        self.activations += 1
        self.provider = self.provider_name

    def _infer(self, batch):
        """Like every backend: numpy in, numpy out (the Segmenter's host work); torch in, torch out."""
        if isinstance(batch, np.ndarray):
            with torch.inference_mode():
                return self._infer(torch.from_numpy(batch)).cpu().numpy()
        if self.static_buffer:
            if self.static is None:
                self.static = torch.empty_like(batch)
            self.static.copy_(batch)
            batch = self.static
        self.batches.append(tuple(batch.shape))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.respond is not None:
            return self.respond(batch)
        n, _, h, w = batch.shape
        if self.info.head == "argmax":
            return torch.zeros(n, h, w, dtype=torch.int64, device=batch.device)
        return torch.zeros(n, self.info.num_classes, h, w, device=batch.device)


def mount_tmpfs(folder: Path, size: str = "3m", read_only: bool = False):
    """A real small file system at ``folder`` (tmpfs of ``size``, optionally read-only), for fault tests:
    a context manager that unmounts it afterwards. Skips the test where mounting is not allowed (not
    root, or a container without CAP_SYS_ADMIN). ``remount_tmpfs`` changes it (a user freeing space)."""
    import contextlib
    import subprocess

    @contextlib.contextmanager
    def mounted():
        folder.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                                  capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"cannot mount a tmpfs here ({exc}): run as root with CAP_SYS_ADMIN")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({(done.stderr.strip() or 'mount failed')[:160]}): "
                        "run as root with CAP_SYS_ADMIN")
        try:
            yield folder
        finally:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)

    return mounted()


def remount_tmpfs(folder: Path, options: str) -> None:
    """Change the tmpfs of ``mount_tmpfs`` at ``folder``: ``size=64m`` (space freed), ``ro`` or ``rw``."""
    import subprocess

    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True, capture_output=True, timeout=30)


def run_cli(capsys, *args) -> tuple[int, str]:
    """``dronseg-edge ARGS`` in this process: (exit code, what it wrote to stderr)."""
    from dronseg_edge.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


# What pip prints when the package registry cannot be reached (then a test that needs it skips, not fails).
REGISTRY_DOWN = ("Failed to establish a new connection", "Temporary failure in name resolution", "Max retries exceeded",
                 "Network is unreachable", "(from versions: none)", "Could not fetch URL")


def side_venv(root: Path, requirements: list[str]) -> Path:
    """The python of a fresh venv at ``root`` holding ``requirements``, resolved from the package registry.

    No pip of its own: this venv's pip installs into it with ``--python`` (as tests/test_install_sets.py does),
    without .pyc compiling. Skips the calling test when the registry is unreachable; fails on any other error.
    """
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert made.returncode == 0, made.stderr[-2000:]
    python = root / "bin" / "python"
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-compile",
                           "--disable-pip-version-check", *requirements], capture_output=True, text=True, timeout=900,
                          env=env)
    if done.returncode != 0 and any(marker in done.stderr for marker in REGISTRY_DOWN):
        pytest.skip(f"the package registry is unreachable: {done.stderr.strip().splitlines()[-1][:200]}")
    assert done.returncode == 0, f"pip could not install {requirements}:\n{done.stderr[-3000:]}"
    return python
