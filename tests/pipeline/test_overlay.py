import numpy as np

from dronseg_edge.classes import PALETTE
from dronseg_edge.pictures import bgr_lut, colorize
from dronseg_edge.pipeline.overlay import overlay


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


def test_the_overlay_is_the_weighted_mean():
    mask, frame = _case(1)
    colours = colorize(mask, bgr_lut(PALETTE))
    expected = np.round(frame * 0.7 + colours * 0.3)
    assert np.abs(overlay(frame, mask, bgr_lut(PALETTE), 0.3).astype(int) - expected).max() <= 1
    assert np.array_equal(overlay(frame, mask, bgr_lut(PALETTE), 0.0), frame)
    assert np.array_equal(overlay(frame, mask, bgr_lut(PALETTE), 1.0), colours)


def test_hidden_pixels_show_the_frame():
    mask, frame = _case(3)
    mask[:10] = 255  # what a class filter left out
    hidden = mask == 255
    lut = bgr_lut(PALETTE)
    image = overlay(frame, mask, lut, 0.6, hidden=255)
    assert np.array_equal(image[hidden], frame[hidden])
    assert np.array_equal(image[~hidden], overlay(frame, mask, lut, 0.6)[~hidden])


def test_left_out_classes_are_black_in_the_colours_only_picture_and_show_the_frame_in_a_blend():
    # --stream-what color (opacity 1) is "the class colours only": a left-out pixel is black there, as in
    # --save-color, not the camera's picture
    from types import SimpleNamespace

    from dronseg_edge.pipeline.overlay import OverlayPlan
    from dronseg_edge.pipeline.request import FILTERED

    mask, frame = _case(2)
    mask[:10] = FILTERED
    result = SimpleNamespace(frame=frame, mask=mask, classes=(1, 2), overlays={}, seen_classes=())
    assert not OverlayPlan(1.0, bgr_lut(PALETTE), colours_only=True).image(result)[:10].any()
    assert np.array_equal(OverlayPlan(0.4, bgr_lut(PALETTE)).image(result)[:10], frame[:10])
    # infer --alpha 1 --classes ...: they were black too, where the docs say the frame shows through
    assert np.array_equal(OverlayPlan(1.0, bgr_lut(PALETTE)).image(result)[:10], frame[:10])
