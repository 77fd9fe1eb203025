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


def onnx_model(graph, **opsets: int):
    """``graph`` as a model at IR version 8, as ``dronseg-edge export`` writes them (onnx's own default is its
    newest IR version, which the ONNX Runtime builds on Jetsons refuse); ``opsets``: domain -> version
    beside opset 17 of the default domain (``**{"com.example": 1}``)."""
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, version)
                                                    for domain, version in {"": 17, **opsets}.items()])
    model.ir_version = 8
    return model


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
    model = onnx_model(graph)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # the failure is the answer, not worth a log line
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), sess_options=options,
                                               providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    except Exception:
        return False
    return "CUDAExecutionProvider" in session.get_providers()


@functools.lru_cache(maxsize=None)
def tensorrt_unusable() -> str | None:
    """Why TensorRT cannot be used here (None when it can): ``import tensorrt`` must work and a builder be made.

    Looking for the module (``find_spec``) is not enough: the bindings are found where their libraries
    are missing (the import fails), and import where TensorRT cannot use the GPU or driver (the builder
    fails); each says which in the skip reason.
    """
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or OSError for bindings without libnvinfer
        return f"TensorRT (`import tensorrt` fails: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]})"
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as exc:  # pybind11 raises when createInferBuilder returns null (no usable GPU or driver)
        return (f"a TensorRT builder (tensorrt {getattr(trt, '__version__', '?')} imports, but trt.Builder fails: "
                f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]})")
    if builder is None:
        return f"a TensorRT builder (tensorrt {getattr(trt, '__version__', '?')} imports, but trt.Builder gave none)"
    return None


def requires_tensorrt(*, cuda_bindings: bool = False):
    """Skip unless TensorRT builds here (tensorrt_unusable), a GPU is visible to torch and, when asked,
    cuda-bindings is installed (the engine runner's CUDA binding); the reason names each thing missing."""
    import importlib.util

    missing = [why for why in (tensorrt_unusable(),) if why]
    if cuda_bindings and (importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None):
        missing.append("cuda-bindings")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (none visible to torch)")
    return pytest.mark.skipif(bool(missing), reason="needs " + " and ".join(missing))


requires_ort_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and ort_cuda_works()),
    reason="needs a CUDA GPU and onnxruntime-gpu whose CUDAExecutionProvider really starts a session",
)


def model_input(frames, info: ModelInfo, device="cpu") -> torch.Tensor:
    """uint8 BGR frames ((H, W, 3) or (N, H, W, 3)) -> the model's normalised float32 (N, 3, h, w) input on
    ``device``, made by the one host pre-processing (runtime/host.preprocess_host)."""
    from dronseg_edge.runtime.host import preprocess_host

    frames = [frames] if np.asarray(frames).ndim == 3 else list(frames)
    return torch.from_numpy(preprocess_host(frames, info)).to(torch.device(str(device)))


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


# Comparing class maps from two paths. A model trained on the CPU differs in the last bits between processors
# (Intel vs AMD), and a weakly trained one has many near-ties at region borders, so a fixed share of agreeing
# pixels is not a property of the code. What is: every pixel whose reference top-2 logit margin exceeds what
# the difference between the two paths can move a logit by has the same class in both maps.
SAME_PREPOST_MARGIN = 0.01  # fp32 vs fp32 on the same inputs (torch vs ONNX Runtime, batched vs single): ~1e-5 apart
# INTER_AREA vs torch's antialiased bilinear shrink moved the trained fixture's logits by up to 0.83 (p99 0.57)
# on a 2-core AMD EPYC (2026-12-06), and the maps differed only where the margin was below 0.32.
OTHER_FILTER_MARGIN = 1.0


def top2_margin(logits) -> np.ndarray:
    """(C, H, W) logits (numpy or torch) -> (H, W) float32 gap between the largest and the second-largest."""
    logits = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    top2 = np.partition(logits.astype(np.float32), -2, axis=0)[-2:]
    return top2[1] - top2[0]


