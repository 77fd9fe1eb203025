"""Tiled inference (pipeline/tiling.py) through the Segmenter, on fake backends whose logits are known."""

import logging
import math

import numpy as np
import pytest
import torch

from dronseg_edge.classes import IMAGENET_MEAN, IMAGENET_STD
from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline import Segmenter
from dronseg_edge.pipeline.tiling import (AUTO_FACTOR, WEIGHT_FLOOR, TileBlender, TileGrid, window_starts,
                                          window_weights)
from testkit import FakeBackend, requires_cuda

TILE = (32, 24)  # the fake model's input (W, H)
CLASS_STEP = 20  # a pixel's class is its blue level / CLASS_STEP


def pixel_classifier(batch: torch.Tensor) -> torch.Tensor:
    """Logits that classify each pixel by its own blue level and nothing else: every window that
    covers a pixel gives it the same logits, so a tiled class map must be exactly the per-pixel one."""
    blue = (batch[:, 2] * IMAGENET_STD[2] + IMAGENET_MEAN[2]) * 255.0 / CLASS_STEP
    classes = torch.arange(12, dtype=torch.float32, device=batch.device).view(1, 12, 1, 1)
    return -((blue[:, None] - classes) ** 2)


def blocky_frame(size: tuple[int, int], block: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A BGR frame of ``block``-pixel squares of random classes (blue = class x CLASS_STEP) and its class map."""
    width, height = size
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 12, (math.ceil(height / block), math.ceil(width / block)))
    truth = blocks.repeat(block, 0).repeat(block, 1)[:height, :width].astype(np.uint8)
    frame = np.full((height, width, 3), 90, np.uint8)
    frame[..., 0] = truth * CLASS_STEP
    return frame, truth


def fake(**info) -> FakeBackend:
    return FakeBackend(respond=info.pop("respond", pixel_classifier), input_size=TILE, **info)


@pytest.mark.parametrize("length, tile, overlap", [(100, 32, 0.25), (64, 32, 0.0), (64, 32, 0.5), (33, 32, 0.25),
                                                   (3840, 320, 0.25), (2160, 192, 0.75)])
def test_windows_cover_the_length_sharing_at_least_the_overlap(length, tile, overlap):
    starts = window_starts(length, tile, overlap)
    stride = math.floor(tile * (1 - overlap))
    assert starts[0] == 0 and starts[-1] + tile == length
    assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))  # neighbours share >= overlap
    assert (len(starts) - 2) * stride + tile < length  # one window fewer would leave a gap
    assert window_starts(20, 32, 0.25) == [0]


def test_weights_fall_from_the_centre_to_a_floor():
    weights = window_weights(32, 24)
    assert weights.shape == (24, 32) and weights.dtype == np.float32
    assert weights.min() >= WEIGHT_FLOOR and weights[11:13, 15:17].min() > 0.95  # the 4 centre pixels
    row = weights[12, 16:]  # centre to the right edge
    assert np.all(np.diff(row) < 0) and row[-1] < 0.01
    assert np.allclose(weights, weights[::-1, ::-1])  # symmetric


@pytest.mark.parametrize("tile_batch", [1, 3, 8])
def test_tiled_maps_keep_small_objects_that_resizing_loses(tile_batch):
    frame, truth = blocky_frame((150, 100), block=5)
    backend = fake()
    with Segmenter(backend, tile="auto", tile_batch=tile_batch) as seg:
        result = seg.predict(frame)
    grid = TileGrid((150, 100), TILE, 0.25)
    assert result.tiles == len(grid.windows) and np.array_equal(result.mask, truth)
    assert {shape[1:] for shape in backend.batches} == {(3, 24, 32)}  # windows at the model input, never resized
    assert [shape[0] for shape in backend.batches][:-1] == [tile_batch] * (len(backend.batches) - 1)
    assert sum(shape[0] for shape in backend.batches) == len(grid.windows)  # no padding for a dynamic model
    assert set(result.timings) >= {"preprocess", "inference", "postprocess"} and result.timings["inference"] > 0
    with Segmenter(fake(), tile="off") as seg:
        resized = seg.predict(frame)
    assert resized.tiles == 0 and (resized.mask == truth).mean() < 0.8  # 5-pixel squares shrunk 4.7x


def test_the_blender_keeps_only_a_band_of_rows_for_a_tall_frame():
    frame, truth = blocky_frame((64, 400), block=3, seed=1)
    grid = TileGrid((64, 400), TILE, 0.25)
    blender = TileBlender(grid, 12, window_weights(*TILE), batch=2, confidence=False)
    assert blender.logits.shape == (12, grid.band_rows(2), 64) and grid.band_rows(2) < 400 / 4
    with Segmenter(fake(), tile="on", tile_batch=2) as seg:
        assert np.array_equal(seg.predict(frame).mask, truth)


def edge_band_logits(batch: torch.Tensor) -> torch.Tensor:
    """Class 5 (logit 2) within 3 pixels of every window's border, class 3 (logit 1) inside: a model
    that is wrong near the edges of what it sees, as real ones are."""
    n, _, h, w = batch.shape
    logits = torch.zeros(n, 12, h, w)
    logits[:, 3] = 1.0
    logits[:, 3, :, :3] = logits[:, 3, :, -3:] = logits[:, 3, :3, :] = logits[:, 3, -3:, :] = 0.0
    logits[:, 5] = 1.0 - logits[:, 3]
    logits[:, 5] *= 2.0
    return logits


def test_window_edges_give_way_to_other_windows_centres():
    frame = np.zeros((24, 112, 3), np.uint8)  # one row of windows: only the columns overlap
    with Segmenter(fake(respond=edge_band_logits), tile="on") as seg:
        mask = seg.predict(frame).mask
    columns = np.flatnonzero((mask[3:-3] == 5).any(axis=0))  # rows 0-2 and 21-23 are every window's edge
    # Equal weights would put class 5 wherever a window's edge lies inside another window (2 > 1);
    # falling weights leave it only at the frame's own border, seen by one window alone.
    assert set(columns) == {0, 1, 2, 109, 110, 111}
    assert (mask[3:-3, 3:-3] == 3).all()


def constant_logits(batch: torch.Tensor) -> torch.Tensor:
    n, _, h, w = batch.shape
    values = torch.linspace(-1.0, 2.0, 12, device=batch.device)
    return values.view(1, 12, 1, 1).expand(n, 12, h, w).clone()


@pytest.mark.parametrize("tile", ["on", "off"])
def test_confidence_is_the_largest_softmax_probability(tile):
    probabilities = torch.softmax(torch.linspace(-1.0, 2.0, 12), 0)
    expected = int(round(float(probabilities.max()) * 255))
    with Segmenter(fake(respond=constant_logits), tile=tile, confidence=True) as seg:
        result = seg.predict(np.zeros((60, 90, 3), np.uint8))
    assert (result.tiles > 0) == (tile == "on")
    assert result.confidence.shape == (60, 90) and result.confidence.dtype == np.uint8
    assert np.abs(result.confidence.astype(int) - expected).max() <= 1 and (result.mask == 11).all()


def coarse_logits(batch: torch.Tensor) -> torch.Tensor:
    """constant_logits at a quarter of the input's size: a graph from elsewhere without the final upsampling."""
    return constant_logits(batch)[:, :, ::4, ::4]


def test_logits_smaller_than_the_window_are_brought_to_its_size_before_blending():
    probabilities = torch.softmax(torch.linspace(-1.0, 2.0, 12), 0)
    with Segmenter(fake(respond=coarse_logits), tile="on", confidence=True) as seg:
        frame = np.zeros((60, 90, 3), np.uint8)
        assert seg.backend.segment(frame[None, :24, :32], logits=True).logits.shape == (1, 12, 24, 32)
        result = seg.predict(frame)  # was a broadcast ValueError, a traceback of infer --tile
    assert result.tiles > 0 and (result.mask == 11).all()
    assert np.abs(result.confidence.astype(int) - round(float(probabilities.max()) * 255)).max() <= 1


def test_auto_tiles_frames_at_least_twice_the_input_on_a_side():
    tile_w, tile_h = TILE
    cases = {(AUTO_FACTOR * tile_w, tile_h): True, (tile_w, AUTO_FACTOR * tile_h): True,
             (AUTO_FACTOR * tile_w - 1, AUTO_FACTOR * tile_h - 1): False,
             (200, tile_h - 1): False}  # smaller than the input on a side: resized, never tiled
    with Segmenter(fake(), tile="auto") as auto, Segmenter(fake(), tile="on") as on, \
            Segmenter(fake(), tile="off") as off:
        for (width, height), tiled in cases.items():
            frame = np.zeros((height, width, 3), np.uint8)
            assert (auto.predict(frame).tiles > 0) == tiled, (width, height)
            assert off.predict(frame).tiles == 0
        assert on.predict(np.zeros((tile_h + 6, tile_w + 8, 3), np.uint8)).tiles == 4  # any larger frame
        assert on.predict(np.zeros((tile_h, tile_w, 3), np.uint8)).tiles == 0  # one window: the plain path


def test_fixed_batch_artifacts_get_padded_windows():
    backend = fake(batch=2, dynamic=False)
    with Segmenter(backend, tile="on") as seg:
        frame, truth = blocky_frame((64, 48), block=4)
        assert np.array_equal(seg.predict(frame).mask, truth)
    assert len(TileGrid((64, 48), TILE, 0.25).windows) % 2 == 1 and set(backend.batches) == {(2, 3, 24, 32)}
    with pytest.raises(DronsegError, match="exported for batch 2"):
        Segmenter(fake(batch=2, dynamic=False), tile_batch=4)


def test_class_map_artifacts_refuse_tile_on_and_auto_resizes_with_one_warning(caplog):
    def class_map(batch):
        return torch.zeros(batch.shape[0], batch.shape[2], batch.shape[3], dtype=torch.int64)

    with pytest.raises(DronsegError, match=r"--tile on: fake.onnx outputs a class map \(--head argmax\)"):
        Segmenter(fake(respond=class_map, head="argmax"), tile="on")
    with pytest.raises(DronsegError, match="--tile on: frames.onnx is a frames artifact"):
        Segmenter(FakeBackend("frames.onnx", input_size=TILE, io="frames", head="argmax"), tile="on")
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"), \
            Segmenter(fake(respond=class_map, head="argmax"), tile="auto") as seg:
        results = seg.predict([np.zeros((100, 150, 3), np.uint8)] * 3)
    assert [r.tiles for r in results] == [0, 0, 0] and [r.mask.shape for r in results] == [(100, 150)] * 3
    warnings = [r.getMessage() for r in caplog.records if "would be tiled" in r.getMessage()]
    assert len(warnings) == 1 and "resizing them instead" in warnings[0]


@pytest.mark.parametrize("options, message", [(dict(tile="sometimes"), "--tile 'sometimes' is not one of auto, on, off"),
                                              (dict(tile_overlap=0.9), "--tile-overlap 0.9 must be between 0 and 0.75"),
                                              (dict(tile_overlap=-0.1), "--tile-overlap"),
                                              (dict(tile_overlap=0.5), "--tile-overlap 0.5 has no effect with --tile off"),
                                              ])
def test_bad_tile_options(options, message):
    with pytest.raises(DronsegError, match=message):
        Segmenter(fake(), **options)


@requires_cuda
@pytest.mark.gpu
def test_tiled_gpu_and_cpu_works_agree(trained_checkpoint):
    from testkit import scene

    frame = np.concatenate([np.concatenate([scene(i + 2 * j, (96, 64)) for i in range(3)], axis=1)
                            for j in range(3)], axis=0)  # 288x192: three times the input on each side
    with Segmenter(trained_checkpoint, device="cuda", tile="on", confidence=True, cuda_graph=False) as gpu, \
            Segmenter(trained_checkpoint, device="cpu", tile="on", confidence=True) as cpu:
        assert gpu.device.type == "cuda"
        on_gpu, on_cpu = gpu.predict(frame), cpu.predict(frame)
    assert on_gpu.tiles == on_cpu.tiles > 4
    assert (on_gpu.mask == on_cpu.mask).mean() > 0.99  # the same blending of windows at the model size; TF32 on the GPU
    assert np.abs(on_gpu.confidence.astype(int) - on_cpu.confidence).mean() < 1.0


def test_tiling_is_off_unless_asked_for():
    tile_w, tile_h = TILE
    with Segmenter(fake()) as seg:
        assert seg.predict(np.zeros((4 * tile_h, 4 * tile_w, 3), np.uint8)).tiles == 0


def test_the_window_counts_and_band_sizes_the_docs_give():
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs/tiling.md").read_text()
    assert "(a 320x192 model on 720p video) auto would cost 25 windows" in doc
    assert len(TileGrid((1280, 720), (320, 192), 0.25).windows) == 25
    assert "30 to 60 MB of logit sums in 256x160 windows (130 MB in\n1280x720 ones" in doc
    mb = {tile: 12 * TileGrid((3840, 2160), tile, 0.25).band_rows(batch) * 3840 * 4 / 1e6
          for tile, batch in (((256, 160), 8), ((1280, 720), 4))}
    assert 29 < mb[256, 160] < 60 and 125 < mb[1280, 720] < 135
