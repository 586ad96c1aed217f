"""Per-category means of the anomaly metrics, the paper's Markdown table, the notes on pixel metrics without masks,
and the operating points a line signs off (overkill at 2/5/10 % escape, false-reject and escape rates).

Example:
    ```python
    >>> per_category = {"bottle": {"image_auroc": 0.98, ...}, "cable": {...}}
    >>> mean = mean_metrics(per_category)
    >>> print(format_metrics_table(per_category, mean))
    >>> print(format_operating_points_table(per_category, mean))
    ```
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .anomaly import (
    ESCAPE_RATES,
    IMAGE_METRICS_NOTE,
    NOT_CALIBRATED,
    OPERATING_POINT_NAMES,
    OPERATING_POINT_NOTE,
    OVERKILL_NAMES,
    OVERKILL_NOTE,
    PIXEL_METRICS_NOTE,
    THRESHOLD_NAMES,
    overkill_name,
)
from .streaming import IMAGES_WITHOUT_MASK

# Column headers of the paper's table, keyed by the metric names.
TABLE_COLUMNS = {
    "image_auroc": "I-AUROC",
    "pixel_auroc": "P-AUROC",
    "pixel_ap": "P-mAP",
    "aupro": "AUPRO",
    "image_f1_max": "I-F1max",
    "pixel_f1_max": "P-F1max",
}
PIXEL_METRIC_NAMES = ("pixel_auroc", "pixel_ap", "aupro", "pixel_f1_max")
PIXEL_METRICS_NOT_AVAILABLE = "not available: no ground-truth masks"
IMAGE_METRIC_NAMES = ("image_auroc", "image_f1_max")
# Keys `mean_metrics` does not average: per-category thresholds, counts and notes (the operating point is pooled).
_NOT_AVERAGED = (
    *THRESHOLD_NAMES,
    IMAGES_WITHOUT_MASK,
    *OPERATING_POINT_NAMES,
    OVERKILL_NOTE,
    OPERATING_POINT_NOTE,
    IMAGE_METRICS_NOTE,
    PIXEL_METRICS_NOTE,
)


def mean_metrics(per_category: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """Averages each metric over the categories, skipping `nan` values (a category where it is undefined).

    The F1-max thresholds (`THRESHOLD_NAMES`) are per category and have no meaningful mean: they are left out,
    and so is the count `images_without_mask`. A `None` value (pixel metrics not available: no ground-truth
    masks; overkill without defective or normal images) is skipped too; the mean is `None` when no category has
    the metric available, and an `overkill` note says over which categories the overkill mean runs when some
    lack it. The operating point (false-reject and escape rates at the calibrated thresholds, when the categories
    carry one) is not averaged but pooled over all images: see `pooled_operating_point`.

    Args:
        per_category (`dict[str, dict[str, float | None]]`): Category name to its metrics.

    Returns:
        `dict[str, float | None]`: Metric name to its mean (`nan` if no category defines it), keys in first-seen
        order.
    """
    names = [
        name
        for name in dict.fromkeys(n for metrics in per_category.values() for n in metrics)
        if name not in _NOT_AVERAGED
    ]
    means = {}
    for name in names:
        values = [metrics.get(name, math.nan) for metrics in per_category.values()]
        available = np.array([value for value in values if value is not None], dtype=np.float64)
        if available.size == 0:
            means[name] = None
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice" when all are nan
            means[name] = float(np.nanmean(available))
    overkill_note = _overkill_mean_note(per_category)
    if overkill_note:
        means[OVERKILL_NOTE] = overkill_note
    image_note = _undefined_mean_note(per_category, IMAGE_METRIC_NAMES[0])
    if image_note:
        means[IMAGE_METRICS_NOTE] = image_note
    if any("normal_images" in metrics for metrics in per_category.values()):
        means.update(pooled_operating_point(per_category))
    return means


def _overkill_mean_note(per_category: dict[str, dict[str, float | None]]) -> str | None:
    """Why the overkill mean is missing or covers only some categories; None when it covers all (or is absent)."""
    rows = [metrics for metrics in per_category.values() if any(name in metrics for name in OVERKILL_NAMES)]
    available = [metrics for metrics in rows if all(metrics.get(name) is not None for name in OVERKILL_NAMES)]
    if not rows or len(available) == len(rows):
        return None
    if not available:
        return "not available: no category has both defective and normal images"
    return f"over the {len(available)} of {len(rows)} categories with defective and normal images"


def _undefined_mean_note(per_category: dict[str, dict[str, float | None]], name: str) -> str | None:
    """Why the mean of metric `name` is undefined (`nan`: undefined in every category that has it); None otherwise.
    A mean over some of the categories is a number, and the categories' own notes say why the others lack it."""
    values = [metrics[name] for metrics in per_category.values() if metrics.get(name) is not None]
    if not values or any(not math.isnan(value) for value in values):
        return None
    return "not defined in any category (see the categories' notes)"


