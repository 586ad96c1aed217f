"""The anomaly-detection metric math (I-AUROC, P-AUROC, P-mAP, AUPRO, F1-max, overkill at an escape rate, false-reject
and escape rates at a threshold): exact, numpy and scipy only.

The one implementation in the project: the streaming accumulator (`training.metrics.streaming`) and the
`evaluate` module (`training/metrics/clipada_anomaly.py`) both call it.

Example:
    ```python
    >>> from training.metrics.anomaly import anomaly_metrics
    >>> results = anomaly_metrics(anomaly_maps, masks, image_scores, image_labels)  # (N, H, W), (N, H, W), (N,), (N,)
    >>> sorted(results)[:6]
    ['aupro', 'image_auroc', 'image_f1_max', 'overkill_at_10pct_escape', 'overkill_at_2pct_escape', ...]
    >>> operating_point_metrics(image_scores, image_labels, image_threshold=0.62)["false_reject_rate"]
    ```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

# Names of the values returned by every entry point, in the paper's column order.
METRIC_NAMES = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "image_f1_max", "pixel_f1_max")
# The scores where the two F1-max values are reached ("anomalous when score >= threshold").
THRESHOLD_NAMES = ("image_f1_max_threshold", "pixel_f1_max_threshold")

# Escape rates of the overkill metric: AdaptCLIP's industrial operating points (2, 5 and 10 % of defects pass).
ESCAPE_RATES = (0.02, 0.05, 0.10)
# Key of the note saying why the overkill values are None (present only then).
OVERKILL_NOTE = "overkill"
# Names of `operating_point_metrics`' values: the threshold used, the rates and the OK/NG counts behind them.
OPERATING_POINT_NAMES = (
    "image_threshold",
    "false_reject_rate",
    "normal_images_rejected",
    "normal_images",
    "escape_rate",
    "defective_images_passed",
    "defective_images",
)
# Key of the note saying why a rate is None ("not calibrated", no normal or no defective image; present only then).
OPERATING_POINT_NOTE = "operating_point"
NOT_CALIBRATED = "not calibrated"
# Keys of the notes saying why the image or the pixel metrics are undefined (`nan`; present only then), so that the
# `null` they become in metrics.json comes with its reason.
IMAGE_METRICS_NOTE = "image_metrics"
PIXEL_METRICS_NOTE = "pixel_metrics"


def overkill_name(escape_rate: float) -> str:
    """The key of the overkill at `escape_rate`: 0.02 -> `overkill_at_2pct_escape`."""
    return f"overkill_at_{100 * escape_rate:g}pct_escape"


OVERKILL_NAMES = tuple(overkill_name(rate) for rate in ESCAPE_RATES)

# 8-connectivity inside each (H, W) slice of an (N, H, W) stack, and no connection between images.
_REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_REGION_STRUCTURE[1] = True


class _ThresholdCounts(NamedTuple):
    """Counts at each distinct positive score t, in descending order of t (see `_threshold_counts`)."""

    thresholds: np.ndarray  # the distinct positive scores t, highest first
    negatives_above: np.ndarray  # number of negatives with score > t
    negatives_at_or_above: np.ndarray  # number of negatives with score >= t
    positives_at_or_above: np.ndarray  # number of positives with score >= t
    weight_at_or_above: np.ndarray | None  # sum of the positives' weights with score >= t


def split_pixels(anomaly_maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Splits a stack of anomaly maps into the compact buffers the pixel metrics need.

    Ground-truth regions are the 8-connected components of each image's mask (MVTec-AD's definition; a
    region never spans two images). Every anomalous pixel gets the weight `1 / |region|`, so that summing
    the weights of the pixels above a threshold and dividing by the number of regions gives the
    per-region overlap (PRO) at that threshold.

    Args:
        anomaly_maps (`np.ndarray` of shape `(N, H, W)` or `(N, 1, H, W)`):
            Finite anomaly scores; stored as float32.
        masks (`np.ndarray` of the same shape):
            Ground truth; a pixel is anomalous where `mask > 0.5`, so bool, {0, 1}, {0, 255} and small
            defect-class ids all work.

    Returns:
        `tuple`: `(normal_scores, anomalous_scores, anomalous_weights, num_regions)`: the float32 scores
        of the normal pixels, the float32 scores of the anomalous pixels, their float32 region weights
        `1 / |region|` (aligned with `anomalous_scores`), and the number of regions.

    Raises:
        ValueError: If the shapes differ, are not 3-D, or a score or a mask value is NaN or infinite.
    """
    maps = np.asarray(anomaly_maps, dtype=np.float32)
    masks = np.asarray(masks)
    if np.issubdtype(masks.dtype, np.floating) and not np.isfinite(masks).all():
        raise ValueError("masks must be finite; found NaN or infinite values (a NaN pixel is neither normal nor not)")
    anomalous = masks > 0.5
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if anomalous.ndim == 4 and anomalous.shape[1] == 1:
        anomalous = anomalous[:, 0]
    if maps.ndim != 3 or maps.shape != anomalous.shape:
        raise ValueError(
            f"anomaly_maps and masks must both have shape (N, H, W); got {maps.shape} and {anomalous.shape}"
        )
    if not np.isfinite(maps).all():
        raise ValueError("anomaly_maps must be finite; found NaN or infinite scores")
    region_ids, num_regions = ndimage.label(anomalous, structure=_REGION_STRUCTURE)
    anomalous_ids = region_ids[anomalous]
    region_sizes = np.bincount(anomalous_ids)  # index 0 (normal) never occurs among the anomalous pixels
    anomalous_weights = (1.0 / region_sizes[anomalous_ids]).astype(np.float32)
    return maps[~anomalous], maps[anomalous], anomalous_weights, int(num_regions)


