"""One row of `predictions.csv` from an anomaly map at the image's own size: thresholds, decision, area and boxes.

Independent of the backend that produced the map: it needs the map, the score and the thresholds only.

Example:
    ```python
    >>> thresholds = choose_thresholds(config, category="bottle")          # the category's when calibrated
    >>> row = prediction_row("line3/000.png", "bottle", anomaly_map, 0.83, thresholds)
    >>> row["decision"], row["anomalous_area"], row["boxes"]
    ('NG', 0.031, [[412, 120, 470, 181]])
    ```
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from modeling_clipada.decisions import normalize_scores, reaches, resolve_thresholds

UNCALIBRATED = "UNCALIBRATED"
MAX_BOXES = 20
COLUMNS = (
    "path",
    "category",
    "score",
    "normalized_score",
    "decision",
    "image_threshold",
    "pixel_threshold",
    "threshold_source",
    "anomalous_area",
    "num_regions",
    "boxes",
    "width",
    "height",
    "overlay",
    "map",
    "error",
)


@dataclass(frozen=True)
class Thresholds:
    """The thresholds one image is decided with, and where each came from (`category`, `global`, `override`).

    Attributes:
        image: The image-score threshold, or None (no decision: `UNCALIBRATED`).
        pixel: The pixel threshold, or None (no mask, area or boxes).
        source: `category`, `global` or `override`, or `image:<source>,pixel:<source>` when they differ; `none`.
    """

    image: float | None
    pixel: float | None
    source: str


def choose_thresholds(
    config,
    category: str | None = None,
    image_override: float | None = None,
    pixel_override: float | None = None,
) -> Thresholds:
    """The thresholds for images of `category`: an override, else `modeling_clipada.decisions.resolve_thresholds`
    (the category's calibrated ones, else the global ones).

    Args:
        config: The decision fields (`image_threshold`, `pixel_threshold`, `category_thresholds`): a checkpoint's
            config or an export's thresholds (a backend's `decision_config`).
        category: The images' category (`--category`), or None.
        image_override: `--image_threshold`, or None.
        pixel_override: `--pixel_threshold`, or None.

    Returns:
        [`Thresholds`].
    """
    resolved = resolve_thresholds(config, category)
    image, image_source = (
        (resolved.image, resolved.image_source) if image_override is None else (image_override, "override")
    )
    pixel, pixel_source = (
        (resolved.pixel, resolved.pixel_source) if pixel_override is None else (pixel_override, "override")
    )
    source = image_source if image_source == pixel_source else f"image:{image_source},pixel:{pixel_source}"
    return Thresholds(
        image=None if image is None else float(image), pixel=None if pixel is None else float(pixel), source=source
    )


def decide(score: float, threshold: float | None) -> str:
    """`NG` when the score reaches the threshold (`modeling_clipada.decisions.reaches`), else `OK`; `UNCALIBRATED`
    without a threshold."""
    if threshold is None:
        return UNCALIBRATED
    return "NG" if reaches(np.float32(score), threshold) else "OK"


def anomalous_regions(pred_mask: np.ndarray, max_boxes: int = MAX_BOXES) -> tuple[int, list[list[int]]]:
    """Connected regions of a mask (8-connected) and their bounding boxes, largest region first.

    Args:
        pred_mask: `(H, W)` bool.
        max_boxes: At most this many boxes are returned (the count is of all regions).

    Returns:
        `(num_regions, boxes)` with boxes `[x_min, y_min, x_max, y_max]` in pixels, max exclusive.
    """
    labels, num_regions = ndimage.label(pred_mask, structure=np.ones((3, 3), dtype=bool))
    if num_regions == 0:
        return 0, []
    areas = np.bincount(labels.ravel())[1:]
    slices = ndimage.find_objects(labels)
    order = np.argsort(-areas, kind="stable")[:max_boxes]
    boxes = [[slices[i][1].start, slices[i][0].start, slices[i][1].stop, slices[i][0].stop] for i in order]
    return num_regions, [[int(value) for value in box] for box in boxes]


def prediction_row(
    path: str,
    category: str | None,
    anomaly_map: np.ndarray,
    score: float,
    thresholds: Thresholds,
) -> tuple[dict, np.ndarray | None]:
    """The row of one image that was scored.

    Args:
        path: The input path as given.
        category: The category (`--category`) or None.
        anomaly_map: `(H, W)` pixel probabilities at the image's own size.
        score: The image score.
        thresholds: The image's [`Thresholds`].

    Returns:
        `(row, pred_mask)`: the row (keys `COLUMNS`; `overlay` and `map` left empty) and the `(H, W)` bool mask
        (None without a pixel threshold). A score or map that is not finite (NaN or inf: a broken checkpoint) gives
        an `ERROR` row saying so, never a decision.
    """
    problem = non_finite_problem(score, anomaly_map)
    if problem:
        return error_row(path, category, problem), None
    height, width = anomaly_map.shape
    row = dict.fromkeys(COLUMNS, None)
    row.update(path=path, category=category or "", score=float(score), width=width, height=height)
    row.update(decision=decide(score, thresholds.image), threshold_source=thresholds.source)
    row.update(image_threshold=thresholds.image, pixel_threshold=thresholds.pixel, error="")
    if thresholds.image is not None:
        row["normalized_score"] = float(normalize_scores(score, thresholds.image))
    pred_mask = None
    if thresholds.pixel is not None:
        pred_mask = reaches(anomaly_map, thresholds.pixel)
        row["anomalous_area"] = float(pred_mask.mean())
        row["num_regions"], row["boxes"] = anomalous_regions(pred_mask)
    return row, pred_mask


def image_row(
    path: str,
    category: str | None,
    model_map: np.ndarray,
    model_score: float,
    image_size: tuple[int, int],
    layout,
    processor,
    image_score_top_k: int,
    thresholds: Thresholds,
) -> tuple[dict, np.ndarray, np.ndarray | None]:
    """The row of one scored image from its own slice of the model's output: THE per-image step every engine runs
    (the in-process pipeline, a Ray task), so that rows are the same whoever computes them.

    The map is brought back to the image's own size by the processor (`post_process_anomaly_detection`, as
    `inference.scoring.score_inputs` does for a batch: per image it gives the same values), then decided
    ([`prediction_row`]).

    Args:
        path: The input path as given.
        category: The image's category, or None.
        model_map: `(N_i, h, w)` the backend's `anomaly_map` for this image's N_i inputs (1, or its tiles).
        model_score: The backend's `pred_score` for this image (squash; letterbox and tiles score the merged map).
        image_size: `(H, W)` of the image.
        layout: The image's `image_layouts` entry (letterbox, tiles), or None (squash).
        processor: The `CLIPADAImageProcessor` that made the inputs.
        image_score_top_k: The backend's `decision_config.image_score_top_k` (letterbox, tiles).
        thresholds: The image's [`Thresholds`].

    Returns:
        `(row, anomaly_map, pred_mask)`: the row (keys `COLUMNS`; `overlay` and `map` empty), the `(H, W)` float32
        map and the `(H, W)` bool mask (None without a pixel threshold, or for an `ERROR` row).
    """
    outputs = {"anomaly_map": np.asarray(model_map, dtype=np.float32), "pred_score": np.float32([model_score])}
    layouts = None if layout is None else [layout]
    maps, scores = processor.post_process_anomaly_detection(outputs, [image_size], layouts, image_score_top_k)
    anomaly_map = np.asarray(maps[0], dtype=np.float32)
    row, pred_mask = prediction_row(path, category, anomaly_map, float(np.float32(scores[0])), thresholds)
    return row, anomaly_map, pred_mask


def non_finite_problem(score: float, anomaly_map: np.ndarray) -> str | None:
    """What is wrong when the model produced NaN or inf for an image (its score or any pixel of its map), in words for
    its `ERROR` row; None when both are finite."""
    bad_pixels = int(anomaly_map.size - np.count_nonzero(np.isfinite(anomaly_map)))
    if np.isfinite(score) and not bad_pixels:
        return None
    where = [] if np.isfinite(score) else [f"score {score}"]
    where += [f"{bad_pixels} of {anomaly_map.size} map pixels"] if bad_pixels else []
    return (
        f"the model produced NaN/inf ({', '.join(where)}): no decision; check the checkpoint (NaN weights or "
        "preprocessor values)"
    )


def error_row(path: str, category: str | None, message: str) -> dict:
    """The row of an image that could not be scored: decision `ERROR` and the reason."""
    row = dict.fromkeys(COLUMNS, None)
    row.update(path=path, category=category or "", decision="ERROR", error=message)
    return row


__all__ = [
    "COLUMNS",
    "MAX_BOXES",
    "UNCALIBRATED",
    "Thresholds",
    "anomalous_regions",
    "choose_thresholds",
    "decide",
    "error_row",
    "image_row",
    "non_finite_problem",
    "prediction_row",
]
