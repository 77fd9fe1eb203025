"""Image files: which files are images (by suffix), and how large one is before any pixel is decoded.

Shared by the data set reader, export's image sets and the inference pipeline's folder sources.

An image's size comes from its header (Pillow reads only the header on open), so an image file that
would decode to gigabytes (a "decompression bomb": a 109 KB PNG of 30000x30000 one-bit zeros is
2.7 GB once decoded to BGR) is refused before OpenCV or Pillow allocate anything for it. Every
reader here checks the size first: ``cv2.imread`` / ``cv2.imdecode`` never see an image over the
limit (OpenCV's own ceiling is 2^30 pixels, 3 GB).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from dronseg_edge.errors import DronsegError
from dronseg_edge.option_fields import OptionSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# 67.1 MP: an 8K UHD frame (7680x4320, 33.2 MP) and a 45 MP survey camera (8192x5460) pass; decoded
# to BGR it is at most 192 MiB.
DEFAULT_MAX_PIXELS = 1 << 26
# 134 MP (16384x8192): the highest --max-pixels. Above it Pillow stops reading sizes (it refuses
# images over 179 MP itself) and the decoded frame alone would fill a Jetson's memory.
MAX_PIXELS_CEILING = 1 << 27
# --max-pixels of infer, train and eval (option_fields.py)
MAX_PIXELS = OptionSpec(f"Refuse images above this many pixels (1..{MAX_PIXELS_CEILING}), read from the file's header "
                        "before decoding: decompression bombs are refused before they take the memory.",
                        names=("--max-pixels",), default_text=f"{DEFAULT_MAX_PIXELS} = 2^26, 67 MP: an 8K frame passes")


class ImageTooLarge(DronsegError):
    """An image whose header declares more pixels than the limit; ``size`` is (W, H), or None when
    Pillow refused to read even the header (over its own ceiling, ``pixels``)."""

    def __init__(self, message: str, size: tuple[int, int] | None, pixels: int):
        super().__init__(message)
        self.size, self.pixels = size, pixels


class ImageUnreadable(DronsegError):
    """A file whose header is not an image header (damaged, truncated, or another kind of file)."""


def check_max_pixels(value: int, flag: str = "--max-pixels") -> int:
    """``value`` as a valid pixel limit; DronsegError naming ``flag`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PIXELS_CEILING:
        raise DronsegError(f"{flag} {value} must be a whole number from 1 to {MAX_PIXELS_CEILING} "
                           f"(default {DEFAULT_MAX_PIXELS}: 67 MP)")
    return value


def megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP"


def image_size(path: Path | str) -> tuple[int, int]:
    """(W, H) in pixels from the image's header; nothing is decoded.

    Raises ImageTooLarge when Pillow itself refuses the header (over 179 MP, its own ceiling) and
    ImageUnreadable when the file is not an image it knows (or cannot be opened).
    """
    from PIL import Image, UnidentifiedImageError

    _silence_pillow_warning(Image)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        ceiling = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise ImageTooLarge(f"image {path} is over {megapixels(ceiling)} (Pillow refuses to read its size)", None,
                            ceiling) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageUnreadable(f"image {path} cannot be read ({type(exc).__name__}: not an image, or damaged)") from None
    return int(width), int(height)


def checked_image_size(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image",
                       fix: str = "remove it, or raise --max-pixels if it is a genuine image") -> tuple[int, int]:
    """(W, H) of ``path`` from its header, after checking it holds at most ``max_pixels`` pixels.

    ImageTooLarge (a one-line message naming the file, its size and ``fix``) above the limit;
    ImageUnreadable when the header cannot be read.
    """
    try:
        width, height = image_size(path)
    except ImageTooLarge as exc:
        raise ImageTooLarge(f"{what} {path} is over {megapixels(exc.pixels)} (Pillow refuses to read its size), above "
                            f"the {megapixels(max_pixels)} limit: {fix}", None, exc.pixels) from None
    except ImageUnreadable:
        raise ImageUnreadable(f"{what} {path} cannot be read (its header is not an image header: damaged, "
                              "truncated or not an image): replace or remove it") from None
    if width * height > max_pixels:
        raise ImageTooLarge(f"{what} {path} is {width}x{height} ({megapixels(width * height)}), above the "
                            f"{megapixels(max_pixels)} limit (a decompression bomb, or a larger image than expected): "
                            f"{fix}", (width, height), width * height)
    return width, height


def _silence_pillow_warning(image_module) -> None:
    """Pillow warns on opening an image over 89 MP; the limit here (checked before anything is
    decoded) replaces that warning, which would otherwise print a Python warning next to this
    package's own line for an image it refuses or skips. A filter, put first at every read (a
    ``warnings.catch_warnings`` block elsewhere may have dropped it; the block itself is not
    thread-safe, and images are read in threads)."""
    warnings.filterwarnings("ignore", category=image_module.DecompressionBombWarning)
