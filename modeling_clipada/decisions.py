"""OK/NG decisions from calibrated thresholds, for every model family and every place that decides.

ONE resolver of an image's thresholds (its category's where calibrated, else the global ones) and ONE comparison
(anomalous where the score reaches the threshold), each for numpy arrays and torch tensors alike: the models, the
pipeline, `clipada predict`, the app and the torch-free runners of exported models all decide through this file.
It imports torch only when it is installed, so the runners use it without torch.

A non-finite score (NaN, +-inf: a damaged model or input) is never a decision: every function here that compares or
normalises scores raises [`NonFiniteScoreError`] (a `ValueError`) for it, and for a non-finite threshold, instead of
the silent "OK" that `NaN >= t` would give. Only inside a traced or exported graph, which cannot raise on values, is
the check left to whoever reads the graph's `pred_score` ([`check_finite_scores`]).

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


class NonFiniteScoreError(ValueError):
    """A score, map value or threshold that is NaN or infinite reached a decision; the message says how many."""


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


def _in_traced_graph() -> bool:
    """Whether torch is tracing or exporting a graph, which cannot raise on the values it computes."""
    if torch is None:
        return False
    tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
    return tracing or torch.compiler.is_compiling() or torch.compiler.is_exporting()


def _non_finite_count(values) -> tuple[int, int]:
    """`(non-finite, all)`: how many of `values` (a torch tensor or a numpy array) are NaN or infinite, of how many;
    `(0, n)` inside a traced graph, which cannot look at values."""
    if torch is not None and isinstance(values, torch.Tensor):
        return 0 if _in_traced_graph() else int((~torch.isfinite(values)).sum()), values.numel()
    return int(np.size(values) - np.count_nonzero(np.isfinite(values))), int(np.size(values))


def check_finite_scores(scores, what: str = "score"):
    """`scores` unchanged when every value is finite; a [`NonFiniteScoreError`] otherwise.

    Args:
        scores: A torch tensor or a numpy array (image scores, an anomaly map, thresholds).
        what: What one value is, for the message (`score`, `anomaly map value`, `threshold`).

    Returns:
        `scores`.

    Raises:
        NonFiniteScoreError: Naming how many of the values are NaN or infinite: such a value decides nothing.
    """
    count, total = _non_finite_count(scores)
    if count:
        raise NonFiniteScoreError(
            f"{count} of {total} {what}s are NaN or infinite (a damaged model or input): no OK/NG decision can be "
            "made from them"
        )
    return scores


def _floating_array(values, what: str) -> np.ndarray:
    """`values` as a numpy floating array (float32 unless already floating); refuses text and objects."""
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{what}s must be numbers, got an array of {array.dtype}")
    return array if array.dtype.kind == "f" else array.astype(np.float32)


def reaches(scores, thresholds, what: str = "score"):
    """THE comparison: anomalous where `scores >= thresholds`, compared in the scores' floating dtype (float32 for
    numpy inputs that are not floating).

    Args:
        scores: A torch tensor or anything numpy reads (a number, an array).
        thresholds: A number or a sequence/array/tensor that broadcasts against `scores`.
        what: What one score is, for the error message (`score`, `anomaly map value`).

    Returns:
        A bool tensor (torch scores) or a bool numpy array / numpy bool (otherwise), of the broadcast shape.

    Raises:
        NonFiniteScoreError: A score or a threshold is NaN or infinite (outside a traced graph).
    """
    if torch is not None and isinstance(scores, torch.Tensor):
        thresholds = torch.as_tensor(thresholds, dtype=scores.dtype, device=scores.device)
        check_finite_scores(thresholds, "threshold")
        return check_finite_scores(scores, what) >= thresholds
    scores = _floating_array(scores, what)
    thresholds = np.asarray(check_finite_scores(_floating_array(thresholds, "threshold"), "threshold"))
    return check_finite_scores(scores, what) >= thresholds.astype(scores.dtype)


def apply_thresholds(anomaly_map, pred_score, image_threshold, pixel_threshold) -> tuple:
    """Anomalous ("NG") images and pixels: [`reaches`] on the scores and on the map.

    Args:
        anomaly_map: `(batch_size, H, W)` pixel scores (torch or numpy).
        pred_score: `(batch_size,)` image scores.
        image_threshold: A number, or `(batch_size,)` per-image thresholds (e.g. per category).
        pixel_threshold: A number, or `(batch_size,)` per-image thresholds.

    Returns:
        `pred_label` `(batch_size,)` bool and `pred_mask` `(batch_size, H, W)` bool, of the inputs' kind.

    Raises:
        NonFiniteScoreError: A score, map value or threshold is NaN or infinite (outside a traced graph).
    """
    if torch is not None and isinstance(pixel_threshold, torch.Tensor):
        pixel_threshold = pixel_threshold.reshape(-1, 1, 1) if pixel_threshold.ndim else pixel_threshold
    elif np.ndim(pixel_threshold):  # one per image
        pixel_threshold = np.asarray(pixel_threshold, dtype=np.float64).reshape(-1, 1, 1)
        if torch is not None and isinstance(anomaly_map, torch.Tensor):
            pixel_threshold = torch.as_tensor(pixel_threshold, dtype=anomaly_map.dtype, device=anomaly_map.device)
    return reaches(pred_score, image_threshold), reaches(anomaly_map, pixel_threshold, "anomaly map value")


def normalize_scores(scores, threshold):
    """Maps scores in [0, 1] piecewise linearly to [0, 1] so that `threshold` lands on 0.5 (for dashboards).

    `s <= t` -> `0.5 * s / t`; `s > t` -> `0.5 + 0.5 * (s - t) / (1 - t)`; monotone, so decisions are unchanged
    ("NG" exactly when the normalised score is >= 0.5).

    Args:
        scores: Scores in [0, 1], any shape: a torch tensor, or anything numpy reads (computed in float32).
        threshold: In (0, 1): a number, or values that broadcast against `scores`.

    Returns:
        Normalised scores, same shape and kind, clipped to [0, 1].

    Raises:
        NonFiniteScoreError: A score or the threshold is NaN or infinite (outside a traced graph): a NaN would
            read as below 0.5, an OK.
    """
    if torch is not None and isinstance(scores, torch.Tensor):
        check_finite_scores(scores)
        check_finite_scores(torch.as_tensor(threshold, dtype=torch.float64), "threshold")
        threshold = torch.as_tensor(threshold, dtype=scores.dtype, device=scores.device).clamp(1e-6, 1 - 1e-6)
        below = 0.5 * scores / threshold
        above = 0.5 + 0.5 * (scores - threshold) / (1 - threshold)
        return torch.where(scores <= threshold, below, above).clamp(0.0, 1.0)
    scores = check_finite_scores(_floating_array(scores, "score").astype(np.float32))
    threshold = check_finite_scores(np.asarray(threshold, dtype=np.float32), "threshold")
    threshold = np.clip(threshold, np.float32(1e-6), np.float32(1 - 1e-6))
    below = np.float32(0.5) * scores / threshold
    above = np.float32(0.5) + np.float32(0.5) * (scores - threshold) / (np.float32(1) - threshold)
    return np.clip(np.where(scores <= threshold, below, above), 0.0, 1.0).astype(np.float32)


__all__ = [
    "DECISION_FIELDS",
    "ImageThresholds",
    "NonFiniteScoreError",
    "apply_thresholds",
    "check_finite_scores",
    "decision_field",
    "normalize_scores",
    "per_image_thresholds",
    "reaches",
    "resolve_thresholds",
]
