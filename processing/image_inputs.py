"""Turning what users pass as images (PIL images, numpy arrays, torch tensors, paths) into arrays, with named errors.

Pixels are scaled by their bit depth, never by their content (uint8 /255, uint16 and PIL's 16-bit modes /65535);
a file opened here, or a PIL image straight from `Image.open`, is made upright by its EXIF orientation once.

Example:
    ```python
    >>> array = to_unit_range(to_array("part.png", "images[0]"), "images[0]")  # (H, W, C) float32 in [0, 1]
    ```
"""

from __future__ import annotations  # annotations name torch.Tensor, which the numpy-only path never imports

import os
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

try:
    import torch
except ImportError:  # the numpy path serves the torch-free runners of exported models
    torch = None

EXPECTED = "a PIL image, a numpy array or torch tensor of shape (H, W), (H, W, C) or (C, H, W), or an image path"
# PIL modes read as they are; any other mode (P, LA, CMYK, ...) is converted to RGB first.
_NATIVE_MODES = ("1", "L", "RGB", "RGBA", "I;16", "I;16L", "I;16B", "I;16N", "I", "F")
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


def to_array(image: ImageLike, name: str) -> np.ndarray:
    """Path, PIL image or torch tensor -> numpy array in a dtype that states the bit depth (PIL `I` -> uint16)."""
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image, name)
    if isinstance(image, Image.Image):
        if isinstance(image, ImageFile.ImageFile):  # straight from Image.open: make the pixels upright, once
            image = ImageOps.exif_transpose(image)
        if image.mode not in _NATIVE_MODES:
            image = image.convert("RGB")
        array = np.asarray(image)
        if image.mode.startswith("I"):  # I;16 variants and I (how PIL holds 16-bit PNG/TIFF): 16-bit
            if array.size and (array.min() < 0 or array.max() > 65535):
                raise ValueError(f"{name} is a PIL mode {image.mode} image with values outside the 16-bit range.")
            array = array.astype(np.uint16)
        return array
    if torch is not None and isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        return image.float().numpy() if image.is_floating_point() else image.numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} is a {type(image).__name__}; expected {EXPECTED}.")
    return image


def open_image(path: str | os.PathLike, name: str) -> Image.Image:
    if not os.path.isfile(path):
        raise ValueError(
            f"{name} is the string {str(path)!r}, which is not an existing image file; expected {EXPECTED}."
        )
    try:
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image)  # a loaded copy, upright
    except Exception as error:  # PIL raises many types for broken files
        raise ValueError(f"{name}: cannot read image file {str(path)!r}: {error}") from error


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


__all__ = ["ARRAY_TYPES", "EXPECTED", "ImageLike", "as_list", "check_finite", "item_name", "open_image", "to_array",
           "to_unit_range"]  # fmt: skip
