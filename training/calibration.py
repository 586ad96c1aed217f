"""Thresholds from normal images only: the score a normal image (or pixel) exceeds at a target false-positive rate.

An image threshold t for a target rate alpha is the (1 - alpha) quantile of the image scores of normal images.
With few images the empirical quantile is coarse (20 scores have no 1% quantile: any value between the two
largest scores would do), so the estimate is the **Harrell-Davis quantile** (Harrell & Davis, Biometrika 1982):
a weighted mean of all order statistics with Beta((n + 1) q, (n + 1)(1 - q)) weights, smooth and less biased than a
single order statistic. Its uncertainty is a **95% bootstrap percentile interval** (2,000 resamples of the images).
When n < 1 / alpha the data hold no information beyond the largest normal score, and the result says so.

Pixel thresholds use the pixels of normal images: up to `PIXELS_PER_IMAGE` pixels per image, drawn uniformly
(seeded) so that memory stays flat; with that many pixels the Harrell-Davis and the empirical quantile agree to far
below the sampling error, so the empirical one is used, and the bootstrap resamples whole images (neighbouring
pixels are not independent).

Example:
    ```python
    >>> scores = collect_normal_scores(model, processor, held_out_normal_split, device="cpu")
    >>> result = calibrate(scores, target_image_fpr=0.01, target_pixel_fpr=0.01)
    >>> result.image.value, result.image.interval
    ```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import datasets
import numpy as np
import torch
from scipy import stats
from torch.utils.data import DataLoader
from transformers import BatchFeature, PreTrainedModel

from inference.scoring import score_inputs
from inference.torch_backend import TorchBackend
from processing import CLIPADAImageProcessor

PIXELS_PER_IMAGE = 4096
NUM_RESAMPLES = 2000
PIXEL_RESAMPLES = 200  # each one pools and partitions every sampled pixel again
CONFIDENCE = 0.95
# Fewer calibration images than this in a category: it gets no thresholds of its own (it uses the global ones).
MIN_IMAGES_PER_CATEGORY = 10
ESTIMATORS = {
    "image": "Harrell-Davis quantile of the normal images' scores, 95% bootstrap percentile interval",
    "pixel": f"empirical quantile of up to {PIXELS_PER_IMAGE} pixels per normal image, 95% bootstrap over images",
}


@dataclasses.dataclass
class ThresholdEstimate:
    """A threshold with its uncertainty.

    Attributes:
        value: The threshold: "anomalous when score >= value".
        interval: `(low, high)`, the bootstrap percentile interval of `value`.
        target_fpr: The false-positive rate the threshold is calibrated for.
        num_images: Normal images it was estimated from.
        note: Set when the estimate is weak (too few images for the target rate).
    """

    value: float
    interval: tuple[float, float]
    target_fpr: float
    num_images: int
    note: str | None = None


@dataclasses.dataclass
class NormalScores:
    """Scores of normal images, gathered by `collect_normal_scores`.

    Attributes:
        image_scores: `(N,)` image scores.
        categories: `(N,)` category names.
        pixel_samples: N arrays, each up to `PIXELS_PER_IMAGE` pixel scores of one image.
    """

    image_scores: np.ndarray
    categories: np.ndarray
    pixel_samples: list[np.ndarray]


@dataclasses.dataclass
class CalibrationResult:
    """Global and per-category image and pixel thresholds."""

    image: ThresholdEstimate
    pixel: ThresholdEstimate
    per_category: dict[str, dict[str, ThresholdEstimate]]

    def to_dict(self) -> dict:
        """JSON-able: every estimate with its interval, plus the estimators' description."""

        def estimate(e: ThresholdEstimate) -> dict:
            return dataclasses.asdict(e) | {"interval": list(e.interval)}

        return {
            "estimators": ESTIMATORS,
            "image_threshold": estimate(self.image),
            "pixel_threshold": estimate(self.pixel),
            "per_category": {
                category: {name: estimate(value) for name, value in thresholds.items()}
                for category, thresholds in self.per_category.items()
            },
        }

    def config_fields(self) -> dict:
        """The config fields that carry these thresholds (`image_threshold`, `category_thresholds`, ...)."""
        return {
            "image_threshold": self.image.value,
            "pixel_threshold": self.pixel.value,
            "category_thresholds": {
                category: {name: value.value for name, value in thresholds.items()}
                for category, thresholds in self.per_category.items()
            }
            or None,
            "target_image_fpr": self.image.target_fpr,
            "target_pixel_fpr": self.pixel.target_fpr,
            "calibration_size": self.image.num_images,
        }


