"""The pictures of predictions: the overlay of one prediction (the image under its anomaly map, the contours, a
colour bar, the verdict) and the evaluation's heatmap (the same overlay, with the ground truth outlined).

The map is drawn on a fixed probability scale (0..1, never stretched per image), so pictures of different images
compare; colours come from one of matplotlib's perceptually uniform colour maps, `DEFAULT_COLOUR_MAP` for every
picture of this project (overlays, evaluation heatmaps, the app's raw map). A picture's size is bounded whatever the
image's size and shape (`MAX_DISPLAY_SIDE`): a huge or very long image is reduced before it is coloured. Nothing here
needs torch: tensors are read through `np.asarray`.

Example:
    ```python
    >>> picture = draw_overlay(image, anomaly_map, pred_mask, score=0.83, decision="NG", threshold=0.62,
    ...                        title="line3/000.png", pixel_threshold=0.55)
    >>> picture.save("overlays/000.png")
    >>> save_heatmap(Path("heatmaps/bottle_0001.png"), image, mask, anomaly_map, 0.83, "NG", 0.62,
    ...              title="bottle/test/broken_large/000.png", pixel_threshold=0.55)  # (3, H, W), (H, W), (H, W)
    ```
"""

import functools
from pathlib import Path

import matplotlib
import numpy as np
import numpy.typing as npt
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

DECISION_COLOURS = {"OK": (46, 125, 50), "NG": (198, 40, 40)}
OTHER_DECISION_COLOUR = (97, 97, 97)  # UNCALIBRATED and anything else
CONTOUR_COLOUR = (0, 229, 255)
BACKGROUND = (255, 255, 255)
TEXT = (33, 33, 33)
MUTED_TEXT = (97, 97, 97)
GROUND_TRUTH_COLOUR = (118, 255, 3)
MIN_DISPLAY_SIDE = 480  # smaller images are enlarged so that the text stays readable
MAX_DISPLAY_SIDE = 1600  # larger images are reduced: an overlay's size is bounded whatever the image's shape
_ROWS_AT_ONCE = 256
DEFAULT_COLOUR_MAP = "inferno"
DEFAULT_ALPHA = 0.7


