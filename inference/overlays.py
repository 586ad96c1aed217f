"""The pictures of predictions: the overlay of one prediction (the image under its anomaly map, the contour, a
colour bar, the verdict) and the evaluation's heatmap (image | ground truth | anomaly map over the image).

The map is drawn on a fixed probability scale (0..1, never stretched per image), so pictures of different images
compare; colours come from one of matplotlib's perceptually uniform colour maps, `DEFAULT_COLOUR_MAP` for every
picture of this project (overlays, evaluation heatmaps, the app's raw map). Nothing here needs torch: tensors are
read through `np.asarray`.

Example:
    ```python
    >>> picture = draw_overlay(image, anomaly_map, pred_mask, score=0.83, decision="NG", threshold=0.62,
    ...                        title="line3/000.png", pixel_threshold=0.55)
    >>> picture.save("overlays/000.png")
    >>> save_heatmap(Path("heatmaps/bottle_0001.png"), image, mask, anomaly_map)  # (3, H, W), (H, W), (H, W)
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
MIN_DISPLAY_SIDE = 480  # smaller images are enlarged so that the text stays readable
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
) -> Image.Image:
    """Draws one prediction as a picture.

    Args:
        image: The input at its own size: a PIL image, or an array `(H, W)`, `(H, W, 3)` (uint8, or float in [0, 1])
            or `(3, H, W)` float in [0, 1].
        anomaly_map: `(H, W)` pixel anomaly probabilities in [0, 1] at the image's size.
        pred_mask: `(H, W)` bool, the thresholded map (its outline is drawn), or None.
        score: The image anomaly score.
        decision: `OK` (green), `NG` (red), or another word such as `UNCALIBRATED` (grey).
        threshold: The image threshold the decision used, or None.
        title: The headline, usually the file name.
        pixel_threshold: Marked on the colour bar when given.
        colormap: A matplotlib colour map name.
        alpha: Weight of the colour map over the image where the map is 1, in [0, 1]. The weight falls with the
            square root of the map value, so normal regions show the image and anomalous ones the colour.

    Returns:
        An RGB image: a header (title, verdict, score), the overlay at the image's size (enlarged to at least
        `MIN_DISPLAY_SIDE` pixels on its longer side) and a colour bar on the right.

    Raises:
        ValueError: `anomaly_map` or `pred_mask` does not match the image's size.
    """
    rgb = _as_rgb(image)
    height, width = rgb.shape[:2]
    if anomaly_map.shape != (height, width):
        raise ValueError(f"anomaly_map has shape {anomaly_map.shape}, the image is {(height, width)} (H, W)")
    if pred_mask is not None and pred_mask.shape != (height, width):
        raise ValueError(f"pred_mask has shape {pred_mask.shape}, the image is {(height, width)} (H, W)")
    scale = max(1.0, MIN_DISPLAY_SIDE / max(height, width))
    size = (round(width * scale), round(height * scale))
    unit = max(size) / 48  # every length of the layout derives from this, so large and small images look alike

    panel = Image.fromarray(_colour_over(rgb, anomaly_map, colormap, alpha)).resize(size, Image.Resampling.BILINEAR)
    if pred_mask is not None and pred_mask.any():
        _draw_contour(panel, pred_mask, max(2, round(unit / 4)))

    fonts = (_font(round(unit), bold=False), _font(round(unit * 1.15), bold=True), _font(round(unit * 1.6), bold=True))
    header_height, bar_width = round(unit * 4.2), round(unit * 5.5)
    canvas = Image.new("RGB", (size[0] + bar_width, size[1] + header_height), BACKGROUND)
    canvas.paste(panel, (0, header_height))
    draw = ImageDraw.Draw(canvas)
    details = [f"score {score:.3f}"]
    details += [] if threshold is None else [f"threshold {threshold:.3f}"]
    details += [] if pixel_threshold is None else [f"contour: pixel threshold {pixel_threshold:.3f}"]
    _draw_header(draw, canvas.width, header_height, unit, title, "   ·   ".join(details), decision, fonts)
    bar_box = (
        size[0] + round(unit * 0.8),
        header_height + round(unit * 2),
        size[0] + round(unit * 1.8),
        canvas.height - round(unit),
    )
    _draw_colour_bar(canvas, draw, bar_box, colormap, pixel_threshold, fonts[0], unit)
    return canvas


def save_heatmap(
    path: Path,
    image: npt.ArrayLike,
    mask: npt.ArrayLike,
    anomaly_map: npt.ArrayLike,
    colormap: str = DEFAULT_COLOUR_MAP,
    alpha: float = DEFAULT_ALPHA,
) -> None:
    """Writes image | ground truth | anomaly map over the image, side by side, on the fixed 0..1 scale.

    Args:
        path: The PNG to write; its folder is created.
        image: `(3, H, W)` in [0, 1] (or any array `draw_overlay` takes): a numpy array or a CPU torch tensor.
        mask: `(H, W)` ground truth, nonzero where anomalous.
        anomaly_map: `(H, W)` pixel anomaly probabilities in [0, 1].
        colormap: A matplotlib colour map name.
        alpha: Weight of the colour map where the map is 1, as in `draw_overlay`.

    Raises:
        ValueError: `mask` or `anomaly_map` does not match the image's size.
    """
    rgb = _as_rgb(np.asarray(image))
    truth, anomaly_map = np.asarray(mask), np.asarray(anomaly_map, dtype=np.float64)
    for name, array in (("mask", truth), ("anomaly_map", anomaly_map)):
        if array.shape != rgb.shape[:2]:
            raise ValueError(f"{name} has shape {array.shape}, the image is {rgb.shape[:2]} (H, W)")
    truth = np.repeat((truth > 0)[..., None], 3, axis=2).astype(np.uint8) * 255
    overlay = _colour_over(rgb, anomaly_map, colormap, alpha)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([rgb.round().astype(np.uint8), truth, overlay], axis=1)).save(path)


@functools.lru_cache(maxsize=8)
def colour_table(colormap: str) -> np.ndarray:
    """`(256, 3)` float RGB in 0..255 of a matplotlib colour map sampled at 256 evenly spaced values."""
    return colormaps[colormap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0


def _colour_over(rgb: np.ndarray, anomaly_map: np.ndarray, colormap: str, alpha: float) -> np.ndarray:
    """`(H, W, 3)` 0..255 image under its coloured `(H, W)` map -> uint8; the colour's weight is
    `alpha * sqrt(map)`, so normal regions show the image and anomalous ones the colour."""
    values = np.clip(anomaly_map, 0.0, 1.0)
    colours = colour_table(colormap)[np.round(values * 255).astype(np.intp)]
    weight = alpha * np.sqrt(values)[..., None]
    return np.round((1 - weight) * rgb + weight * colours).astype(np.uint8)


def _as_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """Any supported image -> float `(H, W, 3)` in 0..255."""
    if isinstance(image, Image.Image):
        if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit: scale by the bit depth, not by clipping
            array = np.asarray(image, dtype=np.float64) / (65535.0 if image.mode.startswith("I") else 1.0)
            image = np.clip(array, 0.0, 1.0)
        else:
            return np.asarray(image.convert("RGB"), dtype=np.float64)
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"image must be (H, W), (H, W, 3) or (3, H, W), got shape {array.shape}")
    return array.astype(np.float64) if array.dtype == np.uint8 else np.clip(array, 0.0, 1.0) * 255.0


def _draw_contour(panel: Image.Image, pred_mask: np.ndarray, thickness: int) -> None:
    """Outlines the mask's regions on `panel`; an enlarged mask is resized bilinearly and cut at half, so its
    outline follows the regions smoothly instead of in pixel steps."""
    mask = Image.fromarray(pred_mask.astype(np.uint8) * 255)
    mask = np.asarray(mask.resize(panel.size, Image.Resampling.BILINEAR)) >= 128
    outline = mask & ~ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
    pixels = np.asarray(panel).copy()
    pixels[outline] = CONTOUR_COLOUR
    panel.paste(Image.fromarray(pixels))


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


__all__ = ["DECISION_COLOURS", "DEFAULT_COLOUR_MAP", "MIN_DISPLAY_SIDE", "colour_table", "draw_overlay", "save_heatmap"]