def _threshold_counts(
    negatives_sorted: np.ndarray, positives: np.ndarray, positive_weights: np.ndarray | None = None
) -> _ThresholdCounts:
    """Counts negatives and (weighted) positives at or above each distinct positive score.

    Only the distinct positive scores matter: between two of them the true-positive side of every curve
    is constant and only false positives are added, which (for ROC/PRO) is a straight horizontal piece
    and (for precision-recall) never increases recall. Sorting the negatives once (no index array) and
    the far fewer positives with an argsort, then two binary searches, gives every curve exactly.

    Args:
        negatives_sorted (`np.ndarray`): Negative scores, sorted ascending.
        positives (`np.ndarray`): Positive scores (same dtype as the negatives), not empty.
        positive_weights (`np.ndarray`, *optional*): A weight per positive (the AUPRO region weights).

    Returns:
        `_ThresholdCounts`: One entry per distinct positive score, highest score first.
    """
    order = np.argsort(positives)[::-1]
    positives_sorted = positives[order]
    starts = np.flatnonzero(np.concatenate(([True], positives_sorted[1:] != positives_sorted[:-1])))
    thresholds = positives_sorted[starts]
    positives_at_or_above = np.append(starts[1:], positives_sorted.size)
    weight_at_or_above = None
    if positive_weights is not None:
        group_weights = np.add.reduceat(positive_weights[order].astype(np.float64), starts)
        weight_at_or_above = np.cumsum(group_weights)
    num_negatives = negatives_sorted.size
    negatives_at_or_above = num_negatives - np.searchsorted(negatives_sorted, thresholds, side="left")
    negatives_above = num_negatives - np.searchsorted(negatives_sorted, thresholds, side="right")
    return _ThresholdCounts(
        thresholds, negatives_above, negatives_at_or_above, positives_at_or_above, weight_at_or_above
    )


def _curve_points(
    negatives_above: np.ndarray, negatives_at_or_above: np.ndarray, y_at_or_above: np.ndarray, num_negatives: int
) -> tuple[np.ndarray, np.ndarray]:
    """Builds the exact (FPR, y) curve, one point per distinct score, from (0, 0) to (1, 1).

    At each distinct positive score t the curve first runs horizontally to FPR(score > t) (the negatives
    strictly above t; any distinct negative-only thresholds in between lie on this horizontal piece and
    change neither the trapezoid area nor an interpolated value), then goes to (FPR(score >= t), y(t)),
    which is a diagonal when negatives tie with t.

    Args:
        negatives_above (`np.ndarray`): Negatives with score > t, per distinct positive score t.
        negatives_at_or_above (`np.ndarray`): Negatives with score >= t.
        y_at_or_above (`np.ndarray`): The curve's y (TPR or PRO) at t, in [0, 1].
        num_negatives (`int`): Total number of negatives.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: Non-decreasing x (FPR) and the matching y, both float64.
    """
    num_points = 2 * y_at_or_above.size + 2
    x = np.empty(num_points)
    y = np.empty(num_points)
    x[0] = y[0] = 0.0
    x[1:-1:2] = negatives_above / num_negatives
    y[1:-1:2] = np.concatenate(([0.0], y_at_or_above[:-1]))
    x[2:-1:2] = negatives_at_or_above / num_negatives
    y[2:-1:2] = y_at_or_above
    x[-1] = y[-1] = 1.0
    np.minimum(y, 1.0, out=y)  # float rounding of the summed region weights must not exceed 1
    return x, y