def draw_overlay(
    image: Image.Image | np.ndarray,
    anomaly_map: np.ndarray,
    pred_mask: np.ndarray | None,
    score: float,
    decision: str,
    threshold: float | None,
    title: str,
    pixel_threshold: float | None = None,
    colormap: str = DEFAULT_COLOUR_MAP,
    alpha: float = DEFAULT_ALPHA,
    ground_truth: np.ndarray | None = None,
) -> Image.Image:
    """Draws one prediction as a picture of bounded size, whatever the image's size and shape.

    Args:
        image: The input at its own size: a PIL image, or an array `(H, W)`, `(H, W, 3)` (uint8, or float in [0, 1])
            or `(3, H, W)` float in [0, 1] (an array `(3, H, 3)` counts as `(H, W, 3)`: pass `(H, W, 3)` when unsure).
        anomaly_map: `(H, W)` pixel anomaly probabilities in [0, 1] at the image's size.
        pred_mask: `(H, W)` bool, the thresholded map (its outline is drawn in cyan), or None.
        score: The image anomaly score.
        decision: `OK` (green), `NG` (red), or another word such as `UNCALIBRATED` (grey).
        threshold: The image threshold the decision used, or None.
        title: The headline, usually the file name (control characters are shown as `?`).
        pixel_threshold: Marked on the colour bar when given.
        colormap: A matplotlib colour map name.
        alpha: Weight of the colour map over the image where the map is 1, in [0, 1]. The weight falls with the
            square root of the map value, so normal regions show the image and anomalous ones the colour.
        ground_truth: `(H, W)` ground-truth mask (nonzero = anomalous), outlined in `GROUND_TRUTH_COLOUR`, or None.

    Returns:
        An RGB image: a header (title, verdict, score), the overlay at the image's aspect ratio with its longer side
        between `MIN_DISPLAY_SIDE` and `MAX_DISPLAY_SIDE` pixels (smaller images enlarged, larger ones reduced) and a
        colour bar on the right; at most about `MAX_DISPLAY_SIDE * 1.3` pixels on either side.

    Raises:
        ValueError: `anomaly_map`, `pred_mask` or `ground_truth` does not match the image's size.
    """
    rgb = _as_rgb(image)
    height, width = rgb.shape[:2]
    for name, array in (("anomaly_map", anomaly_map), ("pred_mask", pred_mask), ("ground_truth", ground_truth)):
        if array is not None and np.shape(array) != (height, width):
            raise ValueError(f"{name} has shape {np.shape(array)}, the image is {(height, width)} (H, W)")
    size = display_size(height, width)
    unit = max(size) / 48  # every length of the layout derives from this, so large and small images look alike

    panel = _panel(rgb, np.asarray(anomaly_map, dtype=np.float32), size, colormap, alpha)
    # the ground truth last and thinner: where both outlines coincide, each stays visible
    for mask, colour, thickness in ((pred_mask, CONTOUR_COLOUR, 4), (ground_truth, GROUND_TRUTH_COLOUR, 8)):
        if mask is not None and np.any(mask):
            _draw_contour(panel, np.asarray(mask) > 0, max(2, round(unit / thickness)), colour)

    fonts = (_font(round(unit), bold=False), _font(round(unit * 1.15), bold=True), _font(round(unit * 1.6), bold=True))
    header_height, bar_width = round(unit * 4.2), round(unit * 5.5)
    body_height = max(size[1], round(unit * 12))  # room for the colour bar beside a flat image
    canvas_width = max(size[0] + bar_width, round(unit * 36))  # room for the header above a narrow image
    canvas = Image.new("RGB", (canvas_width, header_height + body_height), BACKGROUND)
    canvas.paste(panel, (0, header_height))
    draw = ImageDraw.Draw(canvas)
    details = [f"score {score:.3f}" if score is not None and np.isfinite(score) else "score n/a"]
    details += [] if threshold is None else [f"threshold {threshold:.3f}"]
    details += [] if pixel_threshold is None else [f"cyan: pixel threshold {pixel_threshold:.3f}"]
    details += [] if ground_truth is None else ["green: ground truth"]
    _draw_header(draw, canvas.width, header_height, unit, _printable(title), "   ·   ".join(details), decision, fonts)
    bar_box = (
        size[0] + round(unit * 0.8),
        header_height + round(unit * 2),
        size[0] + round(unit * 1.8),
        canvas.height - round(unit),
    )
    _draw_colour_bar(canvas, draw, bar_box, colormap, pixel_threshold, fonts[0], unit)
    return canvas


def display_size(height: int, width: int) -> tuple[int, int]:
    """`(width, height)` of an image's panel in its overlay: its aspect ratio, the longer side clamped to
    `[MIN_DISPLAY_SIDE, MAX_DISPLAY_SIDE]`, each side at least 1 pixel."""
    longer = max(height, width)
    scale = min(max(1.0, MIN_DISPLAY_SIDE / longer), MAX_DISPLAY_SIDE / longer)
    return max(1, round(width * scale)), max(1, round(height * scale))


