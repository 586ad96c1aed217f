"""What the inspection app shows, without Gradio: uploads scored once, then rows, overlays and maps at any threshold.

The model runs once per upload ([`score_uploads`]); moving a threshold only calls [`render_results`] again on the
kept maps. Rows, decisions and drawings come from `inference.predict.rows` and `inference.overlays`, so the page shows
exactly what `inference.predict` writes.

Example:
    ```python
    >>> results = score_uploads(["a.png", "notes.txt"], backend, processor)      # the model runs here, once
    >>> thresholds = slider_thresholds(config, "bottle", image_value=0.7, pixel_value=0.5)
    >>> rendered = render_results(results, thresholds, category="bottle")        # no model call
    >>> rendered[0].row["decision"], rendered[0].overlay.size
    ('NG', (640, 562))
    ```
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from inference.backends import AnomalyBackend
from inference.overlays import DEFAULT_COLOUR_MAP, colour_table, draw_overlay
from inference.predict.rows import Thresholds, choose_thresholds, error_row, prediction_row
from inference.predict.writers import PredictionWriter
from inference.scoring import score_images
from processing import CLIPADAImageProcessor

MAX_IMAGE_PIXELS = 4096 * 4096
DEFAULT_THRESHOLD = 0.5  # where the sliders start for a checkpoint without calibrated thresholds
SLIDER_DECIMALS = 4
SLIDER_STEP = 10.0**-SLIDER_DECIMALS
SLIDER_TOLERANCE = SLIDER_STEP / 2  # a slider within half a step of the calibrated value means the calibrated value
logger = logging.getLogger(__name__)


class UploadError(ValueError):
    """An uploaded file that cannot be inspected; the message names the file and says why."""


@dataclass
class ScoredImage:
    """One upload after the model ran: everything needed to redraw it at any threshold.

    Attributes:
        name: The file name as uploaded.
        image: `(H, W, 3)` uint8, upright, at the image's own size; None when the file could not be read.
        anomaly_map: `(H, W)` float32 pixel anomaly probabilities at the image's size; None on error.
        score: The image anomaly score; None on error.
        error: Why the file could not be inspected, else "".
    """

    name: str
    image: np.ndarray | None = None
    anomaly_map: np.ndarray | None = None
    score: float | None = None
    error: str = ""


@dataclass
class RenderedImage:
    """One upload drawn at the current thresholds.

    Attributes:
        row: Its `predictions.csv` row (keys `inference.predict.rows.COLUMNS`).
        overlay: The overlay picture (as `inference.predict` draws it), None for a file that failed.
        anomaly_map: The raw map coloured on the fixed 0..1 scale, `(W, H)` like the image; None on error.
    """

    row: dict
    overlay: Image.Image | None
    anomaly_map: Image.Image | None


def check_upload(path: str | os.PathLike, name: str, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Refuses an empty file, a file Pillow cannot open, and an image above `max_pixels`, before decoding it.

    Raises:
        UploadError: Naming `name` and the reason.
    """
    if not os.path.isfile(path):
        raise UploadError(f"{name}: the upload did not arrive; please upload it again")
    if os.path.getsize(path) == 0:
        raise UploadError(f"{name} is empty (0 bytes)")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        raise UploadError(f"{name} is too large to open safely") from None
    except Exception:  # Pillow raises many types for files that are not images
        raise UploadError(f"{name} is not an image file (PNG, JPEG, BMP, TIFF, WebP, ...)") from None
    if width * height > max_pixels:
        raise UploadError(
            f"{name} is {width}x{height} pixels ({width * height / 1e6:.1f} MP); this app accepts images up to "
            f"{max_pixels / 1e6:.1f} MP: resize it first"
        )


def score_uploads(
    paths: list[str | os.PathLike],
    backend: AnomalyBackend,
    processor: CLIPADAImageProcessor,
    names: list[str] | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
    batch_size: int = 8,
    category: str | None = None,
) -> list[ScoredImage]:
    """Runs the model once on every readable upload; unreadable ones, and those the model fails on or scores as
    NaN, come back with their error, which names the file.

    Args:
        paths: The uploaded files.
        backend: Computes `anomaly_map` `(B, h, w)` and `pred_score` `(B,)` from CLIP-normalised pixels.
        processor: Reads images (bit depth, EXIF orientation), normalises them and maps anomaly maps back to each
            image's own size.
        names: How each file is called in rows and messages (default: its file name).
        max_pixels: Larger images are refused (width x height).
        batch_size: Images per backend call.
        category: The images' category (AdaCLIP names it in its prompts).

    Returns:
        One [`ScoredImage`] per path, in order.
    """
    names = names or [Path(path).name for path in paths]
    results, readable = [], []
    for path, name in zip(paths, names):
        try:
            check_upload(path, name, max_pixels)
            pixels = processor.process_image(str(path), name=name)  # (3, H, W) float32 in [0, 1]
        except Exception as error:  # Pillow and the processor raise many types for files they cannot read
            results.append(ScoredImage(name=name, error=_naming(name, error)))
            continue
        results.append(ScoredImage(name=name, image=np.round(pixels.transpose(1, 2, 0) * 255).astype(np.uint8)))
        readable.append((results[-1], pixels))
    for start in range(0, len(readable), batch_size):
        _score_batch(readable[start : start + batch_size], backend, processor, category)
    return results


