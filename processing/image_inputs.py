"""Turning what users pass as images (PIL images, numpy arrays, torch tensors, paths) into arrays, with named errors.

The reading rules, the same for every command (predict, eval, the app, the runners of exports, the pipeline) and
for training's dataset reader, which calls [`pil_to_unit_array`]:

- **Layout.** PIL images and image files are `(H, W)` or `(H, W, C)`, always, whatever their size (a 200x3 image
  stays 3 pixels high). Only raw numpy arrays and torch tensors may be channels-first: a 3-D array is
  `(H, W, C)` when its last axis can be channels (1, 3 or 4), else `(C, H, W)` when its first axis can; the
  processor's `input_data_format="channels_first"` (or `"channels_last"`) settles an ambiguous shape such as
  `(3, 5, 3)` the other way.
- **Bit depth, never content.** uint8 and 8-bit PIL modes /255; uint16, PIL's 16-bit modes (`I;16*`) and mode `I`
  (how PIL holds 16-bit PNG and TIFF; refused outside 0..65535) /65535; bool and mode `1` 0/1; float arrays and
  PIL mode `F` (float TIFF) are taken as [0, 1] and refused outside it, or with NaN/inf.
- **One frame.** Multi-page TIFFs, animated GIF/PNG/WebP are refused, naming the file and its frame count (MPO, a
  camera JPEG with a preview image, reads its main image).
- **Pixel limit.** Images above `max_image_pixels` (width x height, default [`DEFAULT_MAX_IMAGE_PIXELS`]) are
  refused; for files and lazily opened PIL images from the header, before decoding. Pillow's own decompression
  bomb check becomes the same named error.
- **Orientation.** A file opened here, or a PIL image straight from `Image.open`, is made upright by its EXIF
  orientation once.

Example:
    ```python
    >>> array = pil_to_unit_array(Image.open("part.tif"), "part.tif")  # (H, W, 3) float32 in [0, 1]
    >>> chw = to_channels_first("part.png", "images[0]")               # (C, H, W) in the file's own dtype
    ```
"""

from __future__ import annotations  # annotations name torch.Tensor, which the numpy-only path never imports

import os
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

try:
    import torch
except ImportError:  # the numpy path serves the torch-free runners of exported models
    torch = None