def save_heatmap(
    path: Path,
    image: npt.ArrayLike,
    mask: npt.ArrayLike,
    anomaly_map: npt.ArrayLike,
    score: float,
    decision: str,
    threshold: float | None,
    title: str,
    pixel_threshold: float | None = None,
    colormap: str = DEFAULT_COLOUR_MAP,
    alpha: float = DEFAULT_ALPHA,
) -> None:
    """Writes an evaluation heatmap: the overlay of `draw_overlay` (same colour map, colour bar, score, decision and
    title) with the ground truth outlined and the predicted mask (at `pixel_threshold`) outlined.

    Args:
        path: The PNG to write; its folder is created.
        image: `(3, H, W)` in [0, 1]: a numpy array or a CPU torch tensor.
        mask: `(H, W)` ground truth, nonzero where anomalous.
        anomaly_map: `(H, W)` pixel anomaly probabilities in [0, 1].
        score: The image anomaly score.
        decision: `OK`, `NG`, or another word (`UNCALIBRATED` without a threshold).
        threshold: The image threshold the decision used, or None.
        title: The headline: the image's name.
        pixel_threshold: The pixel threshold of the predicted contour, or None (no contour).
        colormap: A matplotlib colour map name.
        alpha: Weight of the colour map where the map is 1, as in `draw_overlay`.

    Raises:
        ValueError: `image` is not `(3, H, W)`, or `mask` or `anomaly_map` does not match its size.
    """
    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got shape {pixels.shape}")
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    pred_mask = None if pixel_threshold is None else anomaly_map >= np.float32(pixel_threshold)
    picture = draw_overlay(
        pixels.transpose(1, 2, 0), anomaly_map, pred_mask, score, decision, threshold, title, pixel_threshold,
        colormap, alpha, ground_truth=np.asarray(mask),
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


@functools.lru_cache(maxsize=8)
def colour_table(colormap: str) -> np.ndarray:
    """`(256, 3)` float RGB in 0..255 of a matplotlib colour map sampled at 256 evenly spaced values."""
    return colormaps[colormap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0


def _colour_over(rgb: np.ndarray, anomaly_map: np.ndarray, colormap: str, alpha: float) -> np.ndarray:
    """`(H, W, 3)` 0..255 image under its coloured `(H, W)` map -> uint8; the colour's weight is
    `alpha * sqrt(map)`, so normal regions show the image and anomalous ones the colour (NaN counts as 0)."""
    values = np.clip(np.nan_to_num(anomaly_map, nan=0.0), 0.0, 1.0).astype(np.float32)
    colours = colour_table(colormap).astype(np.float32)[np.round(values * 255).astype(np.intp)]
    weight = (np.float32(alpha) * np.sqrt(values))[..., None]
    # float32: half the memory traffic of float64, the same picture to within one grey level
    blended = rgb.astype(np.float32, copy=False) * (1 - weight) + colours * weight
    return np.round(blended).astype(np.uint8)


def _panel(rgb: np.ndarray, anomaly_map: np.ndarray, size: tuple[int, int], colormap: str, alpha: float) -> Image.Image:
    """The image under its coloured map at the display `size` `(width, height)`: image and map are resized first
    (bilinear; Pillow filters when reducing), so a huge image costs its display size, not its own."""
    shown = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    values = Image.fromarray(np.ascontiguousarray(anomaly_map, dtype=np.float32))  # mode F
    values = np.asarray(values.resize(size, Image.Resampling.BILINEAR))
    return Image.fromarray(_colour_over(shown, values, colormap, alpha))


def as_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """Any image [`draw_overlay`] takes -> the uint8 `(H, W, 3)` picture it draws (a float `(3, H, W)` in [0, 1]
    rounded to 0..255): an overlay drawn from it is the overlay drawn from `image`."""
    return _as_rgb(image)


def _as_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """Any supported image -> uint8 `(H, W, 3)`."""
    if isinstance(image, Image.Image):
        if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit: scale by the bit depth, not by clipping
            array = np.asarray(image, dtype=np.float64) / (65535.0 if image.mode.startswith("I") else 1.0)
            image = np.clip(array, 0.0, 1.0)
        else:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise ValueError(f"image must be (H, W), (H, W, 3) or (3, H, W), got shape {array.shape}")
    rgb = np.empty((*array.shape[:2], 3), dtype=np.uint8)
    for top in range(0, array.shape[0], _ROWS_AT_ONCE):  # a few rows at a time: no float copy of a huge image
        rows = array[top : top + _ROWS_AT_ONCE]
        rgb[top : top + _ROWS_AT_ONCE] = rows if rows.dtype == np.uint8 else np.round(np.clip(rows, 0.0, 1.0) * 255.0)
    return rgb


def _draw_contour(panel: Image.Image, mask: np.ndarray, thickness: int, colour: tuple[int, int, int]) -> None:
    """Outlines the mask's regions on `panel` in `colour`; the mask is resized bilinearly to the panel and cut at
    half, so its outline follows the regions smoothly instead of in pixel steps."""
    mask = Image.fromarray(mask.astype(np.uint8) * 255)
    mask = np.asarray(mask.resize(panel.size, Image.Resampling.BILINEAR)) >= 128
    outline = mask & ~ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
    pixels = np.asarray(panel).copy()
    pixels[outline] = colour
    panel.paste(Image.fromarray(pixels))


def display_name(path: Path) -> str:
    """A readable title for a picture of `path`: the file with its folder (`good/000.png`), not a long absolute path;
    control characters shown as `?`."""
    path = Path(path)
    shown = Path(*path.parts[-2:]).as_posix() if len(path.parts) > 1 and path.parent.name else path.name
    return _printable(shown)


def _printable(text: str) -> str:
    """`text` with control characters (a newline in a file name) shown as `?`: Pillow draws one line only."""
    return "".join(character if character.isprintable() else "?" for character in text)


def _draw_header(draw, width, height, unit, title, details, decision, fonts) -> None:
    """Title (bold) over the details line on the left; a coloured verdict badge on the right."""
    font, bold, big = fonts
    badge_colour = DECISION_COLOURS.get(decision, OTHER_DECISION_COLOUR)
    badge_width = draw.textlength(decision, font=big) + unit * 1.6
    badge = (width - unit * 0.6 - badge_width, unit * 0.5, width - unit * 0.6, height - unit * 0.5)
    draw.rounded_rectangle(badge, radius=unit * 0.4, fill=badge_colour)
    draw.text(
        ((badge[0] + badge[2]) / 2, (badge[1] + badge[3]) / 2), decision, font=big, fill=(255, 255, 255), anchor="mm"
    )
    room = badge[0] - unit * 1.4
    draw.text((unit * 0.6, height * 0.36), _fit(draw, title, bold, room), font=bold, fill=TEXT, anchor="lm")
    draw.text((unit * 0.6, height * 0.72), _fit(draw, details, font, room), font=font, fill=MUTED_TEXT, anchor="lm")


def _draw_colour_bar(canvas, draw, box, colormap, pixel_threshold, font, unit) -> None:
    """A vertical bar from 0 (bottom) to 1 (top) with ticks, and the pixel threshold marked when given."""
    left, top, right, bottom = box
    ramp = colour_table(colormap)[::-1].astype(np.uint8)[:, None, :]  # top = 1
    canvas.paste(Image.fromarray(ramp).resize((right - left, bottom - top), Image.Resampling.BILINEAR), (left, top))
    draw.rectangle(box, outline=TEXT, width=1)
    draw.text((left, top - unit * 0.6), "anomaly", font=font, fill=MUTED_TEXT, anchor="ls")
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = bottom - value * (bottom - top)
        draw.line((right, y, right + unit * 0.4, y), fill=TEXT, width=max(1, round(unit / 12)))
        draw.text((right + unit * 0.6, y), f"{value:.2f}", font=font, fill=TEXT, anchor="lm")
    if pixel_threshold is not None:
        y = bottom - float(np.clip(pixel_threshold, 0.0, 1.0)) * (bottom - top)
        draw.line((left - unit * 0.3, y, right + unit * 0.3, y), fill=CONTOUR_COLOUR, width=max(2, round(unit / 6)))


def _fit(draw, text: str, font, room: float) -> str:
    """`text`, shortened from the left with an ellipsis until it fits in `room` pixels."""
    if draw.textlength(text, font=font) <= room:
        return text
    while len(text) > 1 and draw.textlength("…" + text, font=font) > room:
        text = text[1:]
    return "…" + text


@functools.lru_cache(maxsize=16)
def _font(size: int, bold: bool) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib) at `size` pixels; Pillow's default font when it is missing."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)
    except OSError:
        return ImageFont.load_default(size)


__all__ = [
    "CONTOUR_COLOUR",
    "DECISION_COLOURS",
    "DEFAULT_COLOUR_MAP",
    "GROUND_TRUTH_COLOUR",
    "MAX_DISPLAY_SIDE",
    "MIN_DISPLAY_SIDE",
    "as_rgb",
    "colour_table",
    "display_name",
    "display_size",
    "draw_overlay",
    "save_heatmap",
]
