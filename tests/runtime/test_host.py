"""runtime/host.py: pre/post-processing in host memory (numpy and OpenCV), the torch-free path."""

import cv2
import numpy as np

from dronseg_edge.classes import IMAGENET_MEAN, IMAGENET_STD
from dronseg_edge.metadata import ModelInfo
from dronseg_edge.runtime.host import class_counts, class_map_host, preprocess_host, resize_frame


def _info(size=(32, 16)) -> ModelInfo:
    return ModelInfo(arch="fake", input_size=size)


def test_preprocess_host_shrinks_with_inter_area_then_normalises_rgb():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (48, 96, 3), dtype=np.uint8)
    x = preprocess_host(frame, _info())
    assert x.shape == (1, 3, 16, 32) and x.dtype == np.float32
    small = cv2.resize(frame, (32, 16), interpolation=cv2.INTER_AREA)[:, :, ::-1].astype(np.float32) / 255.0
    expected = ((small - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)).transpose(2, 0, 1)
    np.testing.assert_allclose(x[0], expected, atol=1e-5)


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


def test_class_counts_ignores_ids_past_the_classes():
    mask = np.array([[0, 1, 1, 13]], np.uint8)
    assert class_counts(mask, 3).tolist() == [1, 2, 0]