EXPECTED = "a PIL image, a numpy array or torch tensor of shape (H, W), (H, W, C) or (C, H, W), or an image path"
# 50 Mpx: above any MVTec-AD/VisA image (at most 1.5 Mpx) and common industrial cameras (up to about 45 Mpx), and
# about 600 MB once read as float32 RGB; a 12000x12000 image (144 Mpx) took 15 GB in predict before this limit.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
CHANNEL_COUNTS = (1, 3, 4)
CHANNELS_FIRST, CHANNELS_LAST = "channels_first", "channels_last"
# PIL modes read as they are; any other mode (P, LA, CMYK, ...) is converted to RGB first.
_NATIVE_MODES = ("1", "L", "RGB", "RGBA", "I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# Several frames where only the first is the image: MPO is a camera JPEG with a preview picture.
_FIRST_FRAME_FORMATS = ("MPO",)
# numpy arrays and torch tensors (when torch is installed) are read alike
ARRAY_TYPES = (np.ndarray,) if torch is None else (np.ndarray, torch.Tensor)
ImageLike = "Image.Image | np.ndarray | torch.Tensor | str | os.PathLike"  # a string: torch may be absent


def as_list(images: Any, name: str, allow_none_items: bool = False) -> list:
    """One image or a batch -> a non-empty list of single images."""
    if images is None:
        raise ValueError(f"`{name}` is None; expected {EXPECTED}, or a list of them.")
    if isinstance(images, ARRAY_TYPES) and images.ndim == 4:
        images = list(images)  # a batch (B, ...) of arrays
    elif isinstance(images, ARRAY_TYPES) and images.ndim > 4:
        raise ValueError(f"`{name}` has {images.ndim} dimensions; expected a single image or a (batch, ...) array.")
    elif not isinstance(images, (list, tuple)):
        images = [images]
    if len(images) == 0:
        raise ValueError(f"`{name}` is an empty list; expected at least one image.")
    for index, image in enumerate(images):
        if image is None and not allow_none_items:
            raise ValueError(f"{name}[{index}] is None; expected {EXPECTED}.")
    return list(images)


def item_name(name: str, index: int, item: Any) -> str:
    """`images[3]`, with the file name when the item is a path: `images[3] ('000.png')`."""
    if isinstance(item, (str, os.PathLike)):
        return f"{name}[{index}] ({os.path.basename(item)!r})"
    return f"{name}[{index}]"


def with_file_name(name: str, image: Any) -> str:
    """`name`, followed by the file name when `image` is a path that `name` does not already mention."""
    if isinstance(image, (str, os.PathLike)):
        file_name = os.path.basename(image)
        if file_name not in name:
            return f"{name} ({file_name!r})"
    return name


def to_channels_first(
    image: ImageLike,
    name: str,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    input_data_format: str | None = None,
) -> np.ndarray:
    """Any supported input -> a numpy array `(C, H, W)`, C in (1, 3, 4), in a dtype that states its bit depth.

    Files and PIL images are `(H, W[, C])` always; raw arrays follow the module's layout rule, or
    `input_data_format` (`"channels_first"` / `"channels_last"`) when given.
    """
    if isinstance(image, (str, os.PathLike, Image.Image)):
        array = to_array(image, name, max_pixels)
        return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    array = to_array(image, name, max_pixels)
    if array.ndim == 2:
        channels_first = array[None]
    elif array.ndim == 3:
        channels_first = _array_layout(array, name, input_data_format)
    else:
        raise ValueError(
            f"{name} has shape {tuple(array.shape)}; expected (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4."
        )
    check_pixel_count(channels_first.shape[-2:], name, max_pixels)
    return channels_first


def _array_layout(array: np.ndarray, name: str, input_data_format: str | None) -> np.ndarray:
    """A 3-D raw array -> `(C, H, W)`: as told, else channels-last when the last axis can be channels."""
    layout = str(getattr(input_data_format, "value", input_data_format) or "")
    if layout not in ("", CHANNELS_FIRST, CHANNELS_LAST):
        raise ValueError(f"`input_data_format` must be {CHANNELS_FIRST!r}, {CHANNELS_LAST!r} or None, got {layout!r}.")
    if not layout:
        if array.shape[-1] in CHANNEL_COUNTS:
            layout = CHANNELS_LAST
        elif array.shape[0] in CHANNEL_COUNTS:
            layout = CHANNELS_FIRST
    channels = {CHANNELS_LAST: array.shape[-1], CHANNELS_FIRST: array.shape[0]}.get(layout)
    if channels not in CHANNEL_COUNTS:
        told = f" as {layout}" if input_data_format else ""
        raise ValueError(
            f"{name} has shape {tuple(array.shape)}{told}; expected (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4."
        )
    return np.moveaxis(array, -1, 0) if layout == CHANNELS_LAST else array


def check_pixel_count(size: tuple[int, int], name: str, max_pixels: int) -> None:
    """Refuses an image of `size` `(height, width)` above `max_pixels`, naming it and the setting."""
    height, width = int(size[0]), int(size[1])
    if height * width > max_pixels:
        raise ValueError(
            f"{name} is {width}x{height} pixels ({height * width / 1e6:.1f} Mpx), above the limit of "
            f"{max_pixels:,} pixels (`max_image_pixels`): resize it, or raise the image processor's "
            "`max_image_pixels` if your images are that large."
        )


def to_array(image: ImageLike, name: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Path, PIL image or torch tensor -> numpy array in a dtype that states the bit depth (PIL `I` -> uint16).

    Files and PIL images come back `(H, W)` or `(H, W, C)`; arrays and tensors keep their shape."""
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image, name, max_pixels)
    if isinstance(image, Image.Image):
        return pil_to_array(image, name, max_pixels)
    if torch is not None and isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        return image.float().numpy() if image.is_floating_point() else image.numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} is a {type(image).__name__}; expected {EXPECTED}.")
    return image


def pil_to_array(image: Image.Image, name: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """A PIL image -> `(H, W)` or `(H, W, C)` in a dtype that states its bit depth (bool, uint8, uint16, float32).

    Frames and size are checked before the pixels are decoded; modes other than 1, L, RGB(A), I;16*, I and F are
    converted to RGB."""
    check_single_frame(image, name)
    check_pixel_count(image.size[::-1], name, max_pixels)
    if isinstance(image, ImageFile.ImageFile):  # straight from Image.open: make the pixels upright, once
        image = _decoded(lambda: ImageOps.exif_transpose(image), name)
    if image.mode not in _NATIVE_MODES:
        try:
            image = image.convert("RGB")
        except (ValueError, OSError) as error:
            raise ValueError(f"{name} has PIL mode {image.mode}, which cannot be converted to RGB: {error}") from error
    array = np.asarray(image)
    if image.mode.startswith("I"):  # I;16 variants and I (how PIL holds 16-bit PNG/TIFF): 16-bit
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(f"{name} is a PIL mode {image.mode} image with values outside the 16-bit range.")
        array = array.astype(np.uint16)
    elif image.mode == "F":
        check_finite(array, name)
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(
                f"{name} is a float image (PIL mode F) with values in [{array.min():.3g}, {array.max():.3g}]; float "
                "images are read as values in [0, 1]: save it as an 8- or 16-bit image, or scale it to [0, 1]."
            )
    return array


def pil_to_unit_array(image: Image.Image, name: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """A PIL image -> `(H, W, 3)` float32 in [0, 1] by the module's reading rules (the image processor's too).

    Grey is repeated into three channels and alpha is dropped, as PIL's `convert("RGB")` does.

    Raises:
        ValueError: Naming `name`: several frames, above `max_pixels`, float values outside [0, 1] or not finite,
            mode I outside 0..65535, a mode that cannot become RGB, or pixels that cannot be decoded.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"{name} is a {type(image).__name__}; expected a PIL image.")
    pixels = to_unit_range(pil_to_array(image, name, max_pixels), name)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[-1] == 1:
        return np.repeat(pixels, 3, axis=-1)
    return np.ascontiguousarray(pixels[..., :3])


