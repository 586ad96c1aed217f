"""Per-category means of the anomaly metrics and the paper's Markdown table.

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

# Column headers of the paper's table, keyed by the metric names.
TABLE_COLUMNS = {
    "image_auroc": "I-AUROC",
    "pixel_auroc": "P-AUROC",
    "pixel_ap": "P-mAP",
    "aupro": "AUPRO",
    "image_f1_max": "I-F1max",
    "pixel_f1_max": "P-F1max",
}


def mean_metrics(per_category: dict[str, dict[str, float]]) -> dict[str, float]:
    """Averages each metric over the categories, skipping `nan` values (a category where it is undefined).

    The F1-max thresholds (`THRESHOLD_NAMES`) are per category and have no meaningful mean: they are left out.

    Args:
        per_category (`dict[str, dict[str, float]]`): Category name to its metrics.

    Returns:
        `dict[str, float]`: Metric name to its mean (`nan` if no category defines it), keys in first-seen order.
    """
    names = [
        name
        for name in dict.fromkeys(n for metrics in per_category.values() for n in metrics)
        if name not in THRESHOLD_NAMES
    ]
    means = {}
    for name in names:
        values = np.array([metrics.get(name, math.nan) for metrics in per_category.values()], dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice" when all are nan
            means[name] = float(np.nanmean(values))
    return means


def format_metrics_table(per_category: dict[str, dict[str, float]], mean: dict[str, float] | None = None) -> str:
    """Formats the metrics as the paper's Markdown table: one row per category, then "Mean".

    Columns are I-AUROC, P-AUROC, P-mAP, AUPRO, I-F1max, P-F1max, in percent with one decimal; a missing
    or `nan` value shows as "-".

    Args:
        per_category (`dict[str, dict[str, float]]`): Category name to its metrics (values in [0, 1]).
        mean (`dict[str, float]`, *optional*): The "Mean" row; defaults to `mean_metrics(per_category)`.

    Returns:
        `str`: The table, lines joined by newlines, without a trailing newline.
    """
    if mean is None:
        mean = mean_metrics(per_category)

    def row(label: str, metrics: dict[str, float]) -> str:
        cells = []
        for name in TABLE_COLUMNS:
            value = metrics.get(name, math.nan)
            cells.append("-" if math.isnan(value) else f"{100.0 * value:.1f}")
        return "| " + " | ".join([label, *cells]) + " |"

    lines = [
        "| " + " | ".join(["Category", *TABLE_COLUMNS.values()]) + " |",
        "|:" + "---|" + "---:|" * len(TABLE_COLUMNS),
    ]
    lines.extend(row(category, metrics) for category, metrics in per_category.items())
    lines.append(row("Mean", mean))
    return "\n".join(lines)


__all__ = ["TABLE_COLUMNS", "format_metrics_table", "mean_metrics"]
