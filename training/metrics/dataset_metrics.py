"""The metrics particular to some benchmarks, streamed beside `AnomalyMetrics` in `clipada eval`.

- MVTec AD 2: ``seg_f1`` (`training.metrics.segf1`) at the scenario's threshold from its validation images.
- Real-IAD (any dataset with a ``sample_id`` column): ``sample_image_auroc`` and ``sample_image_f1_max``
  (`training.metrics.sample_level`), a part's score being the max (or mean) of its views' scores.

`clipada eval` builds one `DatasetMetrics` per category with `category_metrics_factory` and feeds it the batches it
feeds `AnomalyMetrics`, in the category's row order.

Example:
    ```python
    >>> factory = category_metrics_factory(test_split, segf1_thresholds={"can": 0.71}, sample_reduction="max")
    >>> metrics = factory("can", test_split.filter(lambda row: row["category"] == "can"))
    >>> metrics.update(anomaly_maps, masks, image_scores, image_labels, mask_available)  # per batch
    >>> metrics.compute()
    {'seg_f1': 0.42}
    ```
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .sample_level import SAMPLE_METRIC_NAMES, sample_level_metrics
from .segf1 import SEG_F1, SegF1Counts

SAMPLE_ID_COLUMN = "sample_id"


class DatasetMetrics:
    """SegF1 at a fixed threshold and/or sample-level image metrics of one category.

    Args:
        segf1_threshold (`float`, *optional*): Binarize maps at this score for SegF1 (no SegF1 when None).
        sample_ids (`Sequence[str]`, *optional*): One sample id per row of the category, in the order the rows are
            added (no sample-level metrics when None).
        sample_reduction (`str`, *optional*, defaults to `"max"`): How a sample's score comes from its views'.
    """

    def __init__(
        self,
        segf1_threshold: float | None = None,
        sample_ids: Sequence[str] | None = None,
        sample_reduction: str = "max",
    ) -> None:
        self._segf1 = SegF1Counts(segf1_threshold) if segf1_threshold is not None else None
        self._sample_ids = list(sample_ids) if sample_ids is not None else None
        self.sample_reduction = sample_reduction
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(
        self, anomaly_maps: Any, masks: Any, image_scores: Any, image_labels: Any, mask_available: Any = None
    ) -> None:
        """Adds one batch: maps and masks `(B, H, W)`, scores, labels and `mask_available` `(B,)` (as
        `AnomalyMetrics.update` takes them)."""
        if self._segf1 is not None:
            self._segf1.update(anomaly_maps, masks, mask_available)
        if self._sample_ids is not None:
            self._scores.append(_numpy(image_scores).astype(np.float64).reshape(-1))
            self._labels.append(_numpy(image_labels).reshape(-1))

    def compute(self) -> dict[str, float]:
        """``seg_f1`` and/or ``sample_image_auroc`` and ``sample_image_f1_max``, as configured.

        Raises:
            ValueError: The rows added do not match the sample ids one to one.
        """
        results: dict[str, float] = {}
        if self._segf1 is not None:
            results[SEG_F1] = self._segf1.compute()
        if self._sample_ids is not None:
            scores = np.concatenate(self._scores) if self._scores else np.zeros(0)
            labels = np.concatenate(self._labels) if self._labels else np.zeros(0)
            if scores.size != len(self._sample_ids):
                raise ValueError(f"{scores.size} image scores were added for {len(self._sample_ids)} sample ids")
            metrics = sample_level_metrics(scores, labels, self._sample_ids, self.sample_reduction)
            results.update({name: metrics[name] for name in SAMPLE_METRIC_NAMES})
        return results


def category_metrics_factory(
    test_dataset,
    segf1_thresholds: dict[str, float] | None = None,
    sample_reduction: str = "max",
) -> Callable[[str, Any], DatasetMetrics] | None:
    """The per-category `DatasetMetrics` builder `training.evaluation.evaluate_model` takes, or None when the test
    split needs none (no SegF1 thresholds and no ``sample_id`` column).

    Args:
        test_dataset: The test split (a `datasets.Dataset`).
        segf1_thresholds: Category -> SegF1 threshold (MVTec AD 2: from its validation images).
        sample_reduction: ``"max"`` or ``"mean"``, for a ``sample_id`` column.

    Returns:
        `factory(category, rows)` -> `DatasetMetrics`, where `rows` are the category's rows in evaluation order.
    """
    has_samples = SAMPLE_ID_COLUMN in test_dataset.column_names
    if not segf1_thresholds and not has_samples:
        return None

    def factory(category: str, rows) -> DatasetMetrics:
        sample_ids = rows[SAMPLE_ID_COLUMN] if has_samples else None
        threshold = (segf1_thresholds or {}).get(category)
        return DatasetMetrics(threshold, sample_ids, sample_reduction)

    return factory


def _numpy(values: Any) -> np.ndarray:
    """A numpy copy of a tensor or array-like."""
    if hasattr(values, "detach"):
        return values.detach().cpu().numpy()
    return np.asarray(values)


__all__ = ["SAMPLE_ID_COLUMN", "DatasetMetrics", "category_metrics_factory"]
