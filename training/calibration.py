"""Thresholds from normal images (false rejects) and, when labelled, defective images (escapes).

An image threshold t for a target false-positive (false-reject) rate alpha is the (1 - alpha) quantile of the
image scores of normal images. With few images the empirical quantile is coarse (20 scores have no 1% quantile: any
value between the two largest scores would do), so the estimate is the **Harrell-Davis quantile** (Harrell & Davis,
Biometrika 1982): a weighted mean of all order statistics with Beta((n + 1) q, (n + 1)(1 - q)) weights, smooth and
less biased than a single order statistic. Its uncertainty is a **95% bootstrap percentile interval** (2,000
resamples of the images). When n < 1 / alpha the data hold no information beyond the largest normal score, and the
result says so.

With labelled defective images and a target escape rate beta (an escape: a defective image scored below the
threshold, so passed as OK), the escape threshold is the same Harrell-Davis estimate of the beta quantile of the
defect scores, capped at the (floor(beta m) + 1)-th smallest of the m defect scores so that at most beta m of them
escape on the calibration data; its interval bootstraps that capped estimate. The FPR target gives a lowest
threshold, the escape target a highest one; the image threshold is the smaller of the two: when they conflict the
escape target (safety) binds and the false-reject rate exceeds its target. n normal images resolve false-reject
rates down to 1 / n, m defective images escape rates down to 1 / m (`resolution`).

Pixel thresholds use the pixels of normal images: up to `PIXELS_PER_IMAGE` pixels per image, drawn uniformly
(seeded) so that memory stays flat; with that many pixels the Harrell-Davis and the empirical quantile agree to far
below the sampling error, so the empirical one is used, and the bootstrap resamples whole images (neighbouring
pixels are not independent).

Example:
    ```python
    >>> scores = collect_normal_scores(model, processor, held_out_split, device="cpu")
    >>> defects = collect_defect_scores(model, processor, held_out_split, device="cpu")
    >>> result = calibrate(scores, target_image_fpr=0.01, defect_scores=defects, target_escape_rate=0.02)
    >>> result.image.value, result.image.binding, result.image.rates["chosen"]
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
from training.metrics.finite import NonFiniteCount

PIXELS_PER_IMAGE = 4096
NUM_RESAMPLES = 2000
PIXEL_RESAMPLES = 200  # each one pools and partitions every sampled pixel again
CONFIDENCE = 0.95
# Fewer calibration images than this in a category: it gets no thresholds of its own (it uses the global ones).
MIN_IMAGES_PER_CATEGORY = 10
# Fewer defective calibration images than this in a category: it uses the global escape threshold. 10 defects
# resolve escape rates down to 10%; a category's own threshold for a lower target sits at its lowest defect score.
MIN_DEFECTIVE_IMAGES_PER_CATEGORY = 10
ESTIMATORS = {
    "image": "false-reject threshold: Harrell-Davis (1 - target_fpr) quantile of the normal images' scores, 95% "
    "bootstrap percentile interval",
    "escape": "escape threshold: Harrell-Davis target_escape_rate quantile of the defective images' scores, capped at "
    "the (floor(target_escape_rate * m) + 1)-th smallest of the m defect scores (so at most that share of them "
    "scores below it), 95% bootstrap percentile interval of the capped estimate",
    "choice": "image threshold = min(false-reject threshold, escape threshold): when they conflict the escape "
    "target binds and the false-reject rate exceeds its target",
    "pixel": f"empirical quantile of up to {PIXELS_PER_IMAGE} pixels per normal image, 95% bootstrap over images",
}
BINDINGS = ("false_reject", "escape")


@dataclasses.dataclass
class ThresholdEstimate:
    """A threshold from normal images (or pixels) with its uncertainty.

    Attributes:
        value: The threshold: "anomalous when score >= value".
        interval: `(low, high)`, the bootstrap percentile interval of `value`.
        target_fpr: The false-positive rate the threshold is calibrated for.
        num_images: Normal images it was estimated from.
        note: Set when the estimate is weak (too few images for the target rate).
        scope: `all`, or the category whose images it was estimated from.
    """

    value: float
    interval: tuple[float, float]
    target_fpr: float
    num_images: int
    note: str | None = None
    scope: str = "all"


@dataclasses.dataclass
class EscapeEstimate:
    """An image threshold from defective images: at most `target_escape_rate` of them score below it.

    Attributes:
        value: The threshold: "anomalous when score >= value"; a defective image below it escapes.
        interval: `(low, high)`, the bootstrap percentile interval of `value`.
        target_escape_rate: The share of defective images allowed to pass.
        num_defective_images: Defective images it was estimated from.
        note: Set when the estimate is weak (too few defective images for the target rate).
        scope: `all`, or the category whose images it was estimated from.
    """

    value: float
    interval: tuple[float, float]
    target_escape_rate: float
    num_defective_images: int
    note: str | None = None
    scope: str = "all"


@dataclasses.dataclass
class ImageThreshold:
    """The image threshold chosen from a false-reject target, an escape target, or both: the smaller candidate.

    Attributes:
        value: The threshold: "anomalous when score >= value".
        interval: The binding candidate's 95% interval.
        binding: `false_reject` or `escape`: the target that sets `value` (the only one given, or the lower threshold;
            escape on a tie).
        false_reject: The candidate for the false-positive target, or None without one.
        escape: The candidate for the escape target, or None without one.
        rates: On the calibration images, for each candidate and the `chosen` value: `{"threshold", "false_reject_rate"
            (share of normal images scoring >= it), "escape_rate" (share of defective images scoring < it)}`; a rate is
            None without images of its kind.
        num_normal_images: Normal images of this scope the rates are measured on.
        num_defective_images: Defective images of this scope the rates are measured on.
    """

    value: float
    interval: tuple[float, float]
    binding: str
    false_reject: ThresholdEstimate | None
    escape: EscapeEstimate | None
    rates: dict[str, dict[str, float | None]]
    num_normal_images: int = 0
    num_defective_images: int = 0

    @property
    def num_images(self) -> int:
        """The normal images calibrated on (as `ThresholdEstimate.num_images`, which this was before escapes)."""
        return self.num_normal_images

    @property
    def target_fpr(self) -> float | None:
        """The false-reject target (as `ThresholdEstimate.target_fpr`), None without one."""
        return None if self.false_reject is None else self.false_reject.target_fpr

    @property
    def note(self) -> str | None:
        """The candidates' notes in one line (as `ThresholdEstimate.note`), None when the estimates are sound."""
        return "; ".join(self.notes) or None

    @property
    def notes(self) -> list[str]:
        """The candidates' notes on weak estimates."""
        return [candidate.note for candidate in (self.false_reject, self.escape) if candidate and candidate.note]

    def to_dict(self) -> dict:
        """JSON-able: the chosen value, the binding target, each candidate with its rates on the calibration data."""
        candidates = {
            name: None if candidate is None else _estimate_dict(candidate) | _without_threshold(self.rates[name])
            for name, candidate in (("false_reject", self.false_reject), ("escape", self.escape))
        }
        chosen = _without_threshold(self.rates["chosen"])
        counts = {"num_normal_images": self.num_normal_images, "num_defective_images": self.num_defective_images}
        return {
            "value": self.value,
            "interval": list(self.interval),
            "binding": self.binding,
            # the fields of 0.1's calibration.json, kept at the top for its readers
            "target_fpr": self.target_fpr,
            "num_images": self.num_images,
            "note": self.note,
            **chosen,
            **counts,
            **candidates,
        }


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
class DefectScores:
    """Image scores of defective images, gathered by `collect_defect_scores`.

    Attributes:
        image_scores: `(M,)` image scores.
        categories: `(M,)` category names.
    """

    image_scores: np.ndarray
    categories: np.ndarray