# ---------------------------------------------------------------------------------------------- estimators


def harrell_davis_weights(num_samples: int, quantile: float) -> np.ndarray:
    """`(num_samples,)` weights of the sorted samples in the Harrell-Davis estimate of `quantile`."""
    a, b = (num_samples + 1) * quantile, (num_samples + 1) * (1 - quantile)
    edges = stats.beta.cdf(np.arange(num_samples + 1) / num_samples, a, b)
    return np.diff(edges)


def harrell_davis_quantile(samples: np.ndarray, quantile: float) -> float:
    """The Harrell-Davis estimate of `quantile` of the distribution `samples` were drawn from."""
    samples = np.sort(np.asarray(samples, dtype=np.float64))
    return float(samples @ harrell_davis_weights(samples.size, quantile))


def image_threshold(scores: np.ndarray, target_fpr: float, seed: int = 0) -> ThresholdEstimate:
    """The image threshold at `target_fpr`: Harrell-Davis estimate and bootstrap interval.

    Args:
        scores: `(N,)` scores of normal images, N >= 1.
        target_fpr: In (0, 1).
        seed: Seeds the bootstrap.
    """
    scores = np.asarray(scores, dtype=np.float64)
    weights = harrell_davis_weights(scores.size, 1 - target_fpr)
    value = float(np.sort(scores) @ weights)
    resamples = np.sort(np.random.default_rng(seed).choice(scores, size=(NUM_RESAMPLES, scores.size)), axis=1)
    interval = _percentile_interval(resamples @ weights)
    return ThresholdEstimate(value, interval, target_fpr, int(scores.size), _resolution_note(scores.size, target_fpr))


def pixel_threshold(pixel_samples: list[np.ndarray], target_fpr: float, seed: int = 0) -> ThresholdEstimate:
    """The pixel threshold at `target_fpr`: empirical quantile of the pooled pixels, bootstrap over images.

    Args:
        pixel_samples: One array of pixel scores per normal image.
        target_fpr: In (0, 1).
        seed: Seeds the bootstrap.
    """
    pooled = np.concatenate(pixel_samples)
    value = float(np.quantile(pooled, 1 - target_fpr))
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(PIXEL_RESAMPLES):
        chosen = rng.integers(0, len(pixel_samples), len(pixel_samples))
        estimates.append(np.quantile(np.concatenate([pixel_samples[i] for i in chosen]), 1 - target_fpr))
    interval = _percentile_interval(np.asarray(estimates))
    return ThresholdEstimate(value, interval, target_fpr, len(pixel_samples), None)


