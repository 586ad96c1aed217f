"""Letterboxed and tiled model inputs, and their anomaly maps and image scores back at each image's own size.

`squash` (the processor's default) resizes a whole image to the model's input size. The two layouts here keep the
image's proportions:

- letterbox: the image is resized to fit inside the input and centred; the rest is filled with a neutral colour. The
  map is cropped back to the content before it is resized to the image size, so the padding never counts.
- tiles: square windows of `tile_size` image pixels, `tile_overlap` apart (a fraction of the tile), each resized
  to the input size. Their maps are resized back to `tile_size` and averaged with weights that fall linearly over
  the overlap towards each tile border, so seams fade out.

The image score of both is the mean of the top k pixels of the merged map (the content crop at the input
resolution, or the blended map at the tiled resolution), with k scaled to its area:
`k = round(image_score_top_k * area / input_area)`, the same fraction of pixels as CLIP-ADA's top-k at the input size.

Bounds: `tile_size` from 16 to 4096 image pixels, `tile_overlap` at most 0.75, the tiles of one image at most
`MAX_TILE_INPUT_PIXELS` model-input pixels (1024 tiles at 224 px), and an image enlarged to hold one tile at most
`MAX_WORKING_PIXELS`; a layout beyond them is refused with an error naming the image size and the settings.

Only numpy and PIL are used, so the exported-model runners can use it without torch.

Example:
    ```python
    >>> layout = tile_layout((768, 1024), input_size=(224, 224), tile_size=224, tile_overlap=0.25)
    >>> layout.num_inputs  # 5 rows x 6 columns of tiles
    30
    >>> tiles = cut_inputs(pixels, layout, resize, fill=(0.5, 0.5, 0.5))   # 30 arrays (3, 224, 224)
    >>> maps, scores = reassemble(anomaly_maps, [layout], image_score_top_k=500)  # [(768, 1024)], (1,)
    ```
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .image_inputs import DEFAULT_MAX_IMAGE_PIXELS

RESIZE_MODES = ("squash", "letterbox")
# A tile smaller than one 16-px patch of a CLIP ViT-B/16 holds too little of the image to tell anything; above
# 4096 px a tile is larger than nearly any image, so every image is enlarged to gigapixels to hold one.
MIN_TILE_SIZE, MAX_TILE_SIZE = 16, 4096
# Overlap multiplies the tiles by 1 / (1 - overlap)^2: 16 x at 0.75, 10^6 x at 0.999, for no better seams.
MAX_TILE_OVERLAP = 0.75
# All tiles of an image go through the model in one forward: 1024 tiles at 224 px, 617 MB as float32 inputs.
MAX_TILE_INPUT_PIXELS = 1024 * 224 * 224
# An image whose short side is below a tile is enlarged to hold one: at most as large as the pixel limit for images.
MAX_WORKING_PIXELS = DEFAULT_MAX_IMAGE_PIXELS
# The paper's K (pixels at the model's input size) for families whose config has no `image_score_top_k`.
DEFAULT_IMAGE_SCORE_TOP_K = 500

# resize(array (C, H, W), (height, width)) -> array (C, height, width)
Resize = Callable[[np.ndarray, tuple[int, int]], np.ndarray]


@dataclass(frozen=True)
class LetterboxLayout:
    """Where one image sits inside its letterboxed model input.

    Attributes:
        image_size: `(height, width)` of the original image.
        input_size: `(height, width)` of the model input.
        content_box: `(top, left, height, width)` of the resized image inside the input.
    """

    image_size: tuple[int, int]
    input_size: tuple[int, int]
    content_box: tuple[int, int, int, int]
    num_inputs: int = 1


@dataclass(frozen=True)
class TileLayout:
    """How one image was cut into tiles.

    Attributes:
        image_size: `(height, width)` of the original image.
        input_size: `(height, width)` of the model input each tile is resized to.
        working_size: `(height, width)` of the image the tiles are cut from: the image's own size, or the image
            enlarged (proportions kept) until its short side holds one tile.
        tile_size: Side of a tile in working pixels.
        overlap: Pixels the blending weights fade over at each tile border (working pixels).
        tile_origins: `(top, left)` of every tile in working pixels, row by row.
    """

    image_size: tuple[int, int]
    input_size: tuple[int, int]
    working_size: tuple[int, int]
    tile_size: int
    overlap: int
    tile_origins: tuple[tuple[int, int], ...]

    @property
    def num_inputs(self) -> int:
        return len(self.tile_origins)


def letterbox_layout(image_size: Sequence[int], input_size: Sequence[int]) -> LetterboxLayout:
    """The largest proportional fit of `image_size` inside `input_size`, centred (both `(height, width)`)."""
    (height, width), (input_height, input_width) = image_size, input_size
    scale = min(input_height / height, input_width / width)
    content_height = min(input_height, max(1, round(height * scale)))
    content_width = min(input_width, max(1, round(width * scale)))
    top, left = (input_height - content_height) // 2, (input_width - content_width) // 2
    return LetterboxLayout(
        (int(height), int(width)), (int(input_height), int(input_width)), (top, left, content_height, content_width)
    )


def tile_count(length: int, tile_size: int, overlap: int) -> int:
    """How many tiles cover `length` pixels with neighbours sharing at least `overlap` pixels."""
    if length <= tile_size:
        return 1
    return math.ceil((length - tile_size) / (tile_size - overlap)) + 1


def tile_origins(length: int, tile_size: int, overlap: int) -> list[int]:
    """Evenly spread starts of tiles covering `length` pixels, neighbours sharing at least `overlap` pixels."""
    count = tile_count(length, tile_size, overlap)
    if count == 1:
        return [0]
    return [round(index * (length - tile_size) / (count - 1)) for index in range(count)]


def tile_layout(
    image_size: Sequence[int], input_size: Sequence[int], tile_size: int, tile_overlap: float
) -> TileLayout:
    """Tiles of `tile_size` image pixels, overlapping by `tile_overlap` of a tile (a fraction in [0, 1)).

    Raises:
        ValueError: The image enlarged to hold one tile would exceed `MAX_WORKING_PIXELS`, or its tiles
            `MAX_TILE_INPUT_PIXELS`; the message names the image size, `tile_size` and `tile_overlap`.
    """
    height, width = int(image_size[0]), int(image_size[1])
    scale = max(1.0, tile_size / min(height, width))  # a side shorter than a tile: enlarge, keeping proportions
    working_size = (max(tile_size, round(height * scale)), max(tile_size, round(width * scale)))
    if scale > 1 and working_size[0] * working_size[1] > MAX_WORKING_PIXELS:
        raise ValueError(
            f"a {width}x{height} image would be enlarged to {working_size[1]}x{working_size[0]} pixels for its "
            f"short side to hold one tile of `tile_size` {tile_size}, above {MAX_WORKING_PIXELS:,} pixels: use a "
            "smaller `tile_size` (or no tiles) for images this thin."
        )
    overlap = min(round(tile_overlap * tile_size), tile_size - 1)
    count = math.prod(tile_count(length, tile_size, overlap) for length in working_size)
    input_pixels = int(input_size[0]) * int(input_size[1])
    if count * input_pixels > MAX_TILE_INPUT_PIXELS:
        raise ValueError(
            f"`tile_size` {tile_size} with `tile_overlap` {tile_overlap:g} cuts a {width}x{height} image into "
            f"{count:,} tiles of {input_size[1]}x{input_size[0]} model-input pixels, above the bound of "
            f"{MAX_TILE_INPUT_PIXELS // input_pixels:,} tiles per image at this input size: use a larger "
            "`tile_size` or a smaller `tile_overlap`, or resize the image."
        )
    rows, columns = (tile_origins(length, tile_size, overlap) for length in working_size)
    origins = tuple((top, left) for top in rows for left in columns)
    return TileLayout((height, width), tuple(int(v) for v in input_size), working_size, tile_size, overlap, origins)


def image_layouts(
    image_sizes: Sequence[Sequence[int]],
    input_size: Sequence[int],
    resize_mode: str = "squash",
    tile_size: int | None = None,
    tile_overlap: float = 0.25,
    names: Sequence[str] | None = None,
) -> list[LetterboxLayout | TileLayout] | None:
    """Each image's layout: tiles when `tile_size` is set, else letterbox for `resize_mode="letterbox"`; `None` for
    squash. Sizes are `(height, width)`; `names` (one per image) start the message of an image refused."""
    if tile_size:
        names = names or [f"images[{index}]" for index in range(len(image_sizes))]
        return [
            _named_tile_layout(size, input_size, tile_size, tile_overlap, name)
            for size, name in zip(image_sizes, names)
        ]
    if resize_mode == "letterbox":
        return [letterbox_layout(image_size, input_size) for image_size in image_sizes]
    return None


def _named_tile_layout(
    image_size: Sequence[int], input_size: Sequence[int], tile_size: int, tile_overlap: float, name: str
) -> TileLayout:
    try:
        return tile_layout(image_size, input_size, tile_size, tile_overlap)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


def cut_inputs(
    pixels: np.ndarray, layout: LetterboxLayout | TileLayout, resize: Resize, fill: Sequence[float]
) -> list[np.ndarray]:
    """One image `(C, H, W)` -> its `layout.num_inputs` model inputs `(C, input_height, input_width)`.

    Args:
        pixels: The image (or mask) at its own size.
        layout: From [`letterbox_layout`] or [`tile_layout`] for this image.
        resize: Resizes `(C, h, w)` to a `(height, width)` (the processor's filter for images, nearest for masks).
        fill: Per-channel value of the letterbox padding.
    """
    if isinstance(layout, LetterboxLayout):
        top, left, height, width = layout.content_box
        canvas = np.empty((pixels.shape[0], *layout.input_size), dtype=np.float32)
        canvas[:] = np.asarray(fill, dtype=np.float32).reshape(-1, 1, 1)
        canvas[:, top : top + height, left : left + width] = resize(pixels, (height, width))
        return [canvas]
    working = pixels if tuple(pixels.shape[-2:]) == layout.working_size else resize(pixels, layout.working_size)
    size = layout.tile_size
    tiles = [working[:, top : top + size, left : left + size] for top, left in layout.tile_origins]
    if (size, size) == layout.input_size:
        return [np.ascontiguousarray(tile, dtype=np.float32) for tile in tiles]
    return [resize(tile, layout.input_size) for tile in tiles]


def blend_weights(tile_size: int, overlap: int) -> np.ndarray:
    """`(tile_size, tile_size)` float64 weights: 1 inside, falling linearly to `0.5 / overlap` at the borders over
    `overlap` pixels (all ones without overlap). Never zero, so every pixel has a weight."""
    if overlap == 0:
        return np.ones((tile_size, tile_size))
    position = np.arange(tile_size) + 0.5
    ramp = np.minimum(1.0, np.minimum(position, tile_size - position) / overlap)
    return np.outer(ramp, ramp)


def merge_maps(anomaly_maps: np.ndarray, layout: LetterboxLayout | TileLayout) -> np.ndarray:
    """One image's input maps `(num_inputs, input_height, input_width)` -> one map without padding or seams.

    Returns:
        Letterbox: the content crop at the input resolution `(content_height, content_width)`. Tiles: the blended map
        at the working size `(working_height, working_width)`: sum(weight * tile map) / sum(weight) per pixel.
    """
    if isinstance(layout, LetterboxLayout):
        top, left, height, width = layout.content_box
        return np.asarray(anomaly_maps[0, top : top + height, left : left + width], dtype=np.float32)
    size = layout.tile_size
    weights = blend_weights(size, layout.overlap)
    total = np.zeros(layout.working_size)
    weight_sum = np.zeros(layout.working_size)
    for tile_map, (top, left) in zip(anomaly_maps, layout.tile_origins):
        tile_map = tile_map if tile_map.shape == (size, size) else resize_map(tile_map, (size, size))
        total[top : top + size, left : left + size] += weights * tile_map
        weight_sum[top : top + size, left : left + size] += weights
    return (total / weight_sum).astype(np.float32)


def resize_map(anomaly_map: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of a float map `(h, w)` to `size` `(height, width)` (PIL's 32-bit float mode)."""
    if tuple(anomaly_map.shape) == tuple(size):
        return np.asarray(anomaly_map, dtype=np.float32)
    image = Image.fromarray(np.ascontiguousarray(anomaly_map, dtype=np.float32))
    return np.array(image.resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR))  # a writable copy


