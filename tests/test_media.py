"""Image sizes from the header only, and the pixel limit every image reader applies first (media.py)."""

import warnings

import cv2
import numpy as np
import pytest
from testkit import write_png_bomb

from dronseg_edge.errors import DronsegError
from dronseg_edge.media import (DEFAULT_MAX_PIXELS, MAX_PIXELS_CEILING, ImageTooLarge, ImageUnreadable, check_max_pixels,
                                checked_image_size)


def test_the_size_comes_from_the_header_of_every_image_format(tmp_path):
    for suffix in (".jpg", ".png", ".bmp", ".tif", ".webp"):
        path = tmp_path / f"x{suffix}"
        assert cv2.imwrite(str(path), np.zeros((30, 50, 3), np.uint8)), suffix
        assert checked_image_size(path) == (50, 30), suffix


def test_an_8k_frame_passes_the_default_limit_and_a_bomb_does_not(tmp_path):
    big = write_png_bomb(tmp_path / "8k.png", 7680, 4320)  # a few KB on disk: only the header is read
    assert checked_image_size(big) == (7680, 4320)
    bomb = write_png_bomb(tmp_path / "bomb.png", 10000, 10000)  # 100 MP: Pillow would warn on opening it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the limit here replaces Pillow's DecompressionBombWarning
        with pytest.raises(ImageTooLarge) as error:
            checked_image_size(bomb, what="mask", fix="remove it")
    message = str(error.value)
    assert message.startswith(f"mask {bomb} is 10000x10000 (100.0 MP), above the 67.1 MP limit") and "\n" not in message
    assert message.endswith(": remove it") and error.value.size == (10000, 10000)
    assert checked_image_size(bomb, max_pixels=MAX_PIXELS_CEILING) == (10000, 10000)  # a raised limit lets it pass


def test_an_image_over_pillows_own_ceiling_is_refused_without_its_size(tmp_path):
    bomb = write_png_bomb(tmp_path / "huge.jpg", 30000, 30000)  # a PNG named .jpg: the header decides, not the name
    with pytest.raises(ImageTooLarge, match=r"image .*huge.jpg is over 179.0 MP \(Pillow refuses to read its size\), "
                                            r"above the 67.1 MP limit"):
        checked_image_size(bomb)


def test_a_file_that_is_not_an_image_is_unreadable(tmp_path):
    for data in (b"", b"not an image", b"\x89PNG\r\n\x1a\n truncated"):
        path = tmp_path / "x.png"
        path.write_bytes(data)
        with pytest.raises(ImageUnreadable, match=f"image {path} cannot be read"):
            checked_image_size(path)
    with pytest.raises(ImageUnreadable):
        checked_image_size(tmp_path / "missing.png")


@pytest.mark.parametrize("value", [0, -1, MAX_PIXELS_CEILING + 1, 1.5, True])
def test_a_bad_limit_is_one_line_naming_the_option(value):
    with pytest.raises(DronsegError, match=rf"--max-pixels {value} must be a whole number from 1 to {MAX_PIXELS_CEILING}"):
        check_max_pixels(value)
    assert check_max_pixels(DEFAULT_MAX_PIXELS) == 1 << 26
