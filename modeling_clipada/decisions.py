"""OK/NG decisions from calibrated thresholds, for every model family and every place that decides.

ONE resolver of an image's thresholds (its category's where calibrated, else the global ones) and ONE comparison
(anomalous where the score reaches the threshold), each for numpy arrays and torch tensors alike: the models, the
pipeline, `clipada predict`, the app and the torch-free runners of exported models all decide through this file.
It imports torch only when it is installed, so the runners use it without torch.

Example:
    ```python
    >>> thresholds = resolve_thresholds(config, category="bottle")       # the category's when calibrated
    >>> thresholds.image, thresholds.image_source
    (0.62, 'category')
    >>> pred_label, pred_mask = apply_thresholds(anomaly_map, pred_score, image_threshold=0.62, pixel_threshold=0.55)
    >>> normalized = normalize_scores(pred_score, threshold=0.62)  # 0.62 -> 0.5
    ```
"""

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

try:
    import torch
except ImportError:  # the runners of exported models decide in numpy
    torch = None

# The config fields that hold calibrated thresholds and how they were obtained; they never change the maps.
DECISION_FIELDS = (
    "image_threshold",
    "pixel_threshold",
    "category_thresholds",
    "target_image_fpr",
    "target_pixel_fpr",
    "calibration_size",
    "target_escape_rate",
    "calibration_mode",
)


class ImageThresholds(NamedTuple):
    """The thresholds one image is decided with, and where each came from.

    Attributes:
        image: The image-score threshold, or None (not calibrated).
        pixel: The pixel threshold, or None.
        image_source: `category`, `global` or `none`.
        pixel_source: As `image_source`.
    """

    image: float | None
    pixel: float | None
    image_source: str
    pixel_source: str


def decision_field(config: Any, name: str) -> Any:
    """A decision field of `config`: a mapping's item (the `thresholds` of `clipada_export.json`) or an attribute (a
    family's config, an export's runner); None when missing."""
    return config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)


def resolve_thresholds(config: Any, category: str | None = None) -> ImageThresholds:
    """The thresholds of an image of `category`: the category's where calibrated, else the global ones.

    Args:
        config: Anything with `image_threshold`, `pixel_threshold` and `category_thresholds` attributes (a family's
            config, an export's runner), or a dict of them (the `thresholds` of `clipada_export.json`); missing
            fields count as None.
        category: The image's category, or None for the global thresholds.

    Returns:
        [`ImageThresholds`].
    """
    per_category = (decision_field(config, "category_thresholds") or {}).get(category, {}) if category else {}
    chosen = []
    for field in ("image_threshold", "pixel_threshold"):
        if per_category.get(field) is not None:
            chosen.append((float(per_category[field]), "category"))
        elif decision_field(config, field) is not None:
            chosen.append((float(decision_field(config, field)), "global"))
        else:
            chosen.append((None, "none"))
    (image, image_source), (pixel, pixel_source) = chosen
    return ImageThresholds(image, pixel, image_source, pixel_source)


def per_image_thresholds(
    config: Any, categories: Sequence[str | None] | None, batch_size: int
) -> tuple[list[float | None], list[float | None]]:
    """[`resolve_thresholds`] for each image of a batch.

    Args:
        config: As in [`resolve_thresholds`].
        categories: One name (or None) per image, or None for all global.
        batch_size: The number of images.

    Returns:
        `(image_thresholds, pixel_thresholds)`, one value per image each.

    Raises:
        ValueError: `categories` does not hold one entry per image.
    """
    if categories is None:
        categories = [None] * batch_size
    if len(categories) != batch_size:
        raise ValueError(f"`categories` must hold one entry per image ({batch_size}), got {len(categories)}.")
    resolved = [resolve_thresholds(config, category) for category in categories]
    return [entry.image for entry in resolved], [entry.pixel for entry in resolved]