def top_k_score(anomaly_map: np.ndarray, image_score_top_k: int, input_size: Sequence[int]) -> float:
    """Mean of the k highest pixels, `k = round(image_score_top_k * map area / input area)` (at least 1)."""
    fraction = image_score_top_k / (input_size[0] * input_size[1])
    k = min(anomaly_map.size, max(1, round(fraction * anomaly_map.size)))
    return float(np.partition(anomaly_map.ravel(), anomaly_map.size - k)[-k:].astype(np.float64).mean())


def reassemble(
    anomaly_maps: np.ndarray,
    layouts: Sequence[LetterboxLayout | TileLayout],
    image_score_top_k: int = DEFAULT_IMAGE_SCORE_TOP_K,
) -> tuple[list[np.ndarray], np.ndarray]:
    """The maps of a whole batch of inputs -> one map per image at its own size and one image score.

    Args:
        anomaly_maps: `(total_inputs, input_height, input_width)`, the inputs of every image in order.
        layouts: One layout per image; their `num_inputs` must add up to `total_inputs`.
        image_score_top_k: Pixels averaged by the image score at the input size (scaled to each merged map's area).

    Returns:
        `(maps, scores)`: B float32 maps `(height_i, width_i)` (bilinear resize of the merged map) and `(B,)` float32.
    """
    expected = sum(layout.num_inputs for layout in layouts)
    if len(anomaly_maps) != expected:
        raise ValueError(f"Got {len(anomaly_maps)} anomaly maps for {len(layouts)} images that have {expected} inputs.")
    maps, scores, start = [], [], 0
    for layout in layouts:
        merged = merge_maps(anomaly_maps[start : start + layout.num_inputs], layout)
        start += layout.num_inputs
        scores.append(top_k_score(merged, image_score_top_k, layout.input_size))
        maps.append(resize_map(merged, layout.image_size))
    return maps, np.asarray(scores, dtype=np.float32)


__all__ = [
    "DEFAULT_IMAGE_SCORE_TOP_K",
    "RESIZE_MODES",
    "LetterboxLayout",
    "TileLayout",
    "blend_weights",
    "cut_inputs",
    "image_layouts",
    "letterbox_layout",
    "merge_maps",
    "reassemble",
    "resize_map",
    "MAX_TILE_INPUT_PIXELS",
    "MAX_TILE_OVERLAP",
    "MAX_TILE_SIZE",
    "MAX_WORKING_PIXELS",
    "MIN_TILE_SIZE",
    "tile_count",
    "tile_layout",
    "tile_origins",
    "top_k_score",
]
