"""Anomaly-detection metrics: the exact math, a streaming accumulator, category means and the paper's table."""

from pathlib import Path

from .anomaly import METRIC_NAMES, anomaly_metrics, image_metrics, pixel_metrics
from .report import TABLE_COLUMNS, format_metrics_table, mean_metrics
from .streaming import AnomalyMetrics, compute_anomaly_metrics

# The `evaluate` module, for `evaluate.load(EVALUATE_MODULE_PATH)`.
EVALUATE_MODULE_PATH = str(Path(__file__).with_name("clipada_anomaly.py"))

__all__ = [
    "EVALUATE_MODULE_PATH",
    "METRIC_NAMES",
    "TABLE_COLUMNS",
    "AnomalyMetrics",
    "anomaly_metrics",
    "compute_anomaly_metrics",
    "format_metrics_table",
    "image_metrics",
    "mean_metrics",
    "pixel_metrics",
]