def _trapezoid(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under (x, y) from x[0] to x_max, interpolating y linearly at x_max.

    This is the `trapezoid` of the MVTec-AD evaluation code: the points with `x <= x_max` are integrated,
    plus the piece from the last of them to the curve's linear interpolation at `x_max`.

    Args:
        x (`np.ndarray`): Non-decreasing abscissae, with `x[0] <= x_max <= x[-1]`.
        y (`np.ndarray`): Ordinates.
        x_max (`float`): Upper integration limit.

    Returns:
        `float`: The area.
    """
    end = int(np.searchsorted(x, x_max, side="right"))  # x[end - 1] <= x_max < x[end]
    area = float(np.sum(0.5 * (y[1:end] + y[: end - 1]) * np.diff(x[:end])))
    if end < x.size and x[end - 1] < x_max:
        y_at_max = y[end - 1] + (y[end] - y[end - 1]) * (x_max - x[end - 1]) / (x[end] - x[end - 1])
        area += 0.5 * (y_at_max + y[end - 1]) * (x_max - x[end - 1])
    return float(area)


def _ranking_metrics(
    counts: _ThresholdCounts, num_negatives: int, num_positives: int
) -> tuple[float, float, float, float]:
    """AUROC, average precision, F1-max and the threshold where F1-max is reached, from the threshold counts.

    Args:
        counts (`_ThresholdCounts`): From `_threshold_counts`.
        num_negatives (`int`): Total number of negatives.
        num_positives (`int`): Total number of positives.

    Returns:
        `tuple[float, float, float, float]`: `(auroc, average_precision, f1_max, f1_max_threshold)`.
        AUROC is the trapezoid area of the ROC curve (ties count one half). Average precision is
        `sum_n (R_n - R_{n-1}) P_n` over the distinct thresholds, without interpolation (scikit-learn's
        `average_precision_score`). F1-max is the largest `2 P R / (P + R) = 2 TP / (TP + FP + num_positives)`
        over all thresholds; it is always reached at a distinct positive score, since lowering the threshold
        to the next one only adds false positives. `f1_max_threshold` is that score: "anomalous when
        score >= threshold" reaches F1-max (the highest such score when several tie).
    """
    true_positives = counts.positives_at_or_above
    false_positives = counts.negatives_at_or_above
    x, y = _curve_points(counts.negatives_above, false_positives, true_positives / num_positives, num_negatives)
    auroc = _trapezoid(x, y, 1.0)
    precision = true_positives / (true_positives + false_positives)
    new_positives = np.diff(true_positives, prepend=0)
    average_precision = float(np.sum(new_positives * precision) / num_positives)
    f1 = 2.0 * true_positives / (true_positives + false_positives + num_positives)
    best = int(np.argmax(f1))
    return auroc, average_precision, float(f1[best]), float(counts.thresholds[best])


def pixel_metrics(
    normal_scores_sorted: np.ndarray,
    anomalous_scores: np.ndarray,
    anomalous_weights: np.ndarray,
    num_regions: int,
    aupro_fpr_limit: float = 0.3,
) -> dict[str, float]:
    """Pixel AUROC, pixel AP (P-mAP), pixel F1-max and AUPRO from the buffers of `split_pixels`.

    AUPRO follows Bergmann et al. (MVTec-AD): FPR(t) is the fraction of all normal pixels (normal images
    included) with score >= t, PRO(t) the mean over all regions of the fraction of the region's pixels
    with score >= t; the exact curve (one point per distinct score, from (0, 0) to (1, 1)) is integrated
    with the trapezoid rule up to `aupro_fpr_limit` (linear interpolation there) and divided by it.

    Args:
        normal_scores_sorted (`np.ndarray`): Scores of all normal pixels, sorted ascending.
        anomalous_scores (`np.ndarray`): Scores of all anomalous pixels (same dtype).
        anomalous_weights (`np.ndarray`): `1 / |region|` per anomalous pixel.
        num_regions (`int`): Number of ground-truth regions.
        aupro_fpr_limit (`float`, *optional*, defaults to 0.3): Upper FPR limit of the AUPRO integral.

    Returns:
        `dict[str, float]`: `pixel_auroc`, `pixel_ap`, `pixel_f1_max`, `aupro` and `pixel_f1_max_threshold` (the
        pixel score where F1-max is reached); all `nan` when there are no anomalous pixels or no normal pixels
        (only one class present).

    Raises:
        ValueError: If `aupro_fpr_limit` is not in (0, 1].
    """
    if not 0.0 < aupro_fpr_limit <= 1.0:
        raise ValueError(f"aupro_fpr_limit must be in (0, 1], got {aupro_fpr_limit}")
    num_normal, num_anomalous = normal_scores_sorted.size, anomalous_scores.size
    if num_normal == 0 or num_anomalous == 0:
        names = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro", "pixel_f1_max_threshold")
        return {name: float("nan") for name in names}
    counts = _threshold_counts(normal_scores_sorted, anomalous_scores, anomalous_weights)
    auroc, average_precision, f1_max, f1_max_threshold = _ranking_metrics(counts, num_normal, num_anomalous)
    fpr, pro = _curve_points(
        counts.negatives_above, counts.negatives_at_or_above, counts.weight_at_or_above / num_regions, num_normal
    )
    aupro = _trapezoid(fpr, pro, aupro_fpr_limit) / aupro_fpr_limit
    return {
        "pixel_auroc": auroc,
        "pixel_ap": average_precision,
        "pixel_f1_max": f1_max,
        "aupro": aupro,
        "pixel_f1_max_threshold": f1_max_threshold,
    }


def _image_arrays(image_scores: np.ndarray, image_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Checked float64 image scores and bool labels (`> 0.5` is anomalous), both of shape `(N,)`.

    Raises:
        ValueError: If the lengths differ or a score is NaN or infinite.
    """
    scores = np.asarray(image_scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(image_labels).reshape(-1) > 0.5
    if scores.shape != labels.shape:
        raise ValueError(f"image_scores and image_labels differ in length: {scores.size} and {labels.size}")
    if not np.isfinite(scores).all():
        raise ValueError("image_scores must be finite; found NaN or infinite scores")
    return scores, labels


def image_metrics(image_scores: np.ndarray, image_labels: np.ndarray) -> dict[str, float]:
    """Image AUROC and image F1-max.

    Args:
        image_scores (`np.ndarray` of shape `(N,)`): Finite image anomaly scores.
        image_labels (`np.ndarray` of shape `(N,)`): 1 (or True) for anomalous images; `> 0.5` is anomalous.

    Returns:
        `dict[str, float]`: `image_auroc`, `image_f1_max` and `image_f1_max_threshold` (the image score where
        F1-max is reached); all `nan` when only one class is present.

    Raises:
        ValueError: If the shapes differ or a score is NaN or infinite.
    """
    scores, labels = _image_arrays(image_scores, image_labels)
    negatives, positives = np.sort(scores[~labels]), scores[labels]
    if negatives.size == 0 or positives.size == 0:
        return {name: float("nan") for name in ("image_auroc", "image_f1_max", "image_f1_max_threshold")}
    counts = _threshold_counts(negatives, positives)
    auroc, _, f1_max, f1_max_threshold = _ranking_metrics(counts, negatives.size, positives.size)
    return {"image_auroc": auroc, "image_f1_max": f1_max, "image_f1_max_threshold": f1_max_threshold}


def _missing_classes(num_normal: int, num_defective: int) -> str:
    """`"no defective images"`, `"no normal images"` or both, joined: why a two-class metric is not available."""
    missing = [name for name, count in (("defective", num_defective), ("normal", num_normal)) if count == 0]
    return " and ".join(f"no {name} images" for name in missing)


def undefined_metrics_notes(
    num_normal_images: int, num_defective_images: int, num_normal_pixels: int, num_anomalous_pixels: int
) -> dict[str, str]:
    """Why the image and pixel metrics are `nan`: `{IMAGE_METRICS_NOTE: "not defined: no defective images", ...}`,
    with a key only for the kind that is undefined (both classes are needed); empty when both are defined."""
    notes = {}
    if not (num_normal_images and num_defective_images):
        notes[IMAGE_METRICS_NOTE] = f"not defined: {_missing_classes(num_normal_images, num_defective_images)}"
    if not (num_normal_pixels and num_anomalous_pixels):
        missing = [
            text
            for text, count in (
                ("no anomalous pixel in the ground-truth masks", num_anomalous_pixels),
                ("no normal pixel", num_normal_pixels),
            )
            if count == 0
        ]
        notes[PIXEL_METRICS_NOTE] = f"not defined: {' and '.join(missing)}"
    return notes


def overkill_metrics(
    image_scores: Sequence[float] | np.ndarray,
    image_labels: Sequence[int] | np.ndarray,
    escape_rates: Sequence[float] = ESCAPE_RATES,
) -> dict[str, float | str | None]:
    """Overkill at fixed escape rates, as AdaptCLIP defines it (Gao et al., 2025, `metrics/overkill_escape.py`).

    For each escape rate r, the threshold is the r quantile of the defective images' scores (numpy's default
    linear interpolation), and the overkill is the fraction of normal images whose score is >= that threshold:
    the share of good parts rejected when about r of the defective parts may pass. With m defective images the
    quantile interpolates between the two defect scores around position r (m - 1): when m < 1 / r, at least one
    defect (1 / m of them) already scores below the threshold. A normal image tied with the threshold counts as
    rejected; so does a defective one (it does not escape).

    Args:
        image_scores (`Sequence[float]` or `np.ndarray` of shape `(N,)`): Finite image anomaly scores.
        image_labels (`Sequence[int]` or `np.ndarray` of shape `(N,)`): 1 (or True) for defective images.
        escape_rates (`Sequence[float]`, *optional*, defaults to `ESCAPE_RATES`): Each in (0, 1).

    Returns:
        `dict[str, float | str | None]`: `overkill_name(r)` for each rate, a float in [0, 1]; all `None` when there
        is no defective or no normal image, and then `OVERKILL_NOTE` (`"overkill"`) says why, e.g.
        ``"not available: no defective images"``.

    Raises:
        ValueError: If a rate is not in (0, 1), the lengths differ or a score is not finite.
    """
    rates = np.asarray(escape_rates, dtype=np.float64).reshape(-1)
    if not ((rates > 0.0) & (rates < 1.0)).all():
        raise ValueError(f"escape_rates must be in (0, 1), got {list(escape_rates)}")
    names = [overkill_name(rate) for rate in escape_rates]
    scores, labels = _image_arrays(image_scores, image_labels)
    normal, defective = scores[~labels], scores[labels]
    if normal.size == 0 or defective.size == 0:
        results: dict[str, float | str | None] = dict.fromkeys(names)
        results[OVERKILL_NOTE] = f"not available: {_missing_classes(normal.size, defective.size)}"
        return results
    thresholds = np.quantile(defective, rates)  # method="linear", numpy's default
    return {name: float(np.mean(normal >= threshold)) for name, threshold in zip(names, thresholds)}


def operating_point_metrics(
    image_scores: Sequence[float] | np.ndarray,
    image_labels: Sequence[int] | np.ndarray,
    image_threshold: float | None,
) -> dict[str, float | int | str | None]:
    """False-reject and escape rates, with their OK/NG counts, at a given image threshold (e.g. a calibrated one).

    An image is rejected (NG) when its score reaches the threshold, compared in float32 as
    `modeling_clipada.decisions.reaches` does for the model's float32 scores (a score equal to the threshold in
    float32 is rejected). False-reject rate = normal images rejected / normal images; escape rate = defective
    images passed (score below the threshold) / defective images.

    Args:
        image_scores (`Sequence[float]` or `np.ndarray` of shape `(N,)`): Finite image anomaly scores.
        image_labels (`Sequence[int]` or `np.ndarray` of shape `(N,)`): 1 (or True) for defective images.
        image_threshold (`float` or `None`): "anomalous when score >= image_threshold"; None: not calibrated.

    Returns:
        `dict[str, float | int | str | None]`: The values named in `OPERATING_POINT_NAMES`: `image_threshold`,
        `false_reject_rate`, `normal_images_rejected`, `normal_images`, `escape_rate`, `defective_images_passed`,
        `defective_images`. Without a threshold the threshold, rates and rejected/passed counts are `None` and
        `OPERATING_POINT_NOTE` (`"operating_point"`) is `"not calibrated"`; a rate whose images are missing is
        `None` and the note says so (e.g. ``"escape_rate not available: no defective images"``).

    Raises:
        ValueError: If the threshold or a score is not finite, or the lengths differ.
    """
    scores, labels = _image_arrays(image_scores, image_labels)
    num_normal, num_defective = int((~labels).sum()), int(labels.sum())
    results: dict[str, float | int | str | None] = dict.fromkeys(OPERATING_POINT_NAMES)
    results.update(normal_images=num_normal, defective_images=num_defective)
    if image_threshold is None:
        results[OPERATING_POINT_NOTE] = NOT_CALIBRATED
        return results
    if not np.isfinite(image_threshold):
        raise ValueError(f"image_threshold must be finite, got {image_threshold}")
    rejected = scores.astype(np.float32) >= np.float32(image_threshold)  # `decisions.reaches` on float32 scores
    normal_rejected, defective_passed = int(rejected[~labels].sum()), int((~rejected[labels]).sum())
    results.update(
        image_threshold=float(image_threshold),
        false_reject_rate=normal_rejected / num_normal if num_normal else None,
        normal_images_rejected=normal_rejected,
        escape_rate=defective_passed / num_defective if num_defective else None,
        defective_images_passed=defective_passed,
    )
    missing = [
        f"{name} not available: no {kind} images"
        for name, kind, count in (
            ("false_reject_rate", "normal", num_normal),
            ("escape_rate", "defective", num_defective),
        )
        if count == 0
    ]
    if missing:
        results[OPERATING_POINT_NOTE] = "; ".join(missing)
    return results


def anomaly_metrics(
    anomaly_maps: Sequence[np.ndarray] | np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray,
    image_scores: Sequence[float] | np.ndarray,
    image_labels: Sequence[int] | np.ndarray,
    aupro_fpr_limit: float = 0.3,
    image_threshold: float | None = None,
) -> dict[str, float | int | str | None]:
    """All six metrics and the overkill values at once, for maps that may differ in size from image to image.

    Args:
        anomaly_maps (`Sequence[np.ndarray]` or `np.ndarray`): One `(H, W)` map per image (nested lists work).
        masks (`Sequence[np.ndarray]` or `np.ndarray`): One `(H, W)` mask per image, same sizes.
        image_scores (`Sequence[float]` or `np.ndarray`): One score per image.
        image_labels (`Sequence[int]` or `np.ndarray`): One label per image, 1 for anomalous.
        aupro_fpr_limit (`float`, *optional*, defaults to 0.3): Upper FPR limit of the AUPRO integral.
        image_threshold (`float`, *optional*): Also report `operating_point_metrics` at this image threshold.

    Returns:
        `dict[str, float | int | str | None]`: The values named in `METRIC_NAMES`, in [0, 1] or `nan` (see
        `pixel_metrics`), then those of `overkill_metrics` (and its note when they are `None`), then, with
        `image_threshold`, those of `operating_point_metrics`.

    Raises:
        ValueError: On mismatched inputs or non-finite scores.
    """
    if len(anomaly_maps) != len(masks):
        raise ValueError(f"got {len(anomaly_maps)} anomaly maps but {len(masks)} masks")
    normal, anomalous, weights, num_regions = [], [], [], 0
    for anomaly_map, mask in zip(anomaly_maps, masks):
        parts = split_pixels(np.asarray(anomaly_map, dtype=np.float32)[None], np.asarray(mask)[None])
        normal.append(parts[0])
        anomalous.append(parts[1])
        weights.append(parts[2])
        num_regions += parts[3]
    normal_sorted = np.sort(np.concatenate(normal)) if normal else np.empty(0, dtype=np.float32)
    anomalous_scores = np.concatenate(anomalous) if anomalous else np.empty(0, dtype=np.float32)
    anomalous_weights = np.concatenate(weights) if weights else np.empty(0, dtype=np.float32)
    results = pixel_metrics(normal_sorted, anomalous_scores, anomalous_weights, num_regions, aupro_fpr_limit)
    results.update(image_metrics(image_scores, image_labels))
    computed: dict[str, float | int | str | None] = {name: float(results[name]) for name in METRIC_NAMES}
    computed.update(overkill_metrics(image_scores, image_labels))
    if image_threshold is not None:
        computed.update(operating_point_metrics(image_scores, image_labels, image_threshold))
    return computed


__all__ = [
    "ESCAPE_RATES",
    "IMAGE_METRICS_NOTE",
    "METRIC_NAMES",
    "NOT_CALIBRATED",
    "OPERATING_POINT_NAMES",
    "OPERATING_POINT_NOTE",
    "OVERKILL_NAMES",
    "OVERKILL_NOTE",
    "PIXEL_METRICS_NOTE",
    "THRESHOLD_NAMES",
    "anomaly_metrics",
    "image_metrics",
    "operating_point_metrics",
    "overkill_metrics",
    "overkill_name",
    "pixel_metrics",
    "split_pixels",
    "undefined_metrics_notes",
]