def _score_batch(batch: list[tuple[ScoredImage, np.ndarray]], backend, processor, category: str | None) -> None:
    """Fills in the maps and scores of a batch; when the batch fails, scores its images one by one, so the image the
    model fails on gets the error and the others their results."""
    try:
        scored = score_images(backend, processor, [pixels for _, pixels in batch], [category] * len(batch))
    except Exception as error:  # a runtime refusing one input fails the whole batch
        if len(batch) > 1:
            for item in batch:
                _score_batch([item], backend, processor, category)
            return
        logger.warning("scoring %s failed", batch[0][0].name, exc_info=True)
        _fail(batch[0][0], f"{batch[0][0].name}: the model could not score it ({type(error).__name__}: {error})")
        return
    for (result, _), anomaly_map, score in zip(batch, scored.anomaly_maps, scored.scores):
        if not (np.isfinite(score) and np.isfinite(anomaly_map).all()):
            _fail(result, f"{result.name}: the model produced a non-finite score or map (NaN or infinity)")
            continue
        result.anomaly_map, result.score = anomaly_map, float(score)


def _naming(name: str, error: Exception) -> str:
    """The error's message, starting with the file's name when it does not name the file already."""
    message = str(error) or type(error).__name__
    return message if name in message else f"{name}: {message}"


def _fail(result: ScoredImage, message: str) -> None:
    result.image, result.anomaly_map, result.score, result.error = None, None, None, message


def calibrated_thresholds(config, category: str | None) -> Thresholds:
    """The checkpoint's calibrated thresholds for `category` (its own, else the global ones)."""
    return choose_thresholds(config, category or None)


def slider_start(config, category: str | None) -> tuple[float, float]:
    """`(image, pixel)` slider values: the calibrated thresholds rounded to the slider's step (`slider_thresholds`
    turns them back into the exact ones), `DEFAULT_THRESHOLD` where there is none."""
    calibrated = calibrated_thresholds(config, category)
    values = (DEFAULT_THRESHOLD if value is None else value for value in (calibrated.image, calibrated.pixel))
    return tuple(round(value, SLIDER_DECIMALS) for value in values)


def slider_thresholds(config, category: str | None, image_value: float, pixel_value: float) -> Thresholds:
    """The thresholds the sliders set: a slider left at the calibrated value keeps its source (`category`,
    `global`); a moved one, or one on a checkpoint without calibration, is an `override`."""
    calibrated = calibrated_thresholds(config, category)
    overrides = [
        None if known is not None and abs(value - known) <= SLIDER_TOLERANCE else float(value)
        for value, known in ((image_value, calibrated.image), (pixel_value, calibrated.pixel))
    ]
    return choose_thresholds(config, category or None, *overrides)


def render_results(
    results: list[ScoredImage], thresholds: Thresholds, category: str | None = None
) -> list[RenderedImage]:
    """Rows, overlays and coloured maps of scored uploads at `thresholds` (no model call).

    Args:
        results: From [`score_uploads`].
        thresholds: The image and pixel thresholds to decide and draw with.
        category: Written in each row.

    Returns:
        One [`RenderedImage`] per result, in order.
    """
    return [_render(result, thresholds, category) for result in results]


def _render(result: ScoredImage, thresholds: Thresholds, category: str | None) -> RenderedImage:
    """One result at `thresholds`; a result that cannot be drawn becomes its file's error row."""
    if result.error:
        return RenderedImage(error_row(result.name, category, result.error), None, None)
    try:
        row, pred_mask = prediction_row(result.name, category, result.anomaly_map, result.score, thresholds)
        overlay = draw_overlay(
            result.image, result.anomaly_map, pred_mask, row["score"], row["decision"], thresholds.image,
            title=result.name, pixel_threshold=thresholds.pixel,
        )  # fmt: skip
        return RenderedImage(row, overlay, colour_map_picture(result.anomaly_map))
    except Exception as error:  # one odd image never stops the batch's page
        logger.warning("drawing %s failed", result.name, exc_info=True)
        message = f"{result.name}: could not be drawn ({type(error).__name__}: {error})"
        return RenderedImage(error_row(result.name, category, message), None, None)


def colour_map_picture(anomaly_map: np.ndarray, colormap: str = DEFAULT_COLOUR_MAP) -> Image.Image:
    """`(H, W)` probabilities -> an RGB picture on the fixed 0..1 scale of the overlays (never stretched)."""
    levels = np.round(np.clip(anomaly_map, 0.0, 1.0) * 255).astype(np.intp)
    return Image.fromarray(colour_table(colormap)[levels].round().astype(np.uint8))


def write_predictions_csv(rows: list[dict], output_dir: Path) -> Path:
    """Writes `predictions.csv` (and `.jsonl`) with `inference.predict`'s columns; returns the CSV's path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with PredictionWriter(output_dir) as writer:
        for row in rows:
            writer.write(row)
    return output_dir / "predictions.csv"


__all__ = [
    "DEFAULT_THRESHOLD",
    "MAX_IMAGE_PIXELS",
    "SLIDER_STEP",
    "RenderedImage",
    "ScoredImage",
    "UploadError",
    "calibrated_thresholds",
    "check_upload",
    "colour_map_picture",
    "render_results",
    "score_uploads",
    "slider_start",
    "slider_thresholds",
    "write_predictions_csv",
]