def reaches(scores, thresholds):
    """THE comparison: anomalous where `scores >= thresholds`, compared in the scores' floating dtype (float32 for
    numpy inputs that are not floating).

    Args:
        scores: A torch tensor or anything numpy reads (a number, an array).
        thresholds: A number or a sequence/array/tensor that broadcasts against `scores`.

    Returns:
        A bool tensor (torch scores) or a bool numpy array / numpy bool (otherwise), of the broadcast shape.
    """
    if torch is not None and isinstance(scores, torch.Tensor):
        return scores >= torch.as_tensor(thresholds, dtype=scores.dtype, device=scores.device)
    scores = np.asarray(scores)
    dtype = scores.dtype if np.issubdtype(scores.dtype, np.floating) else np.float32
    return scores.astype(dtype, copy=False) >= np.asarray(thresholds, dtype=dtype)


def apply_thresholds(anomaly_map, pred_score, image_threshold, pixel_threshold) -> tuple:
    """Anomalous ("NG") images and pixels: [`reaches`] on the scores and on the map.

    Args:
        anomaly_map: `(batch_size, H, W)` pixel scores (torch or numpy).
        pred_score: `(batch_size,)` image scores.
        image_threshold: A number, or `(batch_size,)` per-image thresholds (e.g. per category).
        pixel_threshold: A number, or `(batch_size,)` per-image thresholds.

    Returns:
        `pred_label` `(batch_size,)` bool and `pred_mask` `(batch_size, H, W)` bool, of the inputs' kind.
    """
    if torch is not None and isinstance(pixel_threshold, torch.Tensor):
        pixel_threshold = pixel_threshold.reshape(-1, 1, 1) if pixel_threshold.ndim else pixel_threshold
    elif np.ndim(pixel_threshold):  # one per image
        pixel_threshold = np.asarray(pixel_threshold, dtype=np.float64).reshape(-1, 1, 1)
        if torch is not None and isinstance(anomaly_map, torch.Tensor):
            pixel_threshold = torch.as_tensor(pixel_threshold, dtype=anomaly_map.dtype, device=anomaly_map.device)
    return reaches(pred_score, image_threshold), reaches(anomaly_map, pixel_threshold)


def normalize_scores(scores, threshold):
    """Maps scores in [0, 1] piecewise linearly to [0, 1] so that `threshold` lands on 0.5 (for dashboards).

    `s <= t` -> `0.5 * s / t`; `s > t` -> `0.5 + 0.5 * (s - t) / (1 - t)`; monotone, so decisions are unchanged
    ("NG" exactly when the normalised score is >= 0.5).

    Args:
        scores: Scores in [0, 1], any shape: a torch tensor, or anything numpy reads (computed in float32).
        threshold: In (0, 1): a number, or values that broadcast against `scores`.

    Returns:
        Normalised scores, same shape and kind, clipped to [0, 1].
    """
    if torch is not None and isinstance(scores, torch.Tensor):
        threshold = torch.as_tensor(threshold, dtype=scores.dtype, device=scores.device).clamp(1e-6, 1 - 1e-6)
        below = 0.5 * scores / threshold
        above = 0.5 + 0.5 * (scores - threshold) / (1 - threshold)
        return torch.where(scores <= threshold, below, above).clamp(0.0, 1.0)
    scores = np.asarray(scores, dtype=np.float32)
    threshold = np.clip(np.asarray(threshold, dtype=np.float32), np.float32(1e-6), np.float32(1 - 1e-6))
    below = np.float32(0.5) * scores / threshold
    above = np.float32(0.5) + np.float32(0.5) * (scores - threshold) / (np.float32(1) - threshold)
    return np.clip(np.where(scores <= threshold, below, above), 0.0, 1.0).astype(np.float32)


__all__ = [
    "DECISION_FIELDS",
    "ImageThresholds",
    "apply_thresholds",
    "decision_field",
    "normalize_scores",
    "per_image_thresholds",
    "reaches",
    "resolve_thresholds",
]