def pooled_operating_point(per_category: dict[str, dict]) -> dict[str, float | int | str | None]:
    """The line's overall false-reject and escape rates: OK/NG counts summed over the categories, then divided.

    Only categories decided with a threshold count (`image_threshold` not None); the rates are those of all their
    images together, not a mean of the per-category rates, so they agree with the summed counts.

    Args:
        per_category (`dict[str, dict]`): Category name to its metrics, with the `OPERATING_POINT_NAMES` values.

    Returns:
        `dict[str, float | int | str | None]`: `false_reject_rate`, `normal_images_rejected`, `normal_images`,
        `escape_rate`, `defective_images_passed`, `defective_images` and, when a rate is missing or covers only some
        categories, an `operating_point` note (`"not calibrated"` when no category has a threshold).
    """
    rows = [metrics for metrics in per_category.values() if "normal_images" in metrics]
    calibrated = [metrics for metrics in rows if metrics.get("image_threshold") is not None]
    pooled: dict[str, float | int | str | None] = {}
    if not calibrated:
        pooled.update(
            false_reject_rate=None,
            normal_images_rejected=None,
            normal_images=sum(metrics["normal_images"] for metrics in rows),
            escape_rate=None,
            defective_images_passed=None,
            defective_images=sum(metrics["defective_images"] for metrics in rows),
        )
        pooled[OPERATING_POINT_NOTE] = NOT_CALIBRATED
        return pooled
    normal = sum(metrics["normal_images"] for metrics in calibrated)
    rejected = sum(metrics["normal_images_rejected"] for metrics in calibrated)
    defective = sum(metrics["defective_images"] for metrics in calibrated)
    passed = sum(metrics["defective_images_passed"] for metrics in calibrated)
    pooled.update(
        false_reject_rate=rejected / normal if normal else None,
        normal_images_rejected=rejected,
        normal_images=normal,
        escape_rate=passed / defective if defective else None,
        defective_images_passed=passed,
        defective_images=defective,
    )
    notes = []
    if len(calibrated) < len(rows):
        notes.append(f"over the {len(calibrated)} of {len(rows)} categories with thresholds")
    notes.extend(
        f"{name} not available: no {kind} images"
        for name, kind, count in (("false_reject_rate", "normal", normal), ("escape_rate", "defective", defective))
        if count == 0
    )
    if notes:
        pooled[OPERATING_POINT_NOTE] = "; ".join(notes)
    return pooled


