"""Reading image and mask files: full decoding with clear errors, EXIF orientation, 16-bit data, re-encoding."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from .schema import DatasetFormatError

_PASSTHROUGH_IMAGE_FORMATS = frozenset({"PNG", "JPEG"})
# EXIF orientations that `ImageOps.exif_transpose` turns upright (1 is already upright).
_ROTATED_ORIENTATIONS = range(2, 9)


@contextlib.contextmanager
def _strict_truncation() -> Iterator[None]:
    """Make PIL raise on truncated files while decoding, whatever the global setting is."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def read_image_file(path: Path) -> tuple[Image.Image, bytes | None]:
    """Read an image file, decode it fully (so corrupt and truncated files are caught) and turn it upright.

    The EXIF orientation, if any, is applied here and only here, so the pixels every later step sees
    (the mask size check, the stored bytes) are upright.

    Args:
        path: The image file.

    Returns:
        The decoded upright image, and the file's bytes, or ``None`` when the EXIF orientation changed the
        pixels (the bytes then no longer match them and must not be stored).

    Raises:
        DatasetFormatError: The file cannot be read, is empty, or cannot be decoded completely.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DatasetFormatError(f"{path}: cannot read file ({error.strerror or error})") from error
    if not data:
        raise DatasetFormatError(f"{path}: empty file (0 bytes); expected an image")
    try:
        with _strict_truncation():
            Image.open(io.BytesIO(data)).verify()  # walks the chunks to the end: catches a cut-off PNG
            image = Image.open(io.BytesIO(data))
            image.load()
    except UnidentifiedImageError as error:
        raise DatasetFormatError(f"{path}: not a readable image file (unknown or corrupt format)") from error
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
        raise DatasetFormatError(
            f"{path}: cannot decode image, the file is corrupt or truncated ({type(error).__name__}: {error})"
        ) from error
    if image.getexif().get(ExifTags.Base.Orientation, 1) in _ROTATED_ORIENTATIONS:
        return ImageOps.exif_transpose(image), None
    return image, data


def encode_rgb_image(image: Image.Image, data: bytes | None) -> bytes:
    """Return PNG/JPEG bytes of an 8-bit RGB version of ``image``, reusing the file's bytes when already RGB.

    16-bit data (modes ``I;16``, ``I;16B``, ``I;16L`` and ``I``, which PIL uses for 16-bit PNG and TIFF)
    is scaled by its bit depth, never by its content: value ``v`` becomes ``round(v / 257)``, so a dark
    16-bit image stays dark.

    Args:
        image: The decoded image.
        data: The bytes of the file it was decoded from, or ``None`` when they do not match the pixels.

    Returns:
        Encoded bytes of a 3-channel 8-bit image.
    """
    if data is not None and image.mode == "RGB" and image.format in _PASSTHROUGH_IMAGE_FORMATS:
        return data
    if image.mode == "I" or image.mode.startswith("I;16"):
        values = np.asarray(image).astype(np.int64)
        image = Image.fromarray(np.clip((values + 128) // 257, 0, 255).astype(np.uint8))
    return _png_bytes(image.convert("RGB"))


def encode_binary_mask(mask: Image.Image, data: bytes | None) -> bytes:
    """Return PNG bytes of a mode ``L`` 0/255 version of ``mask`` (any non-zero value is foreground).

    Args:
        mask: The decoded mask (8-bit, 16-bit, float or colour).
        data: The bytes of the file it was decoded from (reused when already a 0/255 ``L`` PNG), or
            ``None`` when they do not match the pixels.

    Returns:
        Encoded bytes of a binary mask.
    """
    if mask.mode in ("1", "L", "F") or mask.mode.startswith("I"):
        values = np.asarray(mask)
        foreground = values > 0
    else:
        values, foreground = None, (np.asarray(mask.convert("RGB")) > 0).any(axis=-1)
    binary = foreground.astype(np.uint8) * 255
    if data is not None and mask.mode == "L" and mask.format == "PNG" and np.array_equal(values, binary):
        return data
    return _png_bytes(Image.fromarray(binary))


def _png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


__all__ = ["encode_binary_mask", "encode_rgb_image", "read_image_file"]
