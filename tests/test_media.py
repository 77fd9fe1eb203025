"""Image sizes from the header only, and the pixel limit every image reader applies first (media.py)."""

import os
import warnings

import cv2
import numpy as np
import pytest
from testkit import write_png_bomb

from dronseg_edge.errors import DronsegError
from dronseg_edge.media import (DEFAULT_MAX_PIXELS, MAX_PIXELS_CEILING, ImageTooLarge, ImageUnreadable, check_max_pixels,
                                checked_image_size, decode_bgr, native_name, upright_size)


def test_the_size_comes_from_the_header_of_every_image_format(tmp_path):
    for suffix in (".jpg", ".png", ".bmp", ".tif", ".webp"):
        path = tmp_path / f"x{suffix}"
        assert cv2.imwrite(str(path), np.zeros((30, 50, 3), np.uint8)), suffix
        assert checked_image_size(path) == (50, 30), suffix


@pytest.mark.parametrize("turn", [1, 3, 6, 8])
def test_the_upright_size_is_the_size_decode_bgr_gives(tmp_path, turn):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = turn
    for suffix in (".jpg", ".png", ".tif", ".webp"):
        path = tmp_path / f"x{suffix}"
        Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(path, exif=exif)
        decoded = decode_bgr(path)
        assert upright_size(path) == (decoded.shape[1], decoded.shape[0]) == ((30, 50) if turn > 4 else (50, 30)), suffix


def test_an_8k_frame_passes_the_default_limit_and_a_bomb_does_not(tmp_path):
    big = write_png_bomb(tmp_path / "8k.png", 7680, 4320)  # a few KB on disk: only the header is read
    assert checked_image_size(big) == (7680, 4320)
    bomb = write_png_bomb(tmp_path / "bomb.png", 10000, 10000)  # 100 MP: Pillow would warn on opening it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the limit here replaces Pillow's DecompressionBombWarning
        with pytest.raises(ImageTooLarge) as error:
            checked_image_size(bomb, what="mask")
    message = str(error.value)
    assert message.startswith(f"mask {bomb} is 10000x10000 (100.0 MP), above the 67.1 MP limit") and "\n" not in message
    assert message.endswith(": remove it, or raise --max-pixels if it is a genuine image") and error.value.liftable
    assert checked_image_size(bomb, max_pixels=MAX_PIXELS_CEILING) == (10000, 10000)  # a raised limit lets it pass


def test_a_small_limit_and_image_are_said_in_pixels(tmp_path):
    """With a tiny --max-pixels the skip read '192x128 (0.0 MP), above the 0.0 MP limit'."""
    path = tmp_path / "x.png"
    assert cv2.imwrite(str(path), np.zeros((128, 192, 3), np.uint8))
    with pytest.raises(ImageTooLarge, match=r"is 192x128 \(24576 pixels\), above the 24575 pixels limit \("):
        checked_image_size(path, 24575)


def test_an_image_over_pillows_own_ceiling_is_refused_without_its_size(tmp_path):
    bomb = write_png_bomb(tmp_path / "huge.jpg", 30000, 30000)  # a PNG named .jpg: the header decides, not the name
    with pytest.raises(ImageTooLarge, match=r"image .*huge.jpg is over 179.0 MP \(Pillow refuses to read its size\), "
                                            r"above the 67.1 MP limit: remove it \(--max-pixels takes at most 134.2 MP\)$"):
        checked_image_size(bomb)


def test_an_image_no_max_pixels_lets_through_is_not_advised_to_raise_it(tmp_path):
    bomb = write_png_bomb(tmp_path / "bomb.png", 12000, 12000)  # 144 MP: over the 134.2 MP --max-pixels takes at most
    for limit in (DEFAULT_MAX_PIXELS, MAX_PIXELS_CEILING):  # the advice followed: the highest limit refuses it too
        with pytest.raises(ImageTooLarge) as error:
            checked_image_size(bomb, max_pixels=limit, skipped=True)
        assert str(error.value).endswith("MP limit (a decompression bomb, or a larger image than expected): skipped "
                                         "(--max-pixels takes at most 134.2 MP)") and not error.value.liftable


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
    with pytest.raises(DronsegError, match=rf"--max-pixels {value} must be a whole number, from 1 to {MAX_PIXELS_CEILING}"):
        check_max_pixels(value)
    assert check_max_pixels(DEFAULT_MAX_PIXELS) == 1 << 26
    # numpy's whole numbers are whole numbers ("np.int64(5) must be a whole number" refused one), kept as ints
    assert type(check_max_pixels(np.int64(5))) is int


