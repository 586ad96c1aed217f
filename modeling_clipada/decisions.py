"""OK/NG decisions from calibrated thresholds: labels, masks and a normalised score, shared by every model family.

Example:
    ```python
    >>> pred_label, pred_mask = apply_thresholds(anomaly_map, pred_score, image_threshold=0.62, pixel_threshold=0.55)
    >>> normalized = normalize_scores(pred_score, threshold=0.62)  # 0.62 -> 0.5
    ```
"""

import torch

# The config fields that hold calibrated thresholds and how they were obtained; they never change the maps.
DECISION_FIELDS = (
    "image_threshold",
    "pixel_threshold",
    "category_thresholds",
    "target_image_fpr",
    "target_pixel_fpr",
    "calibration_size",
)


def apply_thresholds(
    anomaly_map: torch.Tensor,
    pred_score: torch.Tensor,
    image_threshold: float | torch.Tensor,
    pixel_threshold: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomalous ("NG") where the score reaches the threshold.

    Args:
        anomaly_map: `(batch_size, H, W)` pixel scores.
        pred_score: `(batch_size,)` image scores.
        image_threshold: A number, or `(batch_size,)` per-image thresholds (e.g. per category).
        pixel_threshold: A number, or `(batch_size,)` per-image thresholds.

    Returns:
        `pred_label` `(batch_size,)` bool and `pred_mask` `(batch_size, H, W)` bool.
    """
    image_threshold = torch.as_tensor(image_threshold, dtype=pred_score.dtype, device=pred_score.device)
    pixel_threshold = torch.as_tensor(pixel_threshold, dtype=anomaly_map.dtype, device=anomaly_map.device)
    if pixel_threshold.ndim:  # one per image
        pixel_threshold = pixel_threshold.reshape(-1, 1, 1)
    return pred_score >= image_threshold, anomaly_map >= pixel_threshold


def normalize_scores(scores: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """Maps scores in [0, 1] piecewise linearly to [0, 1] so that `threshold` lands on 0.5 (for dashboards).

    `s <= t` -> `0.5 * s / t`; `s > t` -> `0.5 + 0.5 * (s - t) / (1 - t)`; monotone, so decisions are unchanged
    ("NG" exactly when the normalised score is >= 0.5).

    Args:
        scores: Scores in [0, 1], any shape.
        threshold: In (0, 1): a number, or a tensor that broadcasts against `scores`.

    Returns:
        Normalised scores, same shape, clipped to [0, 1].
    """
    threshold = torch.as_tensor(threshold, dtype=scores.dtype, device=scores.device).clamp(1e-6, 1 - 1e-6)
    below = 0.5 * scores / threshold
    above = 0.5 + 0.5 * (scores - threshold) / (1 - threshold)
    return torch.where(scores <= threshold, below, above).clamp(0.0, 1.0)


__all__ = ["DECISION_FIELDS", "apply_thresholds", "normalize_scores"]
