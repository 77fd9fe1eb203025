"""export/frames_resize.py: the frames graph's shrink equals runtime/host.resize_frame, in torch and as exported."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dronseg_edge.errors import DronsegError
from dronseg_edge.export.frames_resize import DynamicResize, StaticResize, _blocks, fold_channel_flip
from dronseg_edge.models import build_model
from dronseg_edge.runtime.host import resize_frame, resize_matrix

# (source, target) as (W, H): integer and non-integer shrinks, a kept side, enlarging, one side each way.
SIZES = [((288, 192), (96, 64)), ((400, 225), (96, 64)), ((96, 64), (96, 64)), ((96, 80), (96, 64)),
         ((50, 30), (96, 64)), ((200, 40), (96, 64)), ((97, 65), (96, 64))]


def _frames(source, batch=2) -> np.ndarray:
    rng = np.random.default_rng(source[0] * source[1])
    return rng.integers(0, 256, (batch, source[1], source[0], 3), dtype=np.uint8)


def _expected(frames: np.ndarray, target) -> np.ndarray:
    """(N, 3, h, w) float: each frame resized by the host path, channels first (no rounding: float input)."""
    return np.stack([resize_frame(f.astype(np.float32), *target).transpose(2, 0, 1) for f in frames])


@pytest.mark.parametrize("source, target", SIZES)
def test_static_and_dynamic_resize_equal_resize_frame(source, target):
    frames = _frames(source)
    expected = _expected(frames, target)
    x = torch.from_numpy(frames).float()
    with torch.no_grad():
        static = StaticResize(source, target, batch=2)(x).numpy()
        dynamic = DynamicResize(target)(x).numpy()
    assert static.shape == dynamic.shape == expected.shape
    np.testing.assert_allclose(static, expected, rtol=0, atol=3e-3)
    # The in-graph formulas drop no sub-1e-3 cell as OpenCV does: a few thousandths of a grey level.
    np.testing.assert_allclose(dynamic, expected, rtol=0, atol=0.05)


@pytest.mark.parametrize("source", [(192, 128), (194, 130), (288, 192)])
def test_rounded_like_opencvs_uint8_shrink_also_at_exactly_half(source):
    # OpenCV's INTER_AREA of uint8 at exactly half of both sides rounds ties up ((a+b+c+d+2) >> 2), every
    # other shrink to even: the graphs' rounded values equal resize_frame's uint8 output either way.
    frames = _frames(source)
    target = (source[0] // 2, source[1] // 2) if source != (288, 192) else (96, 64)
    expected = np.stack([resize_frame(f, *target).transpose(2, 0, 1) for f in frames])
    x = torch.from_numpy(frames).float()
    with torch.no_grad():
        for resize in (StaticResize(source, target, batch=2), DynamicResize(target)):
            assert np.array_equal(resize(x).round().numpy(), expected)


@pytest.mark.parametrize("source", [(50, 30), (80, 48), (200, 40)])
def test_an_enlarged_uint8_frame_is_what_the_graphs_round(source):
    # OpenCV's uint8 INTER_LINEAR works in 11-bit fixed point (12 % of values one level off the graph's);
    # resize_frame enlarges in float and rounds as the graphs do: only float-order ties may differ.
    frames = _frames(source)
    expected = np.stack([resize_frame(f, 96, 64).transpose(2, 0, 1) for f in frames])
    x = torch.from_numpy(frames).float()
    with torch.no_grad():
        for resize in (StaticResize(source, (96, 64), batch=2), DynamicResize((96, 64))):
            assert (resize(x).round().numpy() != expected).mean() < 0.005


def test_area_matrices_of_rational_ratios_are_repeated_blocks():
    block, count = _blocks(resize_matrix(720, 192))  # 15 source pixels -> 4 outputs, 48 times
    assert block.shape == (4, 15) and count == 48
    block, count = _blocks(resize_matrix(1280, 320))
    assert block.shape == (1, 4) and count == 320
    dense, count = _blocks(resize_matrix(64, 96))  # enlarging: neighbouring rows share pixels
    assert dense.shape == (96, 64) and count == 1


def test_the_static_shrink_costs_what_the_docs_say():
    """docs/export.md said 4 MACs per source pixel: the widths, then the narrowed heights, take 2 per value, 6 a pixel."""
    resize = StaticResize((1280, 720), (320, 192), batch=1)
    macs = sum(math.prod(axis.flat_shape) * axis.weights.shape[1] for axis in (resize.columns, resize.rows))
    assert macs == 5_529_600 == 6 * 1280 * 720
    doc = (Path(__file__).resolve().parents[2] / "docs" / "export.md").read_text()
    assert "(1280x720 -> 320x192: 5.5 M multiply-adds per frame, 6 per source pixel)" in doc


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's notice on every TorchScript export
def test_dynamic_resize_exports_and_runs_at_other_sizes(tmp_path):
    import onnxruntime as ort

    net = DynamicResize((24, 16)).eval()
    path = tmp_path / "resize.onnx"
    with torch.no_grad():
        torch.onnx.export(net, (torch.zeros(1, 40, 60, 3),), str(path), input_names=["x"], output_names=["y"],
                          opset_version=17, dynamic_axes={"x": {0: "n", 1: "h", 2: "w"}}, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for source in [(60, 40), (101, 53), (20, 10)]:  # traced size, odd shrink, enlarge
        frames = _frames(source)
        got = session.run(None, {"x": frames.astype(np.float32)})[0]
        np.testing.assert_allclose(got, _expected(frames, (24, 16)), rtol=0, atol=0.05)


def test_channel_flip_folds_into_the_first_convolution():
    model = build_model("lraspp_mobilenet_v3_large", num_classes=12, weights="none").eval()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)["out"]
        folded = fold_channel_flip(model, torch.zeros(1, 3, 64, 96))
        torch.testing.assert_close(folded(x.flip(1))["out"], expected, rtol=1e-4, atol=1e-4)


def test_a_model_not_starting_with_a_3_channel_convolution_is_refused():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = nn.Conv2d(3, 4, 1)  # never applied to the input
            self.pool = nn.AvgPool2d(2)

        def forward(self, x):
            return {"out": self.pool(x)}

    with pytest.raises(DronsegError, match="first layer is a 3-channel convolution"):
        fold_channel_flip(Odd(), torch.zeros(1, 3, 8, 8))