@dataclasses.dataclass
class CalibrationResult:
    """Global and per-category image and pixel thresholds, and what the calibration images can resolve.

    Attributes:
        image: The chosen image threshold with its candidates.
        pixel: The pixel threshold.
        per_category: Per category with its own estimates, `{"image_threshold": ImageThreshold, "pixel_threshold":
            ThresholdEstimate}` (a candidate the category has too few images for is the global one).
        num_defective_images: Defective images the escape threshold was estimated from (0 without an escape target).
        calibration_mode: How images became model inputs (`inference.modes.input_mode`), set by `calibrate_model`.
    """

    image: ImageThreshold
    pixel: ThresholdEstimate
    per_category: dict[str, dict]
    num_defective_images: int = 0
    calibration_mode: dict | None = None

    @property
    def num_normal_images(self) -> int:
        return self.pixel.num_images

    def resolution(self) -> dict:
        """The smallest rates the calibration images support: 1 / n for n normal, 1 / m for m defective images."""
        return resolution(self.num_normal_images, self.num_defective_images)

    def to_dict(self) -> dict:
        """JSON-able: every estimate with its interval and rates, the resolution, plus the estimators' description."""
        return {
            "estimators": ESTIMATORS,
            "image_threshold": self.image.to_dict(),
            "pixel_threshold": _estimate_dict(self.pixel),
            "resolution": self.resolution(),
            "calibration_mode": self.calibration_mode,
            "per_category": {
                category: {name: _estimate_dict(value) for name, value in thresholds.items()}
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
            "target_image_fpr": self.image.false_reject.target_fpr if self.image.false_reject else None,
            "target_pixel_fpr": self.pixel.target_fpr,
            "calibration_size": self.num_normal_images,
            "target_escape_rate": self.image.escape.target_escape_rate if self.image.escape else None,
            "calibration_mode": self.calibration_mode,
        }


def _without_threshold(rates: dict) -> dict:
    return {key: value for key, value in rates.items() if key != "threshold"}


def _estimate_dict(estimate) -> dict:
    if isinstance(estimate, ImageThreshold):
        return estimate.to_dict()
    return dataclasses.asdict(estimate) | {"interval": list(estimate.interval)}


def resolution(num_normal_images: int, num_defective_images: int = 0) -> dict:
    """`{"normal_images", "smallest_false_reject_rate", "defective_images", "smallest_escape_rate"}`: n images resolve
    rates down to 1 / n (below it the threshold is just the most extreme score); None without images."""
    return {
        "normal_images": num_normal_images,
        "smallest_false_reject_rate": 1 / num_normal_images if num_normal_images else None,
        "defective_images": num_defective_images,
        "smallest_escape_rate": 1 / num_defective_images if num_defective_images else None,
    }


def resolves(num_images: int, rate: float) -> bool:
    """Whether `num_images` images resolve `rate`: at least 1 / rate of them (n * rate >= 1)."""
    return num_images * rate >= 1 - 1e-9


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


def image_threshold(scores: np.ndarray, target_fpr: float, seed: int = 0, scope: str = "all") -> ThresholdEstimate:
    """The false-reject image threshold at `target_fpr`: Harrell-Davis estimate and bootstrap interval.

    Args:
        scores: `(N,)` scores of normal images, N >= 1.
        target_fpr: In (0, 1).
        seed: Seeds the bootstrap.
        scope: `all` or the category the scores belong to.
    """
    scores = np.asarray(scores, dtype=np.float64)
    weights = harrell_davis_weights(scores.size, 1 - target_fpr)
    value = float(np.sort(scores) @ weights)
    resamples = np.sort(np.random.default_rng(seed).choice(scores, size=(NUM_RESAMPLES, scores.size)), axis=1)
    interval = _percentile_interval(resamples @ weights)
    note = _resolution_note(scores.size, target_fpr)
    return ThresholdEstimate(value, interval, target_fpr, int(scores.size), note, scope)


def escape_threshold(
    scores: np.ndarray, target_escape_rate: float, seed: int = 0, scope: str = "all"
) -> EscapeEstimate:
    """The escape image threshold: at most `target_escape_rate` of defective images score below it.

    The Harrell-Davis estimate of the `target_escape_rate` quantile of the defect scores (the false-reject
    estimator, mirrored), capped at the (floor(rate * m) + 1)-th smallest score: on the m calibration defects at most
    floor(rate * m) escape (none when m < 1 / rate, where the cap is the lowest defect score). The bootstrap interval
    resamples the defective images and applies the same cap.

    Args:
        scores: `(M,)` scores of defective images, M >= 1.
        target_escape_rate: In (0, 1).
        seed: Seeds the bootstrap.
        scope: `all` or the category the scores belong to.
    """
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    weights = harrell_davis_weights(scores.size, target_escape_rate)
    cap = min(allowed_escapes(scores.size, target_escape_rate), scores.size - 1)  # 0-based: the (cap + 1)-th smallest
    value = min(float(scores @ weights), float(scores[cap]))
    resamples = np.sort(np.random.default_rng(seed).choice(scores, size=(NUM_RESAMPLES, scores.size)), axis=1)
    interval = _percentile_interval(np.minimum(resamples @ weights, resamples[:, cap]))
    note = _escape_resolution_note(scores.size, target_escape_rate)
    return EscapeEstimate(value, interval, target_escape_rate, int(scores.size), note, scope)


def allowed_escapes(num_defective_images: int, target_escape_rate: float) -> int:
    """How many of `num_defective_images` may escape at `target_escape_rate`: floor(rate * m)."""
    return int(np.floor(num_defective_images * target_escape_rate + 1e-9))


def pixel_threshold(
    pixel_samples: list[np.ndarray], target_fpr: float, seed: int = 0, scope: str = "all"
) -> ThresholdEstimate:
    """The pixel threshold at `target_fpr`: empirical quantile of the pooled pixels, bootstrap over images.

    Args:
        pixel_samples: One array of pixel scores per normal image.
        target_fpr: In (0, 1).
        seed: Seeds the bootstrap.
        scope: `all` or the category the pixels belong to.
    """
    pooled = np.concatenate(pixel_samples)
    value = float(np.quantile(pooled, 1 - target_fpr))
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(PIXEL_RESAMPLES):
        chosen = rng.integers(0, len(pixel_samples), len(pixel_samples))
        estimates.append(np.quantile(np.concatenate([pixel_samples[i] for i in chosen]), 1 - target_fpr))
    interval = _percentile_interval(np.asarray(estimates))
    return ThresholdEstimate(value, interval, target_fpr, len(pixel_samples), None, scope)


def choose_image_threshold(
    false_reject: ThresholdEstimate | None,
    escape: EscapeEstimate | None,
    normal_scores: np.ndarray,
    defect_scores: np.ndarray | None = None,
) -> ImageThreshold:
    """The smaller of the two candidates (escape binds on a conflict), with every candidate's calibration rates.

    Args:
        false_reject: The candidate for the false-positive target (the lowest acceptable threshold), or None.
        escape: The candidate for the escape target (the highest acceptable threshold), or None.
        normal_scores: Image scores of the normal calibration images the rates are measured on.
        defect_scores: Image scores of the defective ones, or None.
    """
    if false_reject is None and escape is None:
        raise ValueError("give a target false-positive rate, a target escape rate, or both")
    escape_binds = escape is not None and (false_reject is None or escape.value <= false_reject.value)
    binding = "escape" if escape_binds else "false_reject"
    chosen = escape if binding == "escape" else false_reject
    rates = {
        name: calibration_rates(candidate.value, normal_scores, defect_scores)
        for name, candidate in (("false_reject", false_reject), ("escape", escape))
        if candidate is not None
    }
    rates["chosen"] = calibration_rates(chosen.value, normal_scores, defect_scores)
    num_defective = 0 if defect_scores is None else int(np.asarray(defect_scores).size)
    counts = {"num_normal_images": int(np.asarray(normal_scores).size), "num_defective_images": num_defective}
    return ImageThreshold(chosen.value, chosen.interval, binding, false_reject, escape, rates, **counts)


def calibration_rates(threshold: float, normal_scores: np.ndarray, defect_scores: np.ndarray | None = None) -> dict:
    """`{"threshold", "false_reject_rate", "escape_rate"}` of `threshold` on the given images (None without any):
    normal images scoring >= it are rejected, defective images scoring < it escape."""
    normal_scores = np.asarray(normal_scores)
    defect_scores = np.asarray([] if defect_scores is None else defect_scores)
    return {
        "threshold": float(threshold),
        "false_reject_rate": float(np.mean(normal_scores >= threshold)) if normal_scores.size else None,
        "escape_rate": float(np.mean(defect_scores < threshold)) if defect_scores.size else None,
    }


def _percentile_interval(estimates: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return float(low), float(high)


def count(number: int, noun: str) -> str:
    """`"1 normal image"`, `"3 normal images"`: a count with its noun in the right number."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _they(number: int) -> str:
    return "it resolves" if number == 1 else "they resolve"


def _resolution_note(num_images: int, target_fpr: float) -> str | None:
    if resolves(num_images, target_fpr):
        return None
    return (
        f"{count(num_images, 'normal image')} cannot resolve a false-positive rate of {target_fpr:g} (that needs at "
        f"least {int(np.ceil(1 / target_fpr - 1e-9))}; {_they(num_images)} rates down to 1/{num_images} = "
        f"{1 / num_images:.3g}): the threshold lies near the largest normal score, and the real rate on new normal "
        "images may be higher. Calibrate on more normal images."
    )


def _escape_resolution_note(num_images: int, target_escape_rate: float) -> str | None:
    if resolves(num_images, target_escape_rate):
        return None
    return (
        f"{count(num_images, 'defective image')} cannot resolve an escape rate of {target_escape_rate:g} (that needs "
        f"at least {int(np.ceil(1 / target_escape_rate - 1e-9))}; {_they(num_images)} rates down to 1/{num_images} "
        f"= {1 / num_images:.3g}): the threshold is the lowest defect score, so none of them escapes, and the real "
        "rate on new defects may be higher. Calibrate on more defective images."
    )


def calibrate(
    scores: NormalScores,
    target_image_fpr: float | None = 0.01,
    target_pixel_fpr: float = 0.01,
    seed: int = 0,
    defect_scores: DefectScores | None = None,
    target_escape_rate: float | None = None,
) -> CalibrationResult:
    """Global thresholds, and per-category ones where a category has enough images of its own.

    A category gets its own false-reject and pixel thresholds with at least `MIN_IMAGES_PER_CATEGORY` normal images,
    its own escape threshold with at least `MIN_DEFECTIVE_IMAGES_PER_CATEGORY` defective ones; a candidate it has too
    few images for is the global one, and its image threshold is again the smaller candidate.

    Args:
        scores: The normal images' scores (they set the false-reject and pixel thresholds).
        target_image_fpr: Target false-positive (false-reject) rate of images, or None for no such target.
        target_pixel_fpr: Target false-positive rate of pixels.
        seed: Seeds the bootstraps.
        defect_scores: The defective images' scores; needed with `target_escape_rate`.
        target_escape_rate: Target share of defective images scoring below the image threshold, or None.

    Raises:
        ValueError: Without normal images, without any image target, or with an escape target but no defect scores.
    """
    if scores.image_scores.size == 0:
        raise ValueError("no normal images to calibrate on")
    if target_image_fpr is None and target_escape_rate is None:
        raise ValueError("give a target false-positive rate, a target escape rate, or both")
    if target_escape_rate is not None and (defect_scores is None or defect_scores.image_scores.size == 0):
        raise ValueError("a target escape rate needs defective images to calibrate on, and there are none")
    if target_escape_rate is None:
        defect_scores = None
    defects = defect_scores.image_scores if defect_scores is not None else np.zeros(0)
    defect_categories = defect_scores.categories if defect_scores is not None else np.zeros(0, dtype=str)

    global_false_reject = (
        image_threshold(scores.image_scores, target_image_fpr, seed) if target_image_fpr is not None else None
    )
    global_escape = escape_threshold(defects, target_escape_rate, seed) if target_escape_rate is not None else None
    global_pixel = pixel_threshold(scores.pixel_samples, target_pixel_fpr, seed)

    per_category = {}
    for category in sorted(set(scores.categories.tolist()) | set(defect_categories.tolist())):
        normal_rows = np.flatnonzero(scores.categories == category)
        defect_rows = np.flatnonzero(defect_categories == category)
        own_normals = normal_rows.size >= MIN_IMAGES_PER_CATEGORY
        own_defects = global_escape is not None and defect_rows.size >= MIN_DEFECTIVE_IMAGES_PER_CATEGORY
        if not (own_normals or own_defects):
            continue
        false_reject, escape, pixel = global_false_reject, global_escape, global_pixel
        if own_normals:
            if target_image_fpr is not None:
                false_reject = image_threshold(scores.image_scores[normal_rows], target_image_fpr, seed, category)
            pixel = pixel_threshold([scores.pixel_samples[i] for i in normal_rows], target_pixel_fpr, seed, category)
        if own_defects:
            escape = escape_threshold(defects[defect_rows], target_escape_rate, seed, category)
        per_category[category] = {
            "image_threshold": choose_image_threshold(
                false_reject, escape, scores.image_scores[normal_rows], defects[defect_rows]
            ),
            "pixel_threshold": pixel,
        }
    return CalibrationResult(
        image=choose_image_threshold(global_false_reject, global_escape, scores.image_scores, defects),
        pixel=global_pixel,
        per_category=per_category,
        num_defective_images=int(defects.size),
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
        NonFiniteScoresError: If the model scored some of them NaN or infinite (counted over the whole split).
    """
    split = split.select(np.flatnonzero(np.asarray(split["label"]) == 0))
    if len(split) == 0:
        raise ValueError("the split holds no normal image to calibrate on")
    rng = np.random.default_rng(seed)
    image_scores, pixel_samples = [], []
    non_finite = NonFiniteCount("normal images")
    for scored, categories in _scored_batches(model, processor, split, device, batch_size):
        non_finite.add(scored.scores, scored.anomaly_maps, categories)
        image_scores.append(scored.scores)
        for anomaly_map in scored.anomaly_maps:
            flat = anomaly_map.ravel()
            if flat.size > PIXELS_PER_IMAGE:
                flat = flat[rng.choice(flat.size, PIXELS_PER_IMAGE, replace=False)]
            pixel_samples.append(flat.copy())
    non_finite.check()
    return NormalScores(np.concatenate(image_scores), np.asarray(split["category"]), pixel_samples)


def collect_defect_scores(
    model: PreTrainedModel,
    processor: CLIPADAImageProcessor,
    split: datasets.Dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
) -> DefectScores:
    """Runs the model over the defective images of `split` (label 1; normal rows are skipped) and keeps their image
    scores.

    Raises:
        ValueError: If the split holds no defective image.
        NonFiniteScoresError: If the model scored some of them NaN or infinite (counted over the whole split).
    """
    split = split.select(np.flatnonzero(np.asarray(split["label"]) == 1))
    if len(split) == 0:
        raise ValueError("the split holds no defective image (label 1) to calibrate on")
    image_scores, non_finite = [], NonFiniteCount("defective images")
    for scored, categories in _scored_batches(model, processor, split, device, batch_size):
        non_finite.add(scored.scores, scored.anomaly_maps, categories)
        image_scores.append(scored.scores)
    non_finite.check()
    return DefectScores(np.concatenate(image_scores), np.asarray(split["category"]))


def _scored_batches(
    model: PreTrainedModel,
    processor: CLIPADAImageProcessor,
    split: datasets.Dataset,
    device: torch.device | str,
    batch_size: int,
) -> Iterator:
    """`(scored, categories)` per batch of `split`: `inference.scoring.score_inputs`' output (`scores`,
    `anomaly_maps`) and the B images' categories."""
    backend = TorchBackend(model, device)
    for inputs, categories in _image_batches(split, processor, batch_size):
        # squash maps at the input size; letterbox and tiles per image, as evaluation and predict score them
        yield score_inputs(backend, processor, inputs, categories), categories


def _image_batches(
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
    "BINDINGS",
    "CalibrationResult",
    "DefectScores",
    "ESTIMATORS",
    "EscapeEstimate",
    "ImageThreshold",
    "MIN_DEFECTIVE_IMAGES_PER_CATEGORY",
    "MIN_IMAGES_PER_CATEGORY",
    "NormalScores",
    "ThresholdEstimate",
    "allowed_escapes",
    "calibrate",
    "calibration_rates",
    "choose_image_threshold",
    "count",
    "collect_defect_scores",
    "collect_normal_scores",
    "escape_threshold",
    "harrell_davis_quantile",
    "hold_out_normal_images",
    "image_threshold",
    "pixel_threshold",
    "resolution",
    "resolves",
]
