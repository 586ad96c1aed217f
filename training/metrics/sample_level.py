"""Sample-level image metrics for multi-view data (Real-IAD): one score and one label per part over its views.

Real-IAD photographs every part from five cameras; a part is defective when any of its views is (its label is the
maximum of the views' labels), and its score combines the views' image scores: the maximum by default (a part is as
anomalous as its worst view), or the mean. The AUROC and F1-max are then those of
`training.metrics.anomaly.image_metrics` over the parts: Real-IAD's sample-level AUROC (S-AUROC), whose official
evaluation (ADEval) groups the views by the same part key as the ``sample_id`` column (`training.data.real_iad`).

Example:
    ```python
    >>> sample_level_metrics([0.1, 0.9, 0.2, 0.3], [0, 1, 0, 0], ["p1", "p1", "p2", "p2"])
    {'sample_image_auroc': 1.0, 'sample_image_f1_max': 1.0, 'num_samples': 2}
    ```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .anomaly import image_metrics

SAMPLE_REDUCTIONS = ("max", "mean")
SAMPLE_METRIC_NAMES = ("sample_image_auroc", "sample_image_f1_max")


def sample_scores(
    image_scores: Any, image_labels: Any, sample_ids: Sequence[str], reduction: str = "max"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Group per-view scores and labels by sample.

    Args:
        image_scores: `(N,)` finite image scores, one per view.
        image_labels: `(N,)` labels, 1 (or True) for an anomalous view.
        sample_ids: `N` sample ids (views of one part share one).
        reduction: ``"max"`` or ``"mean"``: how a part's score comes from its views' scores.

    Returns:
        `(scores, labels, ids)`: `(S,)` float64 sample scores, `(S,)` int64 sample labels (max over the views) and the
        `S` sample ids, sorted by id.

    Raises:
        ValueError: Lengths differ, a score is not finite, or ``reduction`` is unknown.
    """
    if reduction not in SAMPLE_REDUCTIONS:
        raise ValueError(f"unknown sample reduction {reduction!r}; expected {' or '.join(SAMPLE_REDUCTIONS)}")
    scores = np.asarray(image_scores, dtype=np.float64).reshape(-1)
    labels = (np.asarray(image_labels).reshape(-1) > 0.5).astype(np.int64)
    ids = np.asarray([str(sample_id) for sample_id in sample_ids], dtype=object)
    if not scores.size == labels.size == ids.size:
        raise ValueError(f"{scores.size} scores, {labels.size} labels and {ids.size} sample ids: one each per view")
    if not np.isfinite(scores).all():
        raise ValueError("image_scores must be finite; found NaN or infinite scores")
    unique, inverse = np.unique(ids, return_inverse=True)
    counts = np.bincount(inverse, minlength=unique.size)
    if reduction == "max":
        reduced = np.full(unique.size, -np.inf)
        np.maximum.at(reduced, inverse, scores)
    else:
        reduced = np.bincount(inverse, weights=scores, minlength=unique.size) / counts
    sample_labels = np.zeros(unique.size, dtype=np.int64)
    np.maximum.at(sample_labels, inverse, labels)
    return reduced, sample_labels, [str(sample_id) for sample_id in unique]


def sample_level_metrics(
    image_scores: Any, image_labels: Any, sample_ids: Sequence[str], reduction: str = "max"
) -> dict[str, float | int]:
    """Sample-level I-AUROC and F1-max (see `sample_scores` for the arguments).

    Returns:
        `dict`: ``sample_image_auroc`` and ``sample_image_f1_max`` (`nan` without defective or without normal
        parts) and ``num_samples``.
    """
    scores, labels, ids = sample_scores(image_scores, image_labels, sample_ids, reduction)
    metrics = image_metrics(scores, labels)
    return {
        "sample_image_auroc": metrics["image_auroc"],
        "sample_image_f1_max": metrics["image_f1_max"],
        "num_samples": len(ids),
    }


__all__ = ["SAMPLE_METRIC_NAMES", "SAMPLE_REDUCTIONS", "sample_level_metrics", "sample_scores"]