def test_a_jpeg_cut_short_is_not_decoded_into_grey_rows(tmp_path):
    # OpenCV decodes a cut JPEG, its missing rows grey (only libjpeg's stderr says so): a download or
    # copy that stopped must not become a training image under its full mask, or an inference frame.
    from dronseg_edge.media import decode_bgr

    image = np.random.default_rng(0).integers(0, 256, (96, 160, 3), dtype=np.uint8)
    for name, params in (("baseline", []), ("progressive", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])):
        data = cv2.imencode(".jpg", image, params)[1].tobytes()
        (tmp_path / "whole.jpg").write_bytes(data + b"\x00\x00\x00\x18ftypmp42" + bytes(64))  # a motion photo's video
        (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
        assert decode_bgr(tmp_path / "whole.jpg").shape == (96, 160, 3), name
        assert cv2.imread(str(tmp_path / "cut.jpg")) is not None and decode_bgr(tmp_path / "cut.jpg") is None, name
    for odd in (b"\xff", b"\xff\x01"):  # a fill byte, a marker without a length (TEM): stepped over, not taken as cut
        (tmp_path / "odd.jpg").write_bytes(data[:2] + odd + data[2:])
        assert decode_bgr(tmp_path / "odd.jpg").shape == (96, 160, 3), odd
    (tmp_path / "cut.jpg").write_bytes(data[:40])  # cut inside its header
    assert decode_bgr(tmp_path / "cut.jpg") is None
    (tmp_path / "p.png").write_bytes(cv2.imencode(".png", image)[1].tobytes())
    assert np.array_equal(decode_bgr(tmp_path / "p.png"), image)


def test_a_name_opencv_cannot_take_is_one_line_not_a_crash(tmp_path, monkeypatch):
    # OpenCV passes a name on as UTF-8: Latin-1 bytes (a camera card's names) crashed infer and synth in
    # cv2.VideoCapture/VideoWriter (SIGSEGV, exit 139), and under a Latin-1 locale a non-ASCII name opened another
    # file ("damaged, or uses a codec this FFmpeg lacks")
    assert native_name(tmp_path / "flüg.mp4") == str(tmp_path / "flüg.mp4")
    with pytest.raises(DronsegError, match=r"fl\\udcfcg.mp4'?: OpenCV, FFmpeg and ONNX Runtime take file names as UTF-8 .*rename it"):
        native_name(tmp_path / os.fsdecode(b"fl\xfcg.mp4"))
    monkeypatch.setattr(os, "fsencode", lambda name: name.encode("latin-1"))  # what a Latin-1 locale writes
    with pytest.raises(DronsegError, match=r"LC_ALL=C.UTF-8"):
        native_name(tmp_path / "flüg.mp4")
    assert native_name(tmp_path / "flight.mp4") == str(tmp_path / "flight.mp4")


def test_a_jpeg_of_more_scans_than_an_encoder_writes_is_refused_before_it_is_decoded(tmp_path):
    """libjpeg decodes each progressive scan over the whole image, and one can cover it in 31 bytes: a 125 kB
    JPEG of 1,000 scans took 23 s to decode at 16 MP, so a few MB at 67 MP would take hours (LJT-01-003)."""
    from dronseg_edge.media import MAX_JPEG_SCANS, decode_bgr

    data = cv2.imencode(".jpg", np.full((64, 96, 3), 128, np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    scans, last_scan, end = data.count(b"\xff\xda") + MAX_JPEG_SCANS, data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    (tmp_path / "scans.jpg").write_bytes(data[:end] + data[last_scan:end] * MAX_JPEG_SCANS + data[end:])
    with pytest.raises(ImageUnreadable) as error:
        decode_bgr(tmp_path / "scans.jpg")
    assert str(error.value) == (f"image {tmp_path / 'scans.jpg'} is a JPEG of {scans} "
                                f"scans, over the {MAX_JPEG_SCANS} an encoder writes (a file made to take hours to "
                                "decode): replace or remove it")
    (tmp_path / "fine.jpg").write_bytes(data)
    assert decode_bgr(tmp_path / "fine.jpg").shape == (64, 96, 3)