def check_single_frame(image: Image.Image, name: str) -> None:
    """Refuses a multi-page TIFF or an animated GIF/PNG/WebP: only one frame would be scored, silently."""
    frames = getattr(image, "n_frames", 1)
    if frames > 1 and image.format not in _FIRST_FRAME_FORMATS:
        kind = {"TIFF": "a multi-page TIFF"}.get(image.format, f"an animated {image.format or 'image'}")
        raise ValueError(
            f"{name} has {frames} frames ({kind}); only single-frame images are read: save each frame as its own "
            "image file."
        )


def open_image(path: str | os.PathLike, name: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """An image file -> a decoded, upright PIL image; frames and size are checked from the header first."""
    if not os.path.isfile(path):
        raise ValueError(
            f"{name} is the string {str(path)!r}, which is not an existing image file; expected {EXPECTED}."
        )
    described = f"{name}: {str(path)!r}" if os.path.basename(path) not in name else name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides, below
            opened = Image.open(path)
    except Image.DecompressionBombError as error:
        raise ValueError(f"{described} is too large to open safely ({error}); Pillow refuses it.") from error
    except Exception as error:  # PIL raises many types for broken files
        raise ValueError(f"{name}: cannot read image file {str(path)!r}: {error}") from error
    with opened:
        check_single_frame(opened, described)
        check_pixel_count(opened.size[::-1], described, max_pixels)
        return _decoded(lambda: ImageOps.exif_transpose(opened), f"{name}: cannot read image file {str(path)!r}")


def _decoded(decode: Any, description: str) -> Image.Image:
    """`decode()` (which loads the pixels), with PIL's errors for broken data turned into a ValueError."""
    try:
        return decode()
    except Exception as error:  # PIL raises many types for broken files
        prefix = description if "cannot read" in description else f"{description}: cannot decode the image"
        raise ValueError(f"{prefix}: {error}") from error


def to_unit_range(array: np.ndarray, name: str) -> np.ndarray:
    """Scales by the dtype, never by the content: uint8 /255, uint16 /65535, bool 0/1, floats must lie in [0, 1]."""
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        check_finite(array, name)
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(
                f"{name} is a float array with values in [{array.min():.3g}, {array.max():.3g}]; float images must "
                "lie in [0, 1] (pass uint8 for 0..255, uint16 for 0..65535)."
            )
        return array.astype(np.float32)
    raise TypeError(
        f"{name} has dtype {array.dtype}; expected uint8 (0..255), uint16 (0..65535), bool, or float in [0, 1]: "
        "the dtype states the bit depth, so cast other integer types to one of these."
    )


def check_finite(array: np.ndarray, name: str) -> None:
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN.")
    if np.isinf(array).any():
        raise ValueError(f"{name} contains inf.")


__all__ = ["ARRAY_TYPES", "DEFAULT_MAX_IMAGE_PIXELS", "EXPECTED", "ImageLike", "as_list", "check_finite",
           "check_pixel_count", "check_single_frame", "item_name", "open_image", "pil_to_array", "pil_to_unit_array",
           "to_array", "to_channels_first", "to_unit_range", "with_file_name"]  # fmt: skip
