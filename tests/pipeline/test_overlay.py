import numpy as np
import torch

from dronseg_edge.classes import PALETTE
from dronseg_edge.pipeline.overlay import bgr_lut, blend, colorize, overlay, overlay_torch, palette_tensor


def _case(seed=0, shape=(37, 53)):
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, len(PALETTE), shape, dtype=np.uint8)
    frame = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    return mask, frame


def test_colorize_matches_the_palette_in_bgr():
    mask, _ = _case()
    reference = np.asarray(PALETTE, np.uint8)[mask][..., ::-1]  # the slow fancy-indexing way, RGB -> BGR
    assert np.array_equal(colorize(mask, bgr_lut(PALETTE)), reference)


def test_class_ids_past_the_palette_are_black():
    mask = np.full((4, 4), 200, np.uint8)
    assert not colorize(mask, bgr_lut(PALETTE)).any()


def test_blend_is_the_weighted_mean():
    mask, frame = _case(1)
    colours = colorize(mask, bgr_lut(PALETTE))
    expected = np.round(frame * 0.7 + colours * 0.3)
    assert np.abs(blend(frame, colours, 0.3).astype(int) - expected).max() <= 1
    assert np.array_equal(overlay(frame, mask, bgr_lut(PALETTE), 0.0), frame)
    assert np.array_equal(overlay(frame, mask, bgr_lut(PALETTE), 1.0), colours)


def test_torch_overlay_agrees_with_opencv():
    mask, frame = _case(2)
    lut = bgr_lut(PALETTE)
    for alpha in (0.0, 0.35, 0.5, 1.0):
        expected = overlay(frame, mask, lut, alpha)
        got = overlay_torch(torch.from_numpy(frame)[None], torch.from_numpy(mask)[None],
                            palette_tensor(PALETTE, torch.device("cpu")), alpha)[0].numpy()
        assert got.dtype == np.uint8 and got.shape == frame.shape
        assert np.abs(got.astype(int) - expected).max() <= 1, alpha


def test_hidden_pixels_show_the_frame_on_both_paths():
    mask, frame = _case(3)
    mask[:10] = 255  # what a class filter left out
    hidden = mask == 255
    lut = bgr_lut(PALETTE)
    cpu = overlay(frame, mask, lut, 0.6, hidden=255)
    gpu_form = overlay_torch(torch.from_numpy(frame)[None], torch.from_numpy(mask)[None],
                             palette_tensor(PALETTE, torch.device("cpu")), 0.6, hidden=255)[0].numpy()
    for image in (cpu, gpu_form):
        assert np.array_equal(image[hidden], frame[hidden])
        assert np.abs(image[~hidden].astype(int) - overlay(frame, mask, lut, 0.6)[~hidden]).max() <= 1