def _percentile_interval(estimates: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return float(low), float(high)


def _resolution_note(num_images: int, target_fpr: float) -> str | None:
    if num_images * target_fpr >= 1:
        return None
    return (
        f"{num_images} normal images cannot resolve a false-positive rate of {target_fpr:g} (that needs at least "
        f"{int(np.ceil(1 / target_fpr))}): the threshold lies near the largest normal score, and the real rate on new "
        "normal images may be higher. Calibrate on more normal images."
    )


def calibrate(
    scores: NormalScores, target_image_fpr: float = 0.01, target_pixel_fpr: float = 0.01, seed: int = 0
) -> CalibrationResult:
    """Global thresholds, and per-category ones for categories with at least `MIN_IMAGES_PER_CATEGORY` images."""
    if scores.image_scores.size == 0:
        raise ValueError("no normal images to calibrate on")
    per_category = {}
    for category in sorted(set(scores.categories.tolist())):
        rows = np.flatnonzero(scores.categories == category)
        if rows.size < MIN_IMAGES_PER_CATEGORY:
            continue
        per_category[category] = {
            "image_threshold": image_threshold(scores.image_scores[rows], target_image_fpr, seed),
            "pixel_threshold": pixel_threshold([scores.pixel_samples[i] for i in rows], target_pixel_fpr, seed),
        }
    return CalibrationResult(
        image=image_threshold(scores.image_scores, target_image_fpr, seed),
        pixel=pixel_threshold(scores.pixel_samples, target_pixel_fpr, seed),
        per_category=per_category,
    )


# ---------------------------------------------------------------------------------------------- scores


def collect_normal_scores(
    model: PreTrainedModel,
    processor: CLIPADAImageProcessor,
    split: datasets.Dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    seed: int = 0,
) -> NormalScores:
    """Runs the model over the normal images of `split` (anomalous rows are skipped) and keeps their scores.

    Memory stays flat: per image, one score and up to `PIXELS_PER_IMAGE` pixel scores.

    Raises:
        ValueError: If the split holds no normal image.
    """
    labels = np.asarray(split["label"])
    split = split.select(np.flatnonzero(labels == 0))
    if len(split) == 0:
        raise ValueError("the split holds no normal image to calibrate on")
    backend = TorchBackend(model, device)
    rng = np.random.default_rng(seed)
    image_scores, pixel_samples = [], []
    for inputs, categories in _normal_batches(split, processor, batch_size):
        # squash maps at the input size; letterbox and tiles per image, as evaluation and predict score them
        scored = score_inputs(backend, processor, inputs, categories)
        image_scores.append(scored.scores)
        for anomaly_map in scored.anomaly_maps:
            flat = anomaly_map.ravel()
            if flat.size > PIXELS_PER_IMAGE:
                flat = flat[rng.choice(flat.size, PIXELS_PER_IMAGE, replace=False)]
            pixel_samples.append(flat.copy())
    return NormalScores(np.concatenate(image_scores), np.asarray(split["category"]), pixel_samples)


def _normal_batches(
    split: datasets.Dataset, processor: CLIPADAImageProcessor, batch_size: int
) -> Iterator[tuple[BatchFeature, list[str]]]:
    """`(inputs, categories)` batches: the processor's output (`pixel_values` `(N, 3, H, W)`, and `image_layouts`
    for letterbox and tiles: N inputs for B images) and the B images' categories."""

    def collate(examples: list[dict]) -> tuple[BatchFeature, list[str]]:
        inputs = processor(images=[example["image"] for example in examples])
        return inputs, [example["category"] for example in examples]

    yield from DataLoader(split.select_columns(["image", "category"]), batch_size=batch_size, collate_fn=collate)


def hold_out_normal_images(
    split: datasets.Dataset, fraction: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Splits the normal images of every category into a training part and a calibration part.

    Per category, `round(fraction * n)` normal images (at least one when `fraction > 0`, and never all of them)
    are held out, chosen by a seeded permutation. Anomalous rows stay in the training part (the loader drops them).

    Returns:
        `(training_split, calibration_split)`; the calibration split is None when `fraction` is 0.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"--calibration_fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return split, None
    rng = np.random.default_rng(seed)
    labels, categories = np.asarray(split["label"]), np.asarray(split["category"])
    held_out = []
    for category in sorted(set(categories.tolist())):
        normal = np.flatnonzero((categories == category) & (labels == 0))
        if normal.size < 2:  # a category's only normal image stays for training
            continue
        count = min(max(1, round(fraction * normal.size)), normal.size - 1)
        held_out.extend(rng.permutation(normal)[:count].tolist())
    held_out = np.sort(np.asarray(held_out, dtype=np.int64))
    keep = np.setdiff1d(np.arange(len(split)), held_out)
    return split.select(keep), split.select(held_out)


__all__ = [
    "CalibrationResult",
    "NormalScores",
    "ThresholdEstimate",
    "calibrate",
    "collect_normal_scores",
    "harrell_davis_quantile",
    "hold_out_normal_images",
    "image_threshold",
    "pixel_threshold",
]
