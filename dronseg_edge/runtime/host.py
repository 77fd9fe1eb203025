"""The one host implementation of pre- and post-processing, OpenCV and numpy: it never imports torch.

For plain tensor artifacts (``Backend.segment``'s default) and checkpoints on the CPU; export parity,
accuracy and ``bench`` make their inputs here too. The uint8 frame is shrunk first (``INTER_AREA``,
as training did: ``pictures.resize_frame``) and only the few pixels left turned to float (a 720p frame shrunk
to 320x192 is 1/15 of the work); the class map comes back to the frame's size (nearest), with the
maximum softmax probability when asked. A frames graph does all of it itself (``resize_matrix``).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from dronseg_edge.metadata import ModelInfo
from dronseg_edge.pictures import resize_frame  # noqa: F401 (the one resize to a model's size; used from here too)

CONFIDENCE_OUTPUT = "confidence"  # the name export/embedded.py gives a frames graph's second output


@functools.lru_cache(maxsize=16)
def scale_and_shift(mean: tuple, std: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (RGB) a, b with (x / 255 - mean) / std == x * a + b."""
    std_ = np.asarray(std, np.float32)
    return (1.0 / (255.0 * std_)).astype(np.float32), (-np.asarray(mean, np.float32) / std_).astype(np.float32)


def resize_matrix(src: int, dst: int, area: bool | None = None) -> np.ndarray:
    """(dst, src) float32 weights W with ``W @ line`` == ``resize_frame`` of a float line of ``src`` pixels to ``dst``.

    ``area`` (default: ``dst <= src``): cv2.INTER_AREA's weights, else cv2.INTER_LINEAR's: read off
    OpenCV itself, as its resize of the identity (in column blocks, to bound memory). ``resize_frame``
    picks area only when both sides shrink, so an axis can get linear weights while shrinking:
    ``resize_matrices`` makes that choice. A frames graph (export/embedded.py) applies these as MatMuls.
    """
    src, dst = int(src), int(dst)
    if src < 1 or dst < 1:
        raise ValueError(f"resize_matrix needs positive sizes, got {src} -> {dst}")
    area = dst <= src if area is None else area
    if area and dst > src:
        raise ValueError(f"INTER_AREA weights enlarge nothing: {src} -> {dst}")
    if src == dst:
        return np.eye(src, dtype=np.float32)
    how = cv2.INTER_AREA if area else cv2.INTER_LINEAR
    blocks = [np.eye(src, min(1024, src - j), -j, np.float32) for j in range(0, src, 1024)]
    return np.hstack([cv2.resize(b, (b.shape[1], dst), interpolation=how).reshape(dst, -1) for b in blocks])


# OpenCV's INTER_AREA of uint8 at exactly half of both sides takes a fast path that rounds ties up,
# (a + b + c + d + 2) >> 2, where every other shrink rounds them to even as a Round does. Those means
# are quarters, so adding 1/8 before the Round gives the same ties (the frames graph, runtime/torch_frames).
HALVES_UP = 0.125


def resize_matrices(src_size: tuple[int, int], dst_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows (h, H), columns (w, W)) float32 with ``rows @ plane @ columns.T`` == ``resize_frame`` of a float
    (H, W) plane from ``src_size`` (W, H) to ``dst_size`` (w, h): area on both axes when both shrink (or stay)."""
    (width, height), (out_w, out_h) = src_size, dst_size
    area = out_w <= width and out_h <= height
    return resize_matrix(height, out_h, area=area), resize_matrix(width, out_w, area=area)


def preprocess_host(frames_bgr: list[np.ndarray] | np.ndarray, info: ModelInfo) -> np.ndarray:
    """uint8 BGR frames (each (H, W, 3), any sizes) -> normalised float32 (N, 3, h, w) at ``info.input_size``,
    channels in a tensors graph's ``color_order`` (ours: RGB; its mean and std are in that order). For a frames
    graph: the input of the model inside it (RGB; its ``color_order`` is the frames')."""
    width, height = info.input_size
    scale, shift = scale_and_shift(tuple(info.mean), tuple(info.std))
    bgr = info.io == "tensors" and info.color_order == "BGR"
    order = (0, 1, 2) if bgr else (2, 1, 0)  # the BGR channel each input channel reads
    out = np.empty((len(frames_bgr), 3, height, width), np.float32)
    for i, frame in enumerate(frames_bgr):
        small = resize_frame(np.ascontiguousarray(frame), width, height)
        for channel in range(3):
            np.multiply(small[:, :, order[channel]], scale[channel], out=out[i, channel], casting="unsafe")
            out[i, channel] += shift[channel]
    return out


def frames_in_order(frames: np.ndarray, info: ModelInfo) -> np.ndarray:
    """uint8 BGR frames (..., H, W, 3) as a frames graph of ``info`` takes them: RGB where its ``color_order`` says
    so (a graph from elsewhere; ours take BGR), contiguous."""
    return np.ascontiguousarray(frames[..., ::-1] if info.color_order == "RGB" else frames)


def class_map_host(out: np.ndarray, height: int, width: int) -> np.ndarray:
    """One frame's backend output ((C, h, w) logits or (h, w) classes) -> (H, W) uint8 classes at the frame's size."""
    classes = out.argmax(axis=0).astype(np.uint8) if out.ndim == 3 else out.astype(np.uint8, copy=False)
    if classes.shape != (height, width):
        classes = cv2.resize(classes, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    return classes


def max_probability_u8(logits: np.ndarray) -> np.ndarray:
    """(C, H, W) logits -> (H, W) uint8 maximum softmax probability x 255, rounded, as a frames graph's
    ``confidence`` output: 1 / sum(exp(logit - max logit)), without making the whole softmax."""
    top = logits.max(axis=0)
    total = np.exp(logits - top).sum(axis=0)
    return np.clip(np.rint(255.0 / total), 0, 255).astype(np.uint8)


def postprocess_host(out: np.ndarray, height: int, width: int, confidence: bool):
    """A batch of model outputs ((N, C, h, w) logits or (N, h, w) classes) -> ((N, H, W) uint8 classes at the
    frames' size, (N, H, W) uint8 confidence or None)."""
    classes = np.stack([class_map_host(o, height, width) for o in out])
    if not (confidence and out.ndim == 4):
        return classes, None
    conf = [max_probability_u8(np.asarray(o, np.float32)) for o in out]
    # bilinear: probabilities vary smoothly
    return classes, np.stack([c if c.shape == (height, width) else cv2.resize(c, (width, height)) for c in conf])
