"""Reading image and mask files: full decoding with clear errors, EXIF orientation, 16-bit and float data, re-encoding.

Pixels are read by the rules predict uses (`processing.image_inputs.pil_to_unit_array`): 8-bit data as it is,
16-bit data scaled by its bit depth, float data (TIFF mode ``F``) taken as values in [0, 1] (refused outside it),
one frame per file and one pixel limit, so a model sees a file alike in training, evaluation and prediction.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from processing.image_inputs import DEFAULT_MAX_IMAGE_PIXELS, check_pixel_count, check_single_frame, pil_to_unit_array

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

    The frame count and the pixel count are checked from the header, before anything is decoded. The EXIF
    orientation, if any, is applied here and only here, so the pixels every later step sees (the mask size
    check, the stored bytes) are upright.

    Args:
        path: The image file.

    Returns:
        The decoded upright image, and the file's bytes, or ``None`` when the EXIF orientation changed the
        pixels (the bytes then no longer match them and must not be stored).

    Raises:
        DatasetFormatError: The file cannot be read, is empty, cannot be decoded completely, holds several frames
            (a multi-page TIFF, an animated PNG, GIF or WebP: which one is the picture is not clear), or has more
            pixels than predict reads (`processing.image_inputs.DEFAULT_MAX_IMAGE_PIXELS`).
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DatasetFormatError(f"{path}: cannot read file ({error.strerror or error})") from error
    if not data:
        raise DatasetFormatError(f"{path}: empty file (0 bytes); expected an image")
    image = _decode(data, path)
    if image.getexif().get(ExifTags.Base.Orientation, 1) in _ROTATED_ORIENTATIONS:
        return ImageOps.exif_transpose(image), None
    return image, data


def _decode(data: bytes, path: Path) -> Image.Image:
    """Open ``data`` (the bytes of ``path``), check its frames and size from the header, then decode it all."""
    try:
        with _strict_truncation(), warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the pixel limit below decides
            image = Image.open(io.BytesIO(data))
            _check_one_picture(image, path)
            Image.open(io.BytesIO(data)).verify()  # walks the chunks to the end: catches a cut-off PNG
            image.load()
    except DatasetFormatError:
        raise
    except UnidentifiedImageError as error:
        raise DatasetFormatError(f"{path}: not a readable image file (unknown or corrupt format)") from error
    except Image.DecompressionBombError as error:
        raise DatasetFormatError(f"{path}: too large to open safely ({error})") from error
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
        raise DatasetFormatError(
            f"{path}: cannot decode image, the file is corrupt or truncated ({type(error).__name__}: {error})"
        ) from error
    return image


def _check_one_picture(image: Image.Image, path: Path) -> None:
    """Raise for a file of several frames or above the pixel limit (predict's rules), from its header."""
    try:
        check_single_frame(image, "the file")
        check_pixel_count(image.size[::-1], "the image", DEFAULT_MAX_IMAGE_PIXELS)
    except ValueError as error:
        raise DatasetFormatError(f"{path}: {error}") from None


def encode_rgb_image(image: Image.Image, data: bytes | None, source: str | Path = "image") -> bytes:
    """Return PNG/JPEG bytes of an 8-bit RGB version of ``image``, reusing the file's bytes when already RGB.

    Any other image is read by predict's rules (`processing.image_inputs.pil_to_unit_array`) and stored as
    ``round(255 * value)``: grey repeated, alpha dropped, 16-bit data (modes ``I;16``, ``I;16B``, ``I;16L`` and
    ``I``, which PIL uses for 16-bit PNG and TIFF) scaled by its bit depth, never by its content (``v`` becomes
    ``round(v / 257)``, so a dark 16-bit image stays dark), float data (mode ``F``, float TIFF) taken as [0, 1].

    Args:
        image: The decoded image.
        data: The bytes of the file it was decoded from, or ``None`` when they do not match the pixels.
        source: The file, for errors.

    Returns:
        Encoded bytes of a 3-channel 8-bit image.

    Raises:
        DatasetFormatError: Float values outside [0, 1] (NaN and infinity included), mode ``I`` values outside
            0..65535, or a mode that cannot become RGB, naming ``source``.
    """
    if data is not None and image.mode == "RGB" and image.format in _PASSTHROUGH_IMAGE_FORMATS:
        return data
    try:
        pixels = pil_to_unit_array(image, "the image")
    except (ValueError, TypeError) as error:
        raise DatasetFormatError(f"{source}: {error}") from None
    return _png_bytes(Image.fromarray(np.round(pixels * 255).astype(np.uint8)))


def encode_binary_mask(mask: Image.Image, data: bytes | None, source: str | Path = "mask") -> bytes:
    """Return PNG bytes of a mode ``L`` 0/255 version of ``mask`` (any value above 0 is foreground).

    Args:
        mask: The decoded mask (8-bit, 16-bit, float or colour).
        data: The bytes of the file it was decoded from (reused when already a 0/255 ``L`` PNG), or
            ``None`` when they do not match the pixels.
        source: The file, for errors.

    Returns:
        Encoded bytes of a binary mask.

    Raises:
        DatasetFormatError: A float mask holding NaN or infinity (which pixels are defects is unknown), naming
            ``source``.
    """
    if mask.mode in ("1", "L", "F") or mask.mode.startswith("I"):
        values = np.asarray(mask)
        if mask.mode == "F" and not np.isfinite(values).all():
            raise DatasetFormatError(f"{source}: the mask holds NaN or infinite values; expected 0 and defect values")
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
