"""Self-contained ONNX graphs (``export --io frames``): uint8 BGR frames in, the uint8 class map out.

``FramesToClassMap`` wraps the model with the package's own pre- and post-processing, so any
runner (ONNX Runtime, TensorRT, OpenCV DNN, a C++ program) gets a segmentation from ``cv2.imread``'s
array without knowing the mean/std, colour order or sizes:

    (N, H, W, 3) uint8 BGR ─Cast─▶ float ─resize as runtime/host.resize_frame (export/frames_resize.py)─▶
      (N, 3, h, w) BGR ─mean/std─▶ model (its first convolution reads BGR) ─▶ logits ─bilinear to H x W─▶
      argmax ─▶ (N, H, W) uint8 class map  └──▶ softmax max x 255 ─▶ (N, H, W) uint8 confidence

Every node is one that TensorRT's ONNX parser (8.6 to 10.x), ONNX Runtime and OpenCV 4.8+ DNN
accept (tests/export/trt_parser_rules.py checks each exported graph against the parser's table; why
each choice, node by node: docs/export.md, "Built from nodes every consumer takes"). Opset 17 by
default, the newest TensorRT 8.6 (JetPack 6.0) parses.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dronseg_edge.errors import DronsegError
from dronseg_edge.export import onnx as onnx_export
from dronseg_edge.export.frames_resize import DynamicResize, StaticResize, fold_channel_flip
from dronseg_edge.metadata import ModelInfo
from dronseg_edge.runtime.host import CONFIDENCE_OUTPUT, scale_and_shift

FRAMES_INPUT = "frames"
MASK_OUTPUT = "mask"
# The resize's nodes (FramesToClassMap.resize) stay fp32 in an fp16 graph: fp16 holds integers exactly only
# up to 2048, so pixel positions in a 4K frame (and the weights built from them) would be off.
FP32_NODES = ("/resize/",)
COLOR_ORDER = "BGR"  # what cv2.imread / VideoCapture give: no conversion on the caller's side
# In the metadata's extra: raise it whenever FramesToClassMap computes otherwise, so that an engine build does not
# reuse an older version's graph (files without it: the antialiased Resize, ties at 2x rounded down).
BUILDER_KEY, BUILDER_VERSION = "frames_graph_builder", 1


def frames_info(info: ModelInfo, source_size: tuple[int, int] | None, confidence: bool) -> ModelInfo:
    """``info`` of a tensors export turned into the metadata of its frames graph (head, io, sizes, outputs)."""
    outputs = [MASK_OUTPUT] + ([CONFIDENCE_OUTPUT] if confidence else [])
    source = None if info.dynamic else tuple(source_size or info.input_size)
    return dataclasses.replace(info, head="argmax", layout="NHWC", io="frames", source_size=source,
                               color_order=COLOR_ORDER, outputs=outputs, extra={**info.extra, BUILDER_KEY: BUILDER_VERSION})


class FramesToClassMap(nn.Module):
    """(N, H, W, 3) uint8 BGR frames -> (N, H, W) uint8 class map [, (N, H, W) uint8 confidence x 255].

    ``info``: a ``frames_info`` (``input_size`` the model's input; ``source_size`` (W, H) the frame size, None
    for any; ``batch`` the fixed batch; ``mean``/``std`` of RGB in 0..1). ``model`` is copied, not changed.
    """

    def __init__(self, model: nn.Module, info: ModelInfo, confidence: bool = False):
        super().__init__()
        width, height = (int(v) for v in info.input_size)
        self.confidence = confidence
        self.classes = int(info.num_classes)
        self.source = None if info.dynamic else tuple(int(v) for v in (info.source_size or info.input_size))
        self.upsample = self.source != (width, height)  # the logits are at the model's size
        self.model = fold_channel_flip(copy.deepcopy(model).eval(), torch.zeros(1, 3, height, width))
        self.resize = DynamicResize((width, height)) if self.source is None else \
            StaticResize(self.source, (width, height), batch=int(info.batch or -1))  # -1: any
        # (x / 255 - mean) / std as one multiply-add on 0..255 values, in BGR order (the model reads BGR now).
        scale, shift = scale_and_shift(tuple(info.mean[::-1]), tuple(info.std[::-1]))
        self.register_buffer("scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)

    def forward(self, frames: torch.Tensor):
        # The Cast first, and every shape read from its output: TensorRT lets a uint8 input feed a Cast only.
        pixels = frames.to(torch.float32)
        x = self.resize(pixels).round()  # rounded as training's uint8 images were (resize_frame's ties: frames_resize)
        logits = self.model(x * self.scale + self.shift)["out"]
        height, width = pixels.shape[1], pixels.shape[2]
        if self.upsample:
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        # TensorRT converts to uint8 only from float32/float16, not from the int64/int32 of ArgMax.
        mask = logits.argmax(dim=1).to(torch.float32).to(torch.uint8)
        if not self.confidence:
            return mask
        # The maximum over the classes as a MaxPool across them: OpenCV 4.8's ReduceMax returns wrong values.
        # A softmax maximum lies in (0, 1], so no clamp either (OpenCV 4.8 cannot run that Clip).
        probabilities = torch.softmax(logits, dim=1).transpose(1, 2)  # (N, H, C, W)
        top = F.max_pool2d(probabilities, kernel_size=(self.classes, 1)).flatten(2)  # (N, H, W); squeeze: an If
        return mask, (top * 255.0).round().to(torch.uint8)


def export_frames_onnx(model: nn.Module, path: Path, info: ModelInfo, *, opset: int | None = None) -> Path:
    """Write ``FramesToClassMap(model)`` to ``path``; ``info`` is a ``frames_info`` (its outputs decide confidence).

    TorchScript exporter, opset ``opset`` (default 17: module docstring).
    """
    if onnx_export.choose_exporter() != "torchscript":
        raise DronsegError(f"--io frames needs torch's TorchScript ONNX exporter, which torch {torch.__version__} "
                           "no longer has: export --io tensors, or use torch <= 2.15")
    net = FramesToClassMap(model, info, confidence=CONFIDENCE_OUTPUT in info.outputs).eval()
    width, height = info.source_size or info.input_size
    free = {0: "batch", 1: "height", 2: "width"} if info.dynamic else {0: "batch"} if info.batch is None else None
    return onnx_export.write_graph(
        net, torch.zeros(info.batch or 1, height, width, 3, dtype=torch.uint8), path, info, opset=opset,
        exporter="torchscript", axes=free and {name: free for name in [FRAMES_INPUT, *info.outputs]},
        names=(FRAMES_INPUT, list(info.outputs)), pre_post="in graph: BGR uint8 NHWC -> INTER_AREA resize (MatMul) "
        "-> mean/std -> model -> bilinear logits -> argmax uint8")


def verify_frames_dynamic(path: Path, model: nn.Module, info: ModelInfo) -> str:
    """Run a frames graph with a free batch at batch 2 (a --dynamic one also at another frame size than
    traced) and compare with PyTorch."""
    width, height = info.input_size
    probe_w, probe_h = (width * 2 + 6, height * 2 + 10) if info.dynamic else (info.source_size or info.input_size)
    # Odd sizes: a frozen shape cannot pass by chance.
    frames = torch.randint(0, 256, (2, probe_h, probe_w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return onnx_export.compare_with_torch(path, FramesToClassMap(model, info).eval(), frames, info, "--io frames export",
                                          "drop --dynamic and pass --source-size WxH")
