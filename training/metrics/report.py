"""Per-category means of the anomaly metrics, the paper's Markdown table and the notes on pixel metrics without masks.

Example:
    ```python
    >>> per_category = {"bottle": {"image_auroc": 0.98, ...}, "cable": {...}}
    >>> print(format_metrics_table(per_category, mean_metrics(per_category)))
    ```
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .anomaly import THRESHOLD_NAMES
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


def mean_metrics(per_category: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """Averages each metric over the categories, skipping `nan` values (a category where it is undefined).

    The F1-max thresholds (`THRESHOLD_NAMES`) are per category and have no meaningful mean: they are left out,
    and so is the count `images_without_mask`. A `None` value (pixel metrics not available: no ground-truth
    masks) is skipped too; the mean is `None` when no category has the metric available.

    Args:
        per_category (`dict[str, dict[str, float | None]]`): Category name to its metrics.

    Returns:
        `dict[str, float | None]`: Metric name to its mean (`nan` if no category defines it), keys in first-seen
        order.
    """
    names = [
        name
        for name in dict.fromkeys(n for metrics in per_category.values() for n in metrics)
        if name not in THRESHOLD_NAMES and name != IMAGES_WITHOUT_MASK
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
    return means


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
        elif left_out:
            notes[category] = (
                f"over the images with ground-truth masks; {left_out} anomalous images without one left out"
            )
    missing = [category for category in per_category if notes.get(category) == PIXEL_METRICS_NOT_AVAILABLE]
    if _pixel_metrics_missing(mean):
        notes["Mean"] = PIXEL_METRICS_NOT_AVAILABLE
    elif missing:
        notes["Mean"] = (
            f"over the {len(per_category) - len(missing)} of {len(per_category)} categories with ground-truth masks"
        )
    return notes


def _pixel_metrics_missing(metrics: dict[str, float | None]) -> bool:
    """Whether the pixel metrics of one row are `None` (not available, as opposed to undefined `nan`)."""
    return any(name in metrics and metrics[name] is None for name in PIXEL_METRIC_NAMES)


def format_metrics_table(
    per_category: dict[str, dict[str, float | None]], mean: dict[str, float | None] | None = None
) -> str:
    """Formats the metrics as the paper's Markdown table: one row per category, then "Mean".

    Columns are I-AUROC, P-AUROC, P-mAP, AUPRO, I-F1max, P-F1max, in percent with one decimal; a missing
    or `nan` value shows as "-", a metric that is not available (`None`: no ground-truth masks) as "n/a".
    When some category lacks masks, the `pixel_metrics_notes` follow the table, one line each.

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
    notes = pixel_metrics_notes(per_category, mean)
    if notes:
        lines.append("")
        lines.extend(f"{label}: pixel metrics {note}." for label, note in notes.items())
    return "\n".join(lines)


__all__ = [
    "PIXEL_METRICS_NOT_AVAILABLE",
    "PIXEL_METRIC_NAMES",
    "TABLE_COLUMNS",
    "format_metrics_table",
    "mean_metrics",
    "pixel_metrics_notes",
]