def pixel_metrics_notes(
    per_category: dict[str, dict[str, float | None]], mean: dict[str, float | None] | None = None
) -> dict[str, str]:
    """Says, per category and for the mean, why pixel metrics are missing or cover only some images.

    Args:
        per_category (`dict[str, dict[str, float | None]]`): Category name to its metrics (`None` pixel
            metrics and `images_without_mask` as `AnomalyMetrics.compute` returns them).
        mean (`dict[str, float | None]`, *optional*): The mean row; defaults to `mean_metrics(per_category)`.

    Returns:
        `dict[str, str]`: Category name (and ``"Mean"``) to its note, e.g. ``"not available: no ground-truth
        masks"``; empty when every anomalous image had its mask (MVTec-AD, VisA).
    """
    if mean is None:
        mean = mean_metrics(per_category)
    notes = {}
    for category, metrics in per_category.items():
        left_out = metrics.get(IMAGES_WITHOUT_MASK, 0)
        if _pixel_metrics_missing(metrics):
            notes[category] = PIXEL_METRICS_NOT_AVAILABLE
        elif metrics.get(PIXEL_METRICS_NOTE):  # undefined: e.g. "not defined: no anomalous pixel in the ..."
            notes[category] = metrics[PIXEL_METRICS_NOTE]
        elif left_out:
            notes[category] = (
                f"over the images with ground-truth masks; {left_out} anomalous images without one left out"
            )
    missing = [category for category in per_category if notes.get(category) == PIXEL_METRICS_NOT_AVAILABLE]
    undefined = _undefined_mean_note(per_category, PIXEL_METRIC_NAMES[0])
    if _pixel_metrics_missing(mean):
        notes["Mean"] = PIXEL_METRICS_NOT_AVAILABLE
    elif undefined:
        notes["Mean"] = undefined
    elif missing:
        notes["Mean"] = (
            f"over the {len(per_category) - len(missing)} of {len(per_category)} categories with ground-truth masks"
        )
    return notes


def image_metrics_notes(
    per_category: dict[str, dict[str, float | None]], mean: dict[str, float | None] | None = None
) -> dict[str, str]:
    """Says, per category and for the mean, why the image metrics are undefined (a category without normal or
    without defective test images) or cover only some categories.

    Returns:
        `dict[str, str]`: Category name (and ``"Mean"``) to its note, e.g. ``"not defined: no defective images"``;
        empty when every category has both kinds of images.
    """
    if mean is None:
        mean = mean_metrics(per_category)
    rows = {**per_category, "Mean": mean}
    return {label: metrics[IMAGE_METRICS_NOTE] for label, metrics in rows.items() if metrics.get(IMAGE_METRICS_NOTE)}


def _pixel_metrics_missing(metrics: dict[str, float | None]) -> bool:
    """Whether the pixel metrics of one row are `None` (not available, as opposed to undefined `nan`)."""
    return any(name in metrics and metrics[name] is None for name in PIXEL_METRIC_NAMES)


def format_metrics_table(
    per_category: dict[str, dict[str, float | None]], mean: dict[str, float | None] | None = None
) -> str:
    """Formats the metrics as the paper's Markdown table: one row per category, then "Mean".

    Columns are I-AUROC, P-AUROC, P-mAP, AUPRO, I-F1max, P-F1max, in percent with one decimal; a missing
    or `nan` value shows as "-", a metric that is not available (`None`: no ground-truth masks) as "n/a".
    When some category lacks masks, or has metrics that are undefined, the `image_metrics_notes` and
    `pixel_metrics_notes` follow the table, one line each.

    Args:
        per_category (`dict[str, dict[str, float | None]]`): Category name to its metrics (values in [0, 1]).
        mean (`dict[str, float | None]`, *optional*): The "Mean" row; defaults to `mean_metrics(per_category)`.

    Returns:
        `str`: The table (and its notes), lines joined by newlines, without a trailing newline.
    """
    if mean is None:
        mean = mean_metrics(per_category)

    def row(label: str, metrics: dict[str, float | None]) -> str:
        cells = []
        for name in TABLE_COLUMNS:
            value = metrics.get(name, math.nan)
            cells.append("n/a" if value is None else "-" if math.isnan(value) else f"{100.0 * value:.1f}")
        return "| " + " | ".join([label, *cells]) + " |"

    lines = [
        "| " + " | ".join(["Category", *TABLE_COLUMNS.values()]) + " |",
        "|:" + "---|" + "---:|" * len(TABLE_COLUMNS),
    ]
    lines.extend(row(category, metrics) for category, metrics in per_category.items())
    lines.append(row("Mean", mean))
    image_notes, pixel_notes = image_metrics_notes(per_category, mean), pixel_metrics_notes(per_category, mean)
    if image_notes or pixel_notes:
        lines.append("")
        lines.extend(f"{label}: image metrics {note}." for label, note in image_notes.items())
        lines.extend(f"{label}: pixel metrics {note}." for label, note in pixel_notes.items())
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    """A rate as the tables print it: percent with one decimal, "n/a" for None, "-" for nan."""
    return "n/a" if value is None else "-" if math.isnan(value) else f"{100.0 * value:.1f}"


