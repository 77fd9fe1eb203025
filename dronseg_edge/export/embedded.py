"""Self-contained ONNX graphs (``export --io frames``): uint8 BGR frames in, the uint8 class map out.

``FramesToClassMap`` wraps the model with the package's own pre- and post-processing, so any
runner (plain ONNX Runtime, TensorRT, a C++ program) gets a segmentation from ``cv2.imread``'s
array without knowing the mean/std, colour order or sizes:

    (N, H, W, 3) uint8 BGR ─NCHW, BGR->RGB─▶ resize (bilinear, antialiased) to the model input
      ─/255, mean/std─▶ model ─▶ logits ─bilinear to H x W─▶ argmax ─▶ (N, H, W) uint8 class map
                                                   └──▶ softmax max x 255 ─▶ (N, H, W) uint8 confidence

Resizing is antialiased because training shrank its images with cv2.INTER_AREA (data/dataset.py):
plain bilinear sampling of a frame 4-10x larger than the model input aliases fine texture that the
model never saw. torch's ``antialias=True`` becomes ONNX ``Resize(antialias=1)``, which exists from
opset 18; torch's TorchScript exporter has no translation for it, so ``_aa_resize_symbolic`` adds
one for the export's duration. ONNX Runtime's antialiased Resize equals torch's inside the image
and differs by a few grey levels on the outermost pixel rows/columns (border handling).
When enlarging, the antialiased filter is plain bilinear, so one graph serves every frame size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from dronseg_edge.atomic import ensure_writable_dir
from dronseg_edge.errors import DronsegError
from dronseg_edge.export import onnx as onnx_export
from dronseg_edge.export.options import FRAMES_MIN_OPSET
from dronseg_edge.leftovers import working_prefix
from dronseg_edge.metadata import ModelInfo

FRAMES_INPUT = "frames"
MASK_OUTPUT = "mask"
CONFIDENCE_OUTPUT = "confidence"
COLOR_ORDER = "BGR"  # what cv2.imread / VideoCapture give: no conversion on the caller's side


def frames_info(info: ModelInfo, source_size: tuple[int, int] | None, confidence: bool) -> ModelInfo:
    """``info`` of a tensors export turned into the metadata of its frames graph (head, io, sizes, outputs)."""
    outputs = [MASK_OUTPUT] + ([CONFIDENCE_OUTPUT] if confidence else [])
    source = None if info.dynamic else tuple(source_size or info.input_size)
    return dataclasses.replace(info, head="argmax", layout="NHWC", io="frames", source_size=source,
                               color_order=COLOR_ORDER, outputs=outputs, extra=dict(info.extra))


def frame_at(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """A BGR frame at ``size`` (W, H; None keeps it): the frames a fixed-size graph is fed in parity and
    calibration, resized as training resized images (area when shrinking, else bilinear)."""
    if size is None or (frame.shape[1], frame.shape[0]) == tuple(size):
        return frame
    shrink = size[0] * size[1] < frame.shape[0] * frame.shape[1]
    return cv2.resize(frame, tuple(size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class FramesToClassMap(nn.Module):
    """(N, H, W, 3) uint8 BGR frames -> (N, H, W) uint8 class map [, (N, H, W) uint8 confidence x 255].

    ``info``: the model's metadata (``input_size`` the model's input, ``mean``/``std`` of RGB in 0..1).
    """

    def __init__(self, model: nn.Module, info: ModelInfo, confidence: bool = False):
        super().__init__()
        self.model = model.eval()
        self.input_hw = (int(info.input_size[1]), int(info.input_size[0]))
        self.confidence = confidence
        mean = torch.tensor(info.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(info.std, dtype=torch.float32).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one multiply-add on 0..255 values.
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)

    def forward(self, frames: torch.Tensor):
        height, width = frames.shape[1], frames.shape[2]
        x = frames.permute(0, 3, 1, 2).flip(1).float()  # NHWC BGR -> NCHW RGB
        x = F.interpolate(x, size=self.input_hw, mode="bilinear", align_corners=False, antialias=True)
        logits = self.model(x * self.scale + self.shift)["out"]
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        mask = logits.argmax(dim=1).to(torch.uint8)
        if not self.confidence:
            return mask
        top = torch.softmax(logits, dim=1).max(dim=1).values
        return mask, (top * 255.0).round().clamp(0, 255).to(torch.uint8)


def _aa_resize_symbolic(g, x, output_size, align_corners, scale_factors):
    """aten::_upsample_bilinear2d_aa -> ONNX Resize(linear, half_pixel, antialias=1) to a constant size."""
    from torch.onnx import symbolic_helper

    size = symbolic_helper._maybe_get_const(output_size, "is")
    if symbolic_helper._is_value(size):
        raise DronsegError("an antialiased resize to a computed size cannot be exported: resize to a fixed size")
    zero_two = (g.op("Constant", value_t=torch.tensor([0])), g.op("Constant", value_t=torch.tensor([2])))
    batch_channels = g.op("Slice", g.op("Shape", x), *zero_two)
    sizes = g.op("Concat", batch_channels, g.op("Constant", value_t=torch.tensor(list(size), dtype=torch.int64)), axis_i=0)
    # roi and scales absent (empty input names), not empty constants: the fp16 converter turns an
    # empty float constant into a Cast, and the checker then sees both scales and sizes.
    absent = symbolic_helper._optional_input_placeholder_tensor(g)
    return g.op("Resize", x, absent, absent, sizes, mode_s="linear", antialias_i=1,
                coordinate_transformation_mode_s="half_pixel")


@contextlib.contextmanager
def _aa_symbolic(opset: int):
    name = "aten::_upsample_bilinear2d_aa"
    torch.onnx.register_custom_op_symbolic(name, _aa_resize_symbolic, opset)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            torch.onnx.unregister_custom_op_symbolic(name, opset)


def export_frames_onnx(model: nn.Module, path: Path, info: ModelInfo, *, opset: int | None = None) -> Path:
    """Write ``FramesToClassMap(model)`` to ``path``; ``info`` is a ``frames_info`` (its outputs decide confidence).

    TorchScript exporter at opset ``max(18, opset)``: the antialiased Resize needs 18 (module docstring).
    """
    path = Path(path)
    exporter = onnx_export.choose_exporter()
    if exporter != "torchscript":
        raise DronsegError(f"--io frames needs torch's TorchScript ONNX exporter, which torch {torch.__version__} "
                           "no longer has: export --io tensors, or use torch <= 2.15")
    opset = onnx_export.check_opset(opset if opset is not None else FRAMES_MIN_OPSET, exporter)
    if opset < FRAMES_MIN_OPSET:
        raise DronsegError(f"--opset {opset} with --io frames: antialiased Resize needs opset >= {FRAMES_MIN_OPSET}")
    net = FramesToClassMap(model, info, confidence=CONFIDENCE_OUTPUT in info.outputs).eval()
    width, height = info.source_size or info.input_size
    example = torch.zeros(info.batch or 1, height, width, 3, dtype=torch.uint8)
    axes = None
    if info.dynamic:
        axes = {name: {0: "batch", 1: "height", 2: "width"} for name in [FRAMES_INPUT, *info.outputs]}
    kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    ensure_writable_dir(path.parent)
    with tempfile.TemporaryDirectory(prefix=working_prefix("export"), dir=path.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings(), _aa_symbolic(opset), torch.no_grad():
            # torch >= 2.9 warns on every TorchScript export; the choice is deliberate (export/onnx.py).
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            torch.onnx.export(net, (example,), str(raw), input_names=[FRAMES_INPUT], output_names=list(info.outputs),
                              opset_version=opset, dynamic_axes=axes, do_constant_folding=True,
                              training=torch.onnx.TrainingMode.EVAL, **kwargs)
        graph = onnx.load(str(raw))
    graph = onnx_export.finish_graph(graph, info)
    info.extra.update({"exporter": onnx_export.exporter_versions(exporter), "opset": opset, "input_name": FRAMES_INPUT,
                       "output_name": MASK_OUTPUT, "pre_post": "in graph: BGR uint8 NHWC -> antialiased bilinear resize "
                       "-> mean/std -> model -> bilinear logits -> argmax uint8"})
    onnx_export.save_onnx(graph, path, info)
    return path


def verify_frames_dynamic(path: Path, model: nn.Module, info: ModelInfo) -> str:
    """Run a dynamic frames graph at another batch and frame size than traced and compare with PyTorch."""
    try:
        import onnxruntime
    except ImportError:
        return "dynamic shapes not verified (onnxruntime missing)"
    width, height = info.input_size
    probe_w, probe_h = width * 2 + 6, height * 2 + 10  # odd sizes: a frozen shape cannot pass by chance
    generator = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, probe_h, probe_w, 3), dtype=torch.uint8, generator=generator)
    net = FramesToClassMap(model, info, confidence=False).eval()
    with torch.no_grad():
        expected = net(frames)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = f"2x{probe_h}x{probe_w}x3"
    fix = "drop --dynamic and pass --source-size WxH"
    try:
        got = torch.from_numpy(session.run([MASK_OUTPUT], {FRAMES_INPUT: frames.numpy()})[0])
    except Exception as exc:  # onnxruntime reports a frozen shape as a runtime error
        raise DronsegError(f"--dynamic --io frames export fails at {shape} ({str(exc).splitlines()[0][:160]}): {fix}") from None
    if got.shape != expected.shape:
        raise DronsegError(f"--dynamic --io frames export returns {tuple(got.shape)} for {shape} instead of "
                           f"{tuple(expected.shape)}: {fix}")
    agreement = float((got == expected).float().mean())
    # Random noise is the worst case for the border pixels where the two antialiased resizes differ.
    if agreement < 0.99:
        raise DronsegError(f"--dynamic --io frames export agrees with PyTorch on only {100 * agreement:.2f}% of pixels "
                           f"at {shape}: {fix}")
    return f"dynamic shapes verified at {shape} (agreement {100 * agreement:.2f}%)"
