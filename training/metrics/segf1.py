"""MVTec AD 2's segmentation metric, SegF1, and the threshold its authors binarize anomaly maps with.

SegF1 is the pixel-level F1 score of binarized anomaly maps: with TP, FP and FN counted over all pixels of all test
images of one scenario together (normal images included: every pixel they flag is a false positive),
``SegF1 = 2 TP / (2 TP + FP + FN)``. It depends on a threshold, which must be chosen without test labels. MVTec AD 2's
evaluation server takes the binarized maps a user submits (``anomaly_images_thresholded``); the dataset's own
submission checker (``MVTecAD2_public_code_utils``) names the baseline its authors use: ``threshold = mean + 3 * std``
of the anomaly scores of the validation images (all pixels of the normal ``validation/good`` images of the scenario,
population standard deviation). A pixel is anomalous when its score is at least the threshold.

Example:
    ```python
    >>> statistics = PixelStatistics()
    >>> statistics.update(validation_maps)           # (N, H, W) or a list of (H_i, W_i)
    >>> threshold = statistics.threshold()           # mean + 3 std
    >>> seg_f1(test_maps, test_masks, threshold)     # maps and masks (N, H, W)
    ```
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

# The threshold rule of MVTec AD 2's baseline: mean + NUM_STD standard deviations of the validation pixel scores.
NUM_STD = 3.0
SEG_F1 = "seg_f1"


def _as_maps(anomaly_maps: Any) -> list[np.ndarray]:
    """A list of float64 `(H, W)` maps from an `(N, H, W)` array, a tensor or a list of 2-D maps."""
    if hasattr(anomaly_maps, "detach"):
        anomaly_maps = anomaly_maps.detach().cpu().numpy()
    if isinstance(anomaly_maps, np.ndarray) and anomaly_maps.ndim == 2:
        maps = [anomaly_maps.astype(np.float64)]
    else:
        maps = [np.asarray(m.detach().cpu().numpy() if hasattr(m, "detach") else m, np.float64) for m in anomaly_maps]
    for anomaly_map in maps:
        if anomaly_map.ndim != 2:
            raise ValueError(f"anomaly maps must be 2-D (H, W) each; got shape {anomaly_map.shape}")
        if not np.isfinite(anomaly_map).all():
            raise ValueError("anomaly maps must be finite; found NaN or infinite scores")
    return maps


class PixelStatistics:
    """Streaming mean and population standard deviation of all pixel scores of some maps (Chan et al.'s merge of
    per-batch moments in float64), for MVTec AD 2's threshold ``mean + 3 std``. Holds three numbers, never a map."""

    def __init__(self) -> None:
        self.count, self.mean, self._squares = 0, 0.0, 0.0  # squares: sum of squared deviations from the mean

    def update(self, anomaly_maps: Any) -> None:
        """Adds maps: an `(N, H, W)` array or tensor, or a list of `(H_i, W_i)` maps.

        Raises:
            ValueError: A map is not 2-D or holds NaN or infinite scores.
        """
        for anomaly_map in _as_maps(anomaly_maps):
            count = anomaly_map.size
            if count == 0:
                continue
            mean = float(anomaly_map.mean())
            squares = float(((anomaly_map - mean) ** 2).sum())
            total = self.count + count
            delta = mean - self.mean
            self._squares += squares + delta * delta * self.count * count / total
            self.mean += delta * count / total
            self.count = total

    @property
    def std(self) -> float:
        """`float`: The population standard deviation (numpy's `std`, ddof 0) of the pixels added."""
        return float(np.sqrt(self._squares / self.count)) if self.count else float("nan")

    def threshold(self, num_std: float = NUM_STD) -> float:
        """``mean + num_std * std`` of the pixels added.

        Raises:
            ValueError: Nothing was added.
        """
        if not self.count:
            raise ValueError("no validation pixels: the SegF1 threshold needs the maps of normal validation images")
        return self.mean + num_std * self.std


class SegF1Counts:
    """Streaming TP / FP / FN counts of maps binarized at one threshold (``score >= threshold`` is anomalous).

    Args:
        threshold (`float`): The binarization threshold (e.g. `PixelStatistics.threshold`).
    """

    def __init__(self, threshold: float) -> None:
        if not np.isfinite(threshold):
            raise ValueError(f"the SegF1 threshold must be finite, got {threshold}")
        self.threshold = float(threshold)
        self.true_positives = self.false_positives = self.false_negatives = 0

    def update(self, anomaly_maps: Any, masks: Any, mask_available: Iterable[bool] | None = None) -> None:
        """Adds maps `(N, H, W)` (or a list of `(H_i, W_i)`) and their masks of the same shapes (`> 0.5` is anomalous);
        images whose `mask_available` is False (no ground truth) are left out.

        Raises:
            ValueError: A map and its mask differ in shape, or a map holds NaN or infinite scores.
        """
        maps, truths = _as_maps(anomaly_maps), _as_maps(masks)
        if len(maps) != len(truths):
            raise ValueError(f"{len(maps)} anomaly maps but {len(truths)} masks")
        available = [True] * len(maps) if mask_available is None else [bool(a) for a in mask_available]
        for anomaly_map, truth, keep in zip(maps, truths, available):
            if not keep:
                continue
            if anomaly_map.shape != truth.shape:
                raise ValueError(f"an anomaly map of shape {anomaly_map.shape} has a mask of shape {truth.shape}")
            predicted, anomalous = anomaly_map >= self.threshold, truth > 0.5
            self.true_positives += int(np.count_nonzero(predicted & anomalous))
            self.false_positives += int(np.count_nonzero(predicted & ~anomalous))
            self.false_negatives += int(np.count_nonzero(~predicted & anomalous))

    def compute(self) -> float:
        """SegF1 ``2 TP / (2 TP + FP + FN)``; `nan` when no pixel is anomalous and none is flagged (undefined)."""
        denominator = 2 * self.true_positives + self.false_positives + self.false_negatives
        return 2 * self.true_positives / denominator if denominator else float("nan")


def seg_f1(anomaly_maps: Any, masks: Any, threshold: float) -> float:
    """SegF1 of maps `(N, H, W)` (or a list of `(H_i, W_i)`) against masks of the same shapes at ``threshold``.

    Args:
        anomaly_maps: Finite anomaly scores.
        masks: Ground truth; `> 0.5` is anomalous.
        threshold: A pixel is anomalous when its score is at least this.

    Returns:
        `float`: SegF1 in [0, 1], `nan` when no pixel is anomalous in the masks and none is flagged.
    """
    counts = SegF1Counts(threshold)
    counts.update(anomaly_maps, masks)
    return counts.compute()


__all__ = ["NUM_STD", "SEG_F1", "PixelStatistics", "SegF1Counts", "seg_f1"]
