"""A streaming accumulator of the anomaly metrics of one category, fed batch by batch by the evaluation loop.

Example:
    ```python
    >>> from training.metrics import AnomalyMetrics
    >>> metrics = AnomalyMetrics()
    >>> for batch in dataloader:  # one category
    ...     outputs = model(batch["pixel_values"])
    ...     metrics.update(outputs.anomaly_map, batch["labels"], outputs.pred_score, batch["image_labels"])
    >>> metrics.compute()["pixel_auroc"]
    >>> metrics.compute(image_threshold=0.62)["false_reject_rate"]  # at a calibrated threshold
    ```
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .anomaly import (
    METRIC_NAMES,
    PIXEL_METRICS_NOTE,
    THRESHOLD_NAMES,
    image_metrics,
    operating_point_metrics,
    overkill_metrics,
    pixel_metrics,
    split_pixels,
    undefined_metrics_notes,
)

# Key of `AnomalyMetrics.compute`'s count of images left out of the pixel metrics (present only when > 0).
IMAGES_WITHOUT_MASK = "images_without_mask"
_PIXEL_NAMES = ("pixel_auroc", "pixel_ap", "aupro", "pixel_f1_max", "pixel_f1_max_threshold")


def _to_numpy(values: Any) -> np.ndarray:
    """Converts a torch tensor (any device, any dtype, requiring grad or not) or an array-like to numpy.

    Args:
        values (`Any`): A `torch.Tensor`, `np.ndarray` or nested sequence.

    Returns:
        `np.ndarray`: The values; half-precision tensors come back as float32.
    """
    if hasattr(values, "detach"):  # a torch.Tensor, recognised without importing torch
        values = values.detach().cpu()
        if values.is_floating_point() and values.element_size() < 4:  # numpy has no bfloat16
            values = values.float()
        return values.numpy()
    return np.asarray(values)


class AnomalyMetrics:
    """Streaming accumulator of the six anomaly-detection metrics of one category.

    `update` is called once per batch; it labels the ground-truth regions of the batch's masks right
    away and keeps only compact numpy chunks, never the maps:

    - 4 bytes per pixel: its float32 score, in the normal-pixel or the anomalous-pixel buffer (which
      buffer encodes the pixel label, so no label is stored);
    - 4 more bytes per anomalous pixel: its float32 AUPRO weight `1 / |region|`;
    - 9 bytes per image: a float64 score and a bool label; plus one integer, the region count.

    For MVTec-AD (1,725 images of 224x224, 86.6M pixels, ~3% anomalous) that is about 0.36 GB, reported by
    `nbytes`. `compute` concatenates the normal chunks once and sorts them in place (transiently twice
    their size; the sorted array then replaces the chunks), argsorts only the anomalous pixels, and
    derives all curves from that one sort. Scores are compared as float32, as stored.

    Every metric is exact (no threshold grid, no binning). A metric whose two classes are not both present
    (no anomalous pixel, no normal pixel, no normal or no anomalous image) is `float("nan")`, and an
    `image_metrics` or `pixel_metrics` note says which class is missing; `mean_metrics` then skips it. The
    overkill values at 2/5/10 % escape (`overkill_metrics`) are `None` instead, with an `overkill` note saying
    which class is missing.

    Images whose ground-truth mask is not available (`mask_available` False in `update`: anomalous images
    of your own data without a mask) count for the image metrics only; `compute` reports how many there
    were as `images_without_mask`. When no anomalous pixel is known at all because of them, the pixel
    metrics are not available and come back as `None`, not `nan`.

    Args:
        aupro_fpr_limit (`float`, *optional*, defaults to 0.3): Upper FPR limit of the AUPRO integral.
    """

    def __init__(self, aupro_fpr_limit: float = 0.3) -> None:
        if not 0.0 < aupro_fpr_limit <= 1.0:
            raise ValueError(f"aupro_fpr_limit must be in (0, 1], got {aupro_fpr_limit}")
        self.aupro_fpr_limit = aupro_fpr_limit
        self.reset()

    def reset(self) -> None:
        """Drops everything accumulated so far."""
        self._normal_scores: list[np.ndarray] = []
        self._anomalous_scores: list[np.ndarray] = []
        self._anomalous_weights: list[np.ndarray] = []
        self._num_regions = 0
        self._image_scores: list[np.ndarray] = []
        self._image_labels: list[np.ndarray] = []
        self._images_without_mask = 0

    @property
    def nbytes(self) -> int:
        """`int`: Bytes held by the buffers (the whole memory cost of the accumulator, up to a few Python objects)."""
        buffers = (
            self._normal_scores,
            self._anomalous_scores,
            self._anomalous_weights,
            self._image_scores,
            self._image_labels,
        )
        return sum(chunk.nbytes for chunks in buffers for chunk in chunks)

    def update(
        self, anomaly_maps: Any, masks: Any, image_scores: Any, image_labels: Any, mask_available: Any = None
    ) -> None:
        """Adds one batch.

        Args:
            anomaly_maps (`np.ndarray` or `torch.Tensor` of shape `(N, H, W)` or `(N, 1, H, W)`):
                Finite anomaly scores, any float dtype (stored as float32). H and W may change between batches.
            masks (`np.ndarray` or `torch.Tensor` of the same shape):
                Ground truth, any int/bool/float dtype; a pixel is anomalous where `mask > 0.5`.
            image_scores (`np.ndarray` or `torch.Tensor` of shape `(N,)`): Finite image anomaly scores.
            image_labels (`np.ndarray` or `torch.Tensor` of shape `(N,)`): 1 (or True) for anomalous images.
            mask_available (`np.ndarray` or `torch.Tensor` of shape `(N,)`, *optional*): False for images whose
                ground truth is unknown (an anomalous image without a mask); their pixels are left out of the
                pixel metrics. Defaults to all True.

        Raises:
            ValueError: On mismatched shapes or non-finite scores.
        """
        maps, masks = _to_numpy(anomaly_maps), _to_numpy(masks)
        scores = _to_numpy(image_scores).astype(np.float64).reshape(-1)
        labels = _to_numpy(image_labels).reshape(-1) > 0.5
        if not len(maps) == len(masks) == scores.size == labels.size:
            raise ValueError(
                f"batch sizes differ: {len(maps)} maps, {len(masks)} masks, {scores.size} image scores, "
                f"{labels.size} image labels"
            )
        if not np.isfinite(scores).all():
            raise ValueError("image_scores must be finite; found NaN or infinite scores")
        if mask_available is not None:
            available = _to_numpy(mask_available).reshape(-1).astype(bool)
            if available.size != labels.size:
                raise ValueError(f"mask_available has {available.size} values for {labels.size} images")
            if not available.all():
                maps, masks = maps[available], masks[available]
                self._images_without_mask += int((~available).sum())
        normal, anomalous, weights, num_regions = split_pixels(maps, masks)
        self._normal_scores.append(normal)
        self._anomalous_scores.append(anomalous)
        self._anomalous_weights.append(weights)
        self._num_regions += num_regions
        self._image_scores.append(scores)
        self._image_labels.append(labels)

    def compute(
        self, include_thresholds: bool = False, image_threshold: float | None = None
    ) -> dict[str, float | int | str | None]:
        """Computes the metrics over everything added since the last `reset`.

        Args:
            include_thresholds (`bool`, *optional*, defaults to `False`): Also return `image_f1_max_threshold`
                and `pixel_f1_max_threshold`, the scores where the F1-max values are reached, and the operating
                point at `image_threshold` (`"not calibrated"` without one).
            image_threshold (`float`, *optional*): A decision threshold (e.g. the checkpoint's calibrated one):
                also return `operating_point_metrics` at it, the false-reject and escape rates with their counts.

        Returns:
            `dict[str, float | int | str | None]`: `image_auroc`, `pixel_auroc`, `pixel_ap`, `aupro`, `image_f1_max`,
            `pixel_f1_max`, each a Python float in [0, 1] or `nan`, the pixel ones `None` when not available
            (see the class docstring); `overkill_at_2pct_escape`, `overkill_at_5pct_escape`,
            `overkill_at_10pct_escape` (`None` and an `overkill` note without defective or normal images); an
            `image_metrics` / `pixel_metrics` note when those are `nan` (e.g. `"not defined: no defective images"`);
            plus `images_without_mask` (`int`) when some image had no mask, and the operating point when asked for.

        Raises:
            ValueError: If nothing was added.
        """
        if not self._image_scores:
            raise ValueError("AnomalyMetrics.compute() called before any update()")
        if len(self._normal_scores) != 1:
            # Concatenate once and keep the sorted array as the single chunk: later calls reuse it.
            normal_sorted = np.concatenate(self._normal_scores)
            self._normal_scores = [normal_sorted]
            normal_sorted.sort()
        else:
            normal_sorted = self._normal_scores[0]
            normal_sorted.sort()  # already sorted after a previous compute: a cheap pass
        anomalous_scores = np.concatenate(self._anomalous_scores)
        results = pixel_metrics(
            normal_sorted,
            anomalous_scores,
            np.concatenate(self._anomalous_weights),
            self._num_regions,
            self.aupro_fpr_limit,
        )
        image_scores, image_labels = np.concatenate(self._image_scores), np.concatenate(self._image_labels)
        results.update(image_metrics(image_scores, image_labels))
        names = METRIC_NAMES + THRESHOLD_NAMES if include_thresholds else METRIC_NAMES
        computed: dict[str, float | int | str | None] = {name: float(results[name]) for name in names}
        computed.update(overkill_metrics(image_scores, image_labels))
        num_defective = int(image_labels.sum())
        notes = undefined_metrics_notes(
            image_labels.size - num_defective, num_defective, normal_sorted.size, anomalous_scores.size
        )
        if self._images_without_mask:
            if anomalous_scores.size == 0:  # no known anomalous pixel: not available rather than undefined
                computed.update({name: None for name in _PIXEL_NAMES if name in computed})
                notes.pop(PIXEL_METRICS_NOTE, None)  # `pixel_metrics_notes` says "not available"
            computed[IMAGES_WITHOUT_MASK] = self._images_without_mask
        computed.update(notes)
        if include_thresholds or image_threshold is not None:
            computed.update(operating_point_metrics(image_scores, image_labels, image_threshold))
        return computed


def compute_anomaly_metrics(
    anomaly_maps: Any,
    masks: Any,
    image_scores: Any,
    image_labels: Any,
    aupro_fpr_limit: float = 0.3,
    include_thresholds: bool = False,
    image_threshold: float | None = None,
) -> dict[str, float | int | str | None]:
    """Computes the six metrics of one category in one call (see `AnomalyMetrics.update` for the inputs).

    Args:
        anomaly_maps (`np.ndarray` or `torch.Tensor` of shape `(N, H, W)`): Anomaly maps.
        masks (`np.ndarray` or `torch.Tensor` of shape `(N, H, W)`): Ground-truth masks.
        image_scores (`np.ndarray` or `torch.Tensor` of shape `(N,)`): Image anomaly scores.
        image_labels (`np.ndarray` or `torch.Tensor` of shape `(N,)`): Image labels, 1 for anomalous.
        aupro_fpr_limit (`float`, *optional*, defaults to 0.3): Upper FPR limit of the AUPRO integral.
        include_thresholds (`bool`, *optional*, defaults to `False`): Also return the F1-max thresholds and the
            operating point.
        image_threshold (`float`, *optional*): Also return the false-reject and escape rates at this threshold.

    Returns:
        `dict[str, float | int | str | None]`: As `AnomalyMetrics.compute`.
    """
    metrics = AnomalyMetrics(aupro_fpr_limit)
    metrics.update(anomaly_maps, masks, image_scores, image_labels)
    return metrics.compute(include_thresholds, image_threshold)


__all__ = ["IMAGES_WITHOUT_MASK", "AnomalyMetrics", "compute_anomaly_metrics"]