def format_operating_points_table(
    per_category: dict[str, dict[str, float | int | str | None]],
    mean: dict[str, float | int | str | None] | None = None,
) -> str:
    """Formats the operating points as a Markdown table: one row per quantity, one column per category, then "Mean".

    Rows: overkill at 2/5/10 % escape (percent), then, when some category was decided with a threshold, the image
    threshold, the false-reject rate with its counts ("5.0 (1/20)": normal images rejected / normal images) and the
    escape rate ("1.6 (1/63)": defective images passed / defective images); the "Mean" column averages the overkill
    and pools the rates over all images. Without thresholds a line says "not calibrated"; the `overkill` and
    `operating_point` notes follow the table, one line each.

    Args:
        per_category (`dict[str, dict]`): Category name to its metrics (as `AnomalyMetrics.compute` returns them).
        mean (`dict`, *optional*): The "Mean" column; defaults to `mean_metrics(per_category)`.

    Returns:
        `str`: The table and its notes, lines joined by newlines, without a trailing newline.
    """
    if mean is None:
        mean = mean_metrics(per_category)
    columns = {**per_category, "Mean": mean}

    def row(label: str, cell) -> str:
        return "| " + " | ".join([label, *(cell(name, metrics) for name, metrics in columns.items())]) + " |"

    def counted(rate: str, numerator: str, denominator: str):
        def cell(name: str, metrics: dict) -> str:
            if metrics.get(rate) is None:
                return "n/a"
            return f"{_percent(metrics[rate])} ({metrics[numerator]}/{metrics[denominator]})"

        return cell

    lines = [
        "| " + " | ".join(["Operating point", *columns]) + " |",
        "|:" + "---|" + "---:|" * len(columns),
    ]
    for rate in ESCAPE_RATES:
        name = overkill_name(rate)
        lines.append(
            row(f"Overkill @ {100 * rate:g}% escape", lambda _, metrics, name=name: _percent(metrics.get(name)))
        )
    calibrated = mean.get(OPERATING_POINT_NOTE) != NOT_CALIBRATED and "false_reject_rate" in mean
    if calibrated:

        def threshold(name: str, metrics: dict) -> str:
            value = metrics.get("image_threshold")
            return "" if name == "Mean" else "n/a" if value is None else f"{value:.4g}"

        lines.append(row("Image threshold", threshold))
        lines.append(
            row(
                "False-reject rate (OK rejected)",
                counted("false_reject_rate", "normal_images_rejected", "normal_images"),
            )
        )
        lines.append(
            row("Escape rate (NG passed)", counted("escape_rate", "defective_images_passed", "defective_images"))
        )
    notes = [
        f"{label}: overkill {metrics[OVERKILL_NOTE]}." for label, metrics in columns.items() if OVERKILL_NOTE in metrics
    ]
    if calibrated:
        notes.append("Mean: false-reject and escape rates pooled over all images of the categories with thresholds.")
        notes.extend(
            f"{label}: {metrics[OPERATING_POINT_NOTE]}."
            for label, metrics in columns.items()
            if OPERATING_POINT_NOTE in metrics
        )
    elif "normal_images" in mean:
        notes.append(f"False-reject and escape rates at the checkpoint's image thresholds: {NOT_CALIBRATED}.")
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines)


def without_nan(value):
    """`value` with every float `nan` (at any depth of dicts and lists) replaced by None, for strict JSON."""
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [without_nan(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


__all__ = [
    "IMAGE_METRIC_NAMES",
    "PIXEL_METRICS_NOT_AVAILABLE",
    "PIXEL_METRIC_NAMES",
    "TABLE_COLUMNS",
    "format_metrics_table",
    "format_operating_points_table",
    "image_metrics_notes",
    "mean_metrics",
    "pixel_metrics_notes",
    "pooled_operating_point",
    "without_nan",
]
