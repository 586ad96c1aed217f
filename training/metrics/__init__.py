"""Anomaly-detection metrics: the exact math, a streaming accumulator, category means, the paper's table and the
operating points (overkill at fixed escape rates, false-reject and escape rates at a threshold)."""

from pathlib import Path

from .anomaly import (
    ESCAPE_RATES,
    METRIC_NAMES,
    OPERATING_POINT_NAMES,
    OVERKILL_NAMES,
    anomaly_metrics,
    image_metrics,
    operating_point_metrics,
    overkill_metrics,
    pixel_metrics,
)
from .finite import NonFiniteCount, NonFiniteScoresError
from .report import TABLE_COLUMNS, format_metrics_table, format_operating_points_table, mean_metrics
from .streaming import AnomalyMetrics, compute_anomaly_metrics

# The `evaluate` module, for `evaluate.load(EVALUATE_MODULE_PATH)`.
EVALUATE_MODULE_PATH = str(Path(__file__).with_name("clipada_anomaly.py"))
# The benchmark metrics' `evaluate` module (MVTec AD 2's SegF1, Real-IAD's sample-level I-AUROC).
BENCHMARK_EVALUATE_MODULE_PATH = str(Path(__file__).with_name("clipada_benchmarks.py"))

__all__ = [
    "BENCHMARK_EVALUATE_MODULE_PATH",
    "ESCAPE_RATES",
    "EVALUATE_MODULE_PATH",
    "METRIC_NAMES",
    "OPERATING_POINT_NAMES",
    "OVERKILL_NAMES",
    "TABLE_COLUMNS",
    "AnomalyMetrics",
    "NonFiniteCount",
    "NonFiniteScoresError",
    "anomaly_metrics",
    "compute_anomaly_metrics",
    "format_metrics_table",
    "format_operating_points_table",
    "image_metrics",
    "mean_metrics",
    "operating_point_metrics",
    "overkill_metrics",
    "pixel_metrics",
]
