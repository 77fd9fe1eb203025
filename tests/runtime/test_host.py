"""runtime/host.py: pre/post-processing in host memory (numpy and OpenCV), the torch-free path."""

import cv2
import numpy as np
import pytest
from testkit import FakeBackend

from dronseg_edge.classes import IMAGENET_MEAN, IMAGENET_STD
from dronseg_edge.metadata import ModelInfo
from dronseg_edge.runtime.host import (class_map_host, preprocess_host, resize_frame, resize_matrices,
                                      resize_matrix)


def _info(size=(32, 16)) -> ModelInfo:
    return ModelInfo(arch="fake", input_size=size)


def test_preprocess_host_shrinks_with_inter_area_then_normalises_rgb():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (48, 96, 3), dtype=np.uint8)
    x = preprocess_host([frame], _info())
    assert x.shape == (1, 3, 16, 32) and x.dtype == np.float32
    small = cv2.resize(frame, (32, 16), interpolation=cv2.INTER_AREA)[:, :, ::-1].astype(np.float32) / 255.0
    expected = ((small - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)).transpose(2, 0, 1)
    np.testing.assert_allclose(x[0], expected, atol=1e-5)


def test_each_graph_gets_the_colour_order_its_metadata_names():
    """A graph from elsewhere may take BGR tensors or RGB frames (--meta color_order): the host path follows it."""
    frame = np.zeros((16, 32, 3), np.uint8)
    frame[..., 0] = 255  # pure blue in BGR
    unit = dict(arch="fake", input_size=(32, 16), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert preprocess_host([frame], ModelInfo(**unit))[0, :, 0, 0].tolist() == [0.0, 0.0, 1.0]  # RGB: blue last
    assert preprocess_host([frame], ModelInfo(**unit, color_order="BGR"))[0, :, 0, 0].tolist() == [1.0, 0.0, 0.0]
    seen = []
    for order in ("RGB", "BGR"):
        graph = FakeBackend("g.onnx", io="frames", head="argmax", color_order=order,
                            respond=lambda x: (seen.append(x[0, 0, 0].tolist()), x[..., 0] // 255)[1])
        assert graph.segment(frame[None]).classes.shape == (1, 16, 32)
    assert seen == [[0, 0, 255], [255, 0, 0]]


def test_preprocess_host_takes_frames_of_several_sizes_and_enlarges_bilinear():
    frames = [np.full((8, 8, 3), 255, np.uint8), np.zeros((40, 80, 3), np.uint8)]
    x = preprocess_host(frames, _info())
    assert x.shape == (2, 3, 16, 32)
    white = (1.0 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    np.testing.assert_allclose(x[0, :, 5, 5], white, atol=1e-5)
    assert resize_frame(frames[0], 32, 16).shape == (16, 32, 3)
    assert resize_frame(frames[1], 80, 40) is frames[1]  # already at size: no copy


def test_class_map_host_argmaxes_logits_and_resizes_nearest():
    logits = np.zeros((3, 2, 4), np.float32)
    logits[2, :, :2] = 1.0  # left half class 2, right half class 0
    mask = class_map_host(logits, 4, 8)
    assert mask.dtype == np.uint8 and mask.shape == (4, 8)
    assert (mask[:, :4] == 2).all() and (mask[:, 4:] == 0).all()
    classes = np.array([[1, 5]], np.int64)
    assert (class_map_host(classes, 1, 2) == [[1, 5]]).all()


# (source, target) sizes as (W, H): integer and non-integer shrink ratios, one side kept, enlarging, mixed.
RESIZES = [((1280, 720), (320, 192)), ((1280, 720), (96, 64)), ((720, 1280), (192, 320)), ((100, 100), (64, 64)),
           ((288, 192), (96, 64)), ((7, 5), (3, 2)), ((1281, 719), (320, 192)), ((96, 64), (96, 40)),
           ((96, 64), (160, 128)), ((64, 48), (96, 40)), ((5, 3), (17, 11))]


@pytest.mark.parametrize("source, target", RESIZES)
def test_resize_matrices_reproduce_resize_frame_on_float_planes(source, target):
    """rows @ plane @ columns.T per channel == cv2.resize as resize_frame calls it (float32 input: no rounding)."""
    rng = np.random.default_rng(sum(source) + sum(target))
    frame = rng.uniform(0, 255, (source[1], source[0], 3)).astype(np.float32)
    rows, columns = resize_matrices(source, target)
    assert rows.shape == (target[1], source[1]) and columns.shape == (target[0], source[0])
    assert rows.dtype == columns.dtype == np.float32
    got = np.stack([rows.astype(np.float64) @ frame[:, :, c] @ columns.T.astype(np.float64) for c in range(3)], axis=-1)
    expected = resize_frame(frame, *target)
    # OpenCV sums in float32 (and rounds INTER_LINEAR's positions to float32): 1e-5 of the 0..255 range.
    np.testing.assert_allclose(got, expected, rtol=0, atol=3e-3)


@pytest.mark.parametrize("src, dst", [(1280, 320), (1280, 96), (720, 192), (100, 64), (64, 64), (48, 96), (5, 17)])
def test_resize_matrix_along_one_axis_matches_cv2(src, dst):
    line = np.random.default_rng(src * dst).uniform(0, 255, (1, src)).astype(np.float32)
    area = dst <= src
    expected = cv2.resize(line, (dst, 1), interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR)[0]
    weights = resize_matrix(src, dst)
    assert weights.shape == (dst, src) and weights.dtype == np.float32
    np.testing.assert_allclose(weights.astype(np.float64) @ line[0], expected, rtol=0, atol=3e-3)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)  # every output pixel a weighted mean


def test_resize_matrix_is_an_area_mean_for_shrinking_and_linear_when_asked():
    np.testing.assert_allclose(resize_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    np.testing.assert_allclose(resize_matrix(3, 2), [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]], atol=1e-6)
    # INTER_LINEAR while shrinking (resize_frame's choice when the other side enlarges): centres, no averaging.
    np.testing.assert_allclose(resize_matrix(4, 2, area=False), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    np.testing.assert_allclose(resize_matrix(6, 2, area=False), [[0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0]])
    with pytest.raises(ValueError, match="INTER_AREA weights enlarge nothing"):
        resize_matrix(2, 4, area=True)
    with pytest.raises(ValueError, match="positive sizes"):
        resize_matrix(0, 4)
