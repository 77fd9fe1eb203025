"""Image files: which files are images (by suffix), and how large one is before any pixel is decoded.

An image's size comes from its header (Pillow reads only the header on open), so every reader here
(data sets, export's image sets, the pipeline's image sources) refuses an image over the pixel limit
before OpenCV or Pillow allocate anything for it: a "decompression bomb" (a 109 KB PNG of
30000x30000 one-bit zeros) is 2.7 GB once decoded to BGR. OpenCV's own ceiling is 2^30 pixels, 3 GB.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from dronseg_edge.errors import DronsegError
from dronseg_edge.option_fields import OptionSpec, whole

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# 67.1 MP: an 8K UHD frame (7680x4320, 33.2 MP) and a 45 MP survey camera (8192x5460) pass; decoded
# to BGR it is at most 192 MiB.
DEFAULT_MAX_PIXELS = 1 << 26
# 134 MP (16384x8192): the highest --max-pixels. Above it Pillow stops reading sizes (it refuses
# images over 179 MP itself) and the decoded frame alone would fill a Jetson's memory.
MAX_PIXELS_CEILING = 1 << 27
MAX_JPEG_SCANS = 500  # start-of-scan markers in one JPEG (NVIDIA DALI's default limit, for the same reason)
# --max-pixels of infer, train and eval (option_fields.py)
MAX_PIXELS = OptionSpec(f"Refuse images (and video or stream frames) above this many pixels (1..{MAX_PIXELS_CEILING}), read from the file's header "
                        "before decoding: decompression bombs are refused before they take the memory.",
                        names=("--max-pixels",), default_text=f"{DEFAULT_MAX_PIXELS} = 2^26, 67 MP: an 8K frame passes")


class ImageTooLarge(DronsegError):
    """An image whose header declares more pixels than the limit; ``size`` is (W, H), or None when
    Pillow refused to read even the header (over its own ceiling)."""

    def __init__(self, message: str, size: tuple[int, int] | None = None):
        super().__init__(message)
        self.size = size

    @property
    def liftable(self) -> bool:
        """Whether a higher --max-pixels lets it through (the option takes at most MAX_PIXELS_CEILING)."""
        return self.size is not None and self.size[0] * self.size[1] <= MAX_PIXELS_CEILING


class ImageUnreadable(DronsegError):
    """A file whose header is not an image header (damaged, truncated, or another kind of file)."""


def native_name(path: Path | str) -> str:
    """A file's name as native libraries (OpenCV, FFmpeg, ONNX Runtime, torch's ONNX export) should get it:
    absolute, so that FFmpeg does not read a relative name with a colon in its first part
    (``2026-12-07T12:30:05.mp4``) as a protocol. They pass the name on as UTF-8, and OpenCV crashes on one
    whose bytes are not (Latin-1 names from a camera's card; the others fail), while under a non-UTF-8
    locale they name another file: DronsegError for both."""
    name = os.path.abspath(path)
    try:
        if os.fsencode(name) == name.encode("utf-8"):
            return name
    except UnicodeEncodeError:
        pass
    raise DronsegError(f"{name!r}: OpenCV, FFmpeg and ONNX Runtime take file names as UTF-8 and this one is not: rename "
                       "it (convmv -f latin1 -t utf8), or run under a UTF-8 locale (LC_ALL=C.UTF-8)")


def check_max_pixels(value: int, flag: str = "--max-pixels") -> int:
    """``value`` as a valid pixel limit; DronsegError naming ``flag`` otherwise."""
    return whole(value, flag, most=MAX_PIXELS_CEILING, hint=f" (default {DEFAULT_MAX_PIXELS}: 67 MP)")


def megapixels(pixels: int) -> str:
    """'67.1 MP'; under 1 MP in pixels, which one decimal showed as '0.0 MP' (a tiny --max-pixels, its images)."""
    return f"{pixels / 1e6:.1f} MP" if pixels >= 1_000_000 else f"{pixels} pixels"


def checked_image_size(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image",
                       skipped: bool = False) -> tuple[int, int]:
    """(W, H) in pixels of ``path`` from its header (nothing is decoded), after checking it holds at
    most ``max_pixels`` pixels.

    ImageTooLarge (a one-line message naming the file, its size and the fix: ``skipped`` when the caller
    skips it, else remove it) above the limit or when Pillow refuses the header itself (over 179 MP, its
    own ceiling); ImageUnreadable when the file is not an image Pillow knows (or cannot be opened).
    """
    from PIL import Image, UnidentifiedImageError

    # Pillow warns on opening an image over 89 MP: the limit here replaces that warning. A filter put
    # first at every read, not a catch_warnings block: that is not thread-safe, and images are read in threads.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    drop = "skipped" if skipped else "remove it"
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        ceiling = megapixels(2 * (Image.MAX_IMAGE_PIXELS or 0))
        raise ImageTooLarge(f"{what} {path} is over {ceiling} (Pillow refuses to read its size), above the "
                            f"{megapixels(max_pixels)} limit: {too_large_fix(None, drop)}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageUnreadable(f"{what} {path} cannot be read (its header is not an image header: damaged, "
                              "truncated or not an image): replace or remove it") from None
    if width * height > max_pixels:
        raise ImageTooLarge(f"{what} {path} is {width}x{height} ({megapixels(width * height)}), above the "
                            f"{megapixels(max_pixels)} limit (a decompression bomb, or a larger image than expected): "
                            f"{too_large_fix(width * height, drop)}", (width, height))
    return int(width), int(height)


def upright_size(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(W, H) of ``path`` as :func:`decode_bgr` gives it, from its header: OpenCV turns an image by its EXIF
    orientation (5 to 8 swap the sides). checked_image_size's errors; nothing is decoded (nor a PNG's EXIF after
    its pixels read)."""
    from PIL import Image

    width, height = checked_image_size(path, max_pixels)
    with Image.open(path) as image:
        if image.format == "TIFF":  # its own tag; a recent Pillow gives the size turned already
            width, height, turn = image.tag_v2[256], image.tag_v2[257], image.tag_v2.get(0x0112, 1)
        else:
            (exif := Image.Exif()).load(image.info.get("exif") or b"")
            turn = exif.get(0x0112, 1)
    return (int(height), int(width)) if turn in (5, 6, 7, 8) else (int(width), int(height))


def too_large_fix(pixels: int | None, drop: str = "remove it", what: str = "image") -> str:
    """What to do about an image over the limit (``drop``: "remove it", "skipped"; "" for a video's frames): a
    higher --max-pixels only where one lets it through."""
    lift = (f"raise --max-pixels if it is a genuine {what}" if pixels is not None and pixels <= MAX_PIXELS_CEILING
            else f"--max-pixels takes at most {megapixels(MAX_PIXELS_CEILING)}")
    if drop == "remove it" and lift.startswith("raise"):
        return f"remove it, or {lift}"
    return f"{drop} ({lift})" if drop else lift


def without_option(exc: Exception) -> Exception:
    """``exc``; an ImageTooLarge worded for a command that takes no --max-pixels (parity, export, bench --matrix)."""
    if not isinstance(exc, ImageTooLarge):
        return exc
    return DronsegError(f"{str(exc).rsplit(': ', 1)[0]}: remove it or scale it down (this command takes no --max-pixels)")


def decode_bgr(path: Path | str):
    """The image's pixels as (H, W, 3) uint8 BGR (its EXIF orientation applied), or None when OpenCV
    cannot decode them or the file is a JPEG cut short: OpenCV returns a cut JPEG with its missing rows
    grey, saying so only on stderr (libjpeg's "Premature end of JPEG file"). ImageUnreadable for a JPEG of
    over MAX_JPEG_SCANS scans."""
    import cv2
    import numpy as np

    data = np.fromfile(path, dtype=np.uint8)  # not cv2.imread: it cannot open non-ASCII paths on Windows
    raw = data.tobytes()
    if data.size == 0 or _jpeg_cut(raw):
        return None
    # Each progressive scan is decoded over the whole image, and one can cover it in a few bytes: 1,000 scans
    # (125 kB) held libjpeg 23 s at 16 MP (libjpeg-turbo's LJT-01-003). Encoders write at most a few dozen.
    if raw[:2] == b"\xff\xd8" and (scans := raw.count(b"\xff\xda")) > MAX_JPEG_SCANS:
        raise ImageUnreadable(f"image {path} is a JPEG of {scans} scans, over the {MAX_JPEG_SCANS} an encoder writes (a "
                              "file made to take hours to decode): replace or remove it")
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def _jpeg_cut(raw: bytes) -> bool:
    """Whether ``raw`` is a JPEG that ends before its image does: no end marker (FF D9) after the first scan
    of the image itself (the header's segments, an EXIF thumbnail with its own end marker among them, are
    stepped over by their lengths). Data after the end (a phone's motion photo) is not looked at."""
    if raw[:2] != b"\xff\xd8":
        return False
    pos = 2
    while pos + 4 <= len(raw) and raw[pos] == 0xFF:
        marker = raw[pos + 1]
        if marker == 0xDA:  # start of scan: the entropy-coded image follows, its end marker after it
            return raw.find(b"\xff\xd9", pos) < 0
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(raw[pos + 2:pos + 4], "big")
    return pos + 4 > len(raw)  # ran out inside the header: cut; a structure not walked here: the decoder decides