def assert_same_classes_where_decided(got: np.ndarray, expected: np.ndarray, logits, margin: float,
                                      min_decided: float = 0.7) -> None:
    """``got`` and ``expected`` (H, W) class maps agree on every pixel whose class the reference ``logits``
    (C, h, w) decide: a top-2 margin above ``margin``, and, when the maps were resized from (h, w), the same
    decided class on the whole 3x3 source neighbourhood (torch's nearest-exact and OpenCV's
    INTER_NEAREST_EXACT may pick a neighbouring source pixel at a boundary).

    The rest are near-ties that either path may break its own way; their share is bounded by requiring at
    least ``min_decided`` of the pixels to be compared (a model with no decided pixels proves nothing).
    """
    assert got.shape == expected.shape, (got.shape, expected.shape)
    gap = top2_margin(logits)
    decided = (gap > margin).astype(np.uint8)
    if gap.shape != got.shape:
        classes = np.asarray(logits.argmax(0) if isinstance(logits, np.ndarray) else logits.argmax(0).cpu().numpy(),
                             np.uint8)
        kernel = np.ones((3, 3), np.uint8)
        uniform = cv2.dilate(classes, kernel) == cv2.erode(classes, kernel)
        decided = cv2.erode(decided, kernel, borderType=cv2.BORDER_REPLICATE) & uniform
        decided = cv2.resize(decided.astype(np.uint8), (got.shape[1], got.shape[0]),
                             interpolation=cv2.INTER_NEAREST_EXACT)
    decided = decided.astype(bool)
    assert decided.mean() >= min_decided, f"only {decided.mean():.1%} of the pixels are decided (margin {margin})"
    wrong = decided & (got != expected)
    assert not wrong.any(), (f"{int(wrong.sum())} decided pixels differ (margin above {margin}; "
                             f"agreement {(got == expected).mean():.4f})")


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
    The initial weights are validated too (metrics.csv row 0; validation changes no weight), so the run
    also shows that training raises the validation scores (tests/train/test_fit.py).
    """
    from dronseg_edge.data.augment import AugmentConfig
    from dronseg_edge.train.config import TrainConfig
    from dronseg_edge.train.fit import fit

    cfg = TrainConfig(data=str(root), out=str(out), model=TINY_ARCH, weights="none", size=TINY_SIZE, epochs=epochs,
                      batch=4, lr=0.005, optimizer="adamw", bn_momentum=0.1, device="cpu", workers=0, seed=0,
                      tensorboard=False, plots=False, augment=AugmentConfig(enabled=False), val_at_start=True)
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
    native = "torch"  # its ``respond`` functions take torch tensors; numpy is converted at the edge

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


def write_png_bomb(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A valid one-bit greyscale PNG of zeros: 30000x30000 is 109 KB on disk and 2.7 GB once decoded
    to BGR, the decompression bomb of issue 19. Written row by row through zlib, so making it takes
    no more memory than one row."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte "none", then the row's bits
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return Path(path)


# What pip prints when the package registry cannot be reached (then a test that needs it skips, not fails).
REGISTRY_DOWN = ("Failed to establish a new connection", "Temporary failure in name resolution", "Max retries exceeded",
                 "Network is unreachable", "(from versions: none)", "Could not fetch URL")


def side_env() -> dict:
    """This process's environment without what would make another python import this one's packages."""
    import os

    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def side_venv(root: Path, requirements: list[str]) -> Path:
    """The python of a fresh venv at ``root`` holding ``requirements``, resolved from the package registry.

    No pip of its own: this venv's pip installs into it with ``--python`` (as tests/test_install_sets.py does),
    without .pyc compiling. Skips the calling test when the registry is unreachable; fails on any other error.
    """
    import subprocess
    import sys

    env = side_env()
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


class FakeGStreamerWriter:
    """cv2.VideoWriter with a GStreamer backend that has the elements of ``elements`` only."""

    elements: tuple[str, ...] = ()
    made: list = []

    def __init__(self, pipeline, api, fourcc, fps, size, color=True):
        self.pipeline, self.size, self.frames = pipeline, size, []
        FakeGStreamerWriter.made.append(self)

    def isOpened(self):  # noqa: N802 (OpenCV's name)
        return any(f" {name} " in f" {self.pipeline} " for name in self.elements)

    def write(self, frame):
        self.frames.append(frame.shape)

    def release(self):
        """As GStreamer's filesink would: the file is there once the writer is released."""
        import re

        location = re.search(r'filesink location="([^"]+)"', self.pipeline)
        if location and self.frames:
            Path(location.group(1)).write_bytes(b"\0" * 64)


@pytest.fixture
def fake_jetson(monkeypatch, tmp_path):
    """A Jetson (L4T's release file) whose OpenCV opens GStreamer pipelines through FakeGStreamerWriter."""
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3\n")
    from dronseg_edge import gst_encoders, machine

    monkeypatch.setattr(machine, "TEGRA_RELEASE", release)
    monkeypatch.setattr("cv2.VideoWriter", FakeGStreamerWriter)
    FakeGStreamerWriter.made = []
    gst_encoders.encoder_opens.cache_clear()
    yield FakeGStreamerWriter
    gst_encoders.encoder_opens.cache_clear()
