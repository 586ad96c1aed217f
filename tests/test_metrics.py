"""Tests of the anomaly-detection metrics against scikit-learn, hand-computed cases and a brute-force AUPRO."""

import bisect
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from training.metrics import (
    EVALUATE_MODULE_PATH,
    AnomalyMetrics,
    anomaly_metrics,
    compute_anomaly_metrics,
    format_metrics_table,
    mean_metrics,
)

METRIC_NAMES = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "image_f1_max", "pixel_f1_max")


def random_case(seed: int, num_images: int = 6, size: int = 12, levels: int = 16):
    """Random maps with many ties (few score levels), blob-like masks with some normal images, image scores."""
    rng = np.random.default_rng(seed)
    maps = (rng.integers(0, levels, (num_images, size, size)) / levels).astype(np.float32)
    noise = ndimage.uniform_filter(rng.random((num_images, size, size)), size=(1, 3, 3))
    masks = noise > np.quantile(noise, 0.8)
    masks[: num_images // 3] = False  # normal images
    maps[masks] += 0.3 * rng.random(int(masks.sum())).astype(np.float32)  # anomalies score higher on average
    maps = np.round(maps * levels) / levels  # keep ties between normal and anomalous pixels
    image_labels = masks.any(axis=(1, 2)).astype(np.int64)
    image_scores = np.round(maps.max(axis=(1, 2)) * 4) / 4  # ties across images
    return maps.astype(np.float32), masks, image_scores, image_labels


def sklearn_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Max F1 over the points of scikit-learn's precision-recall curve."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(labels, scores)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return float(f1.max())


def brute_force_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """AUPRO by its definition: loop over every distinct threshold, MVTec-AD's trapezoid with interpolation."""
    regions = []
    for anomaly_map, mask in zip(maps, masks):
        labeled, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
        regions.extend(anomaly_map[labeled == index] for index in range(1, count + 1))
    normal = maps[~masks]
    fprs, pros = [0.0], [0.0]
    for threshold in np.unique(maps)[::-1]:
        fprs.append(float(np.mean(normal >= threshold)))
        pros.append(float(np.mean([np.mean(region >= threshold) for region in regions])))
    fprs.append(1.0)
    pros.append(1.0)
    x, y = np.array(fprs), np.array(pros)
    correction = 0.0
    if fpr_limit not in x:
        insert = bisect.bisect(x.tolist(), fpr_limit)
        slope = (y[insert] - y[insert - 1]) / (x[insert] - x[insert - 1])
        y_limit = y[insert - 1] + slope * (fpr_limit - x[insert - 1])
        correction = 0.5 * (y_limit + y[insert - 1]) * (fpr_limit - x[insert - 1])
    keep = x <= fpr_limit
    return float((np.trapezoid(y[keep], x[keep]) + correction) / fpr_limit)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_and_image_metrics_match_sklearn(seed):
    pytest.importorskip("sklearn", reason="the reference metrics need scikit-learn: pip install -e '.[dev]'")
    from sklearn.metrics import average_precision_score, roc_auc_score

    maps, masks, image_scores, image_labels = random_case(seed)
    results = compute_anomaly_metrics(maps, masks, image_scores, image_labels)
    labels, scores = masks.ravel(), maps.ravel()
    assert results["pixel_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert results["pixel_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert results["pixel_f1_max"] == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-12)
    assert results["image_auroc"] == pytest.approx(roc_auc_score(image_labels, image_scores), abs=1e-12)
    assert results["image_f1_max"] == pytest.approx(sklearn_f1_max(image_labels, image_scores), abs=1e-12)
    assert set(results) == set(METRIC_NAMES)
    assert all(type(value) is float and 0.0 <= value <= 1.0 for value in results.values())


@pytest.mark.parametrize("seed", [3, 4, 5, 6])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 0.7, 1.0])
def test_aupro_matches_brute_force(seed, fpr_limit):
    maps, masks, image_scores, image_labels = random_case(seed, num_images=4, size=10, levels=12)
    results = compute_anomaly_metrics(maps, masks, image_scores, image_labels, aupro_fpr_limit=fpr_limit)
    assert results["aupro"] == pytest.approx(brute_force_aupro(maps, masks, fpr_limit), abs=1e-6)


def test_aupro_two_regions_of_different_sizes_and_a_normal_image():
    # Image 1 (1x6): region A = pixels 0-2 (scores 0.9, 0.5, 0.45), region B = pixel 5 (0.4), normal 0.7, 0.2.
    # Image 2 (1x6): normal. Eight normal pixels in all (both images), two regions.
    maps = np.array([[[0.9, 0.5, 0.45, 0.7, 0.2, 0.4]], [[0.8, 0.1, 0.3, 0.05, 0.05, 0.05]]])
    masks = np.array([[[1, 1, 1, 0, 0, 1]], [[0, 0, 0, 0, 0, 0]]])

    # Curve (FPR, PRO): t=0.9 -> (0, 1/6); t=0.8 -> (1/8, 1/6); t=0.7 -> (2/8, 1/6); t=0.5 -> (2/8, 1/3);
    # t=0.45 -> (2/8, 1/2); t=0.4 -> (2/8, 1); then PRO stays 1.
    def aupro(limit):
        return compute_anomaly_metrics(maps, masks, [1.0, 0.0], [1, 0], aupro_fpr_limit=limit)["aupro"]

    assert aupro(0.3) == pytest.approx((0.25 / 6 + 0.05) / 0.3)
    assert aupro(0.2) == pytest.approx(1 / 6)  # flat at 1/6 up to FPR 0.25
    assert aupro(1.0) == pytest.approx(0.25 / 6 + 0.75)


def test_aupro_interpolates_a_tied_segment_at_the_limit():
    # One region (the 0.5 pixel) and five normal pixels 0.9, 0.5, 0.5, 0.1, 0.1: the tie at 0.5 gives the
    # diagonal (0.2, 0) -> (0.6, 1); at FPR 0.3 it is at 0.25, so the area is 0.5 * 0.25 * 0.1 = 0.0125.
    maps = np.array([[[0.5, 0.9, 0.5, 0.5, 0.1, 0.1]]])
    masks = np.array([[[1, 0, 0, 0, 0, 0]]])
    results = compute_anomaly_metrics(maps, masks, [1.0], [1])
    assert results["aupro"] == pytest.approx(0.0125 / 0.3)
    assert results["pixel_auroc"] == pytest.approx(0.6)  # 2/5 below, 2/5 tied (counted one half)


def test_aupro_regions_are_8_connected_per_image():
    # Pixels (0, 0), (1, 1), (1, 2) touch diagonally: ONE region of 3 pixels (4-connectivity would give 2).
    maps = np.full((1, 3, 3), 0.5)
    maps[0, 0, 0], maps[0, 1, 1], maps[0, 1, 2] = 0.9, 0.1, 0.1
    masks = np.zeros((1, 3, 3), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 1, 2] = True
    assert compute_anomaly_metrics(maps, masks, [1.0], [1])["aupro"] == pytest.approx(1 / 3)  # 4-conn: 1/2
    # A mask on the last row of image 0 and one on the first row of image 1 never merge: region 1 (2 pixels,
    # score 0.9) is found at FPR 0, region 2 (1 pixel, score 0.1) is not, so PRO = 1/2 (2/3 if merged).
    maps = np.full((2, 2, 2), 0.5)
    masks = np.zeros((2, 2, 2), dtype=bool)
    masks[0, 1, :] = True
    maps[0, 1, :] = 0.9
    masks[1, 0, 0] = True
    maps[1, 0, 0] = 0.1
    assert compute_anomaly_metrics(maps, masks, [1.0, 1.0], [1, 1])["aupro"] == pytest.approx(0.5)


def test_streaming_in_chunks_equals_one_shot():
    maps, masks, image_scores, image_labels = random_case(7, num_images=9)
    one_shot = compute_anomaly_metrics(maps, masks, image_scores, image_labels)
    metrics = AnomalyMetrics()
    for start, stop in [(0, 2), (2, 3), (3, 7), (7, 9)]:
        metrics.update(maps[start:stop], masks[start:stop], image_scores[start:stop], image_labels[start:stop])
    streamed = metrics.compute()
    for name in METRIC_NAMES:
        assert streamed[name] == pytest.approx(one_shot[name], abs=1e-12)
    assert metrics.compute() == streamed  # compute is repeatable
    metrics.reset()
    metrics.update(maps[:5], masks[:5], image_scores[:5], image_labels[:5])
    metrics.compute()  # an update after a compute still adds to the same data
    metrics.update(maps[5:], masks[5:], image_scores[5:], image_labels[5:])
    for name in METRIC_NAMES:
        assert metrics.compute()[name] == pytest.approx(one_shot[name], abs=1e-12)


def test_streaming_accepts_torch_tensors_and_maps_of_different_sizes():
    pytest.importorskip("sklearn", reason="the reference metrics need scikit-learn: pip install -e '.[dev]'")
    from sklearn.metrics import roc_auc_score

    maps, masks, image_scores, image_labels = random_case(8, num_images=4, size=12)
    small_maps, small_masks, small_scores, small_labels = random_case(9, num_images=3, size=8)
    metrics = AnomalyMetrics()
    metrics.update(
        torch.from_numpy(maps).requires_grad_(),
        torch.from_numpy(masks),
        torch.from_numpy(image_scores),
        torch.from_numpy(image_labels),
    )
    metrics.update(small_maps[:, None], small_masks[:, None].astype(np.uint8) * 255, small_scores, small_labels)
    expected = anomaly_metrics(
        [*maps, *small_maps], [*masks, *small_masks], [*image_scores, *small_scores], [*image_labels, *small_labels]
    )
    assert metrics.compute() == pytest.approx(expected, abs=1e-12)
    half = compute_anomaly_metrics(
        torch.from_numpy(maps).bfloat16(), torch.from_numpy(masks), torch.from_numpy(image_scores), image_labels
    )
    assert half["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)  # exact levels


def test_nbytes_counts_only_the_compact_buffers():
    maps, masks, image_scores, image_labels = random_case(10, num_images=5)
    metrics = AnomalyMetrics()
    assert metrics.nbytes == 0
    metrics.update(maps, masks, image_scores, image_labels)
    expected = 4 * maps.size + 4 * int(masks.sum()) + 9 * len(maps)
    assert metrics.nbytes == expected
    metrics.compute()
    assert metrics.nbytes == expected  # the sorted normal scores replace their chunks
    metrics.reset()
    assert metrics.nbytes == 0


def test_degenerate_cases_give_nan():
    maps = np.random.default_rng(0).random((3, 4, 4)).astype(np.float32)
    no_anomaly = compute_anomaly_metrics(maps, np.zeros((3, 4, 4)), [0.1, 0.2, 0.3], [0, 0, 0])
    assert all(math.isnan(value) for value in no_anomaly.values())
    all_anomalous = compute_anomaly_metrics(maps, np.ones((3, 4, 4)), [0.1, 0.2, 0.3], [1, 1, 1])
    assert all(math.isnan(value) for value in all_anomalous.values())
    masks = np.zeros((3, 4, 4))
    masks[0, 1, 1] = 1
    pixel_only = compute_anomaly_metrics(maps, masks, [0.1, 0.2, 0.3], [1, 1, 1])  # no normal image
    assert math.isnan(pixel_only["image_auroc"]) and math.isnan(pixel_only["image_f1_max"])
    assert not math.isnan(pixel_only["pixel_auroc"]) and not math.isnan(pixel_only["aupro"])


def test_invalid_inputs_raise():
    maps = np.zeros((2, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        compute_anomaly_metrics(maps, np.zeros((2, 4, 5)), [0.0, 1.0], [0, 1])
    with pytest.raises(ValueError, match="batch sizes"):
        compute_anomaly_metrics(maps, np.zeros((2, 4, 4)), [0.0], [0, 1])
    with pytest.raises(ValueError, match="finite"):
        compute_anomaly_metrics(np.full((2, 4, 4), np.nan), np.zeros((2, 4, 4)), [0.0, 1.0], [0, 1])
    with pytest.raises(ValueError, match="aupro_fpr_limit"):
        AnomalyMetrics(aupro_fpr_limit=0.0)
    with pytest.raises(ValueError, match="before any update"):
        AnomalyMetrics().compute()


def test_mean_metrics_skips_nan():
    per_category = {
        "bottle": {"image_auroc": 0.9, "aupro": 0.8},
        "cable": {"image_auroc": 0.7, "aupro": float("nan")},
        "grid": {"image_auroc": float("nan"), "aupro": float("nan")},
    }
    mean = mean_metrics(per_category)
    assert mean["image_auroc"] == pytest.approx(0.8)
    assert mean["aupro"] == pytest.approx(0.8)
    assert list(mean) == ["image_auroc", "aupro"]
    assert math.isnan(mean_metrics({"a": {"pixel_ap": float("nan")}})["pixel_ap"])


def test_format_metrics_table():
    per_category = {
        "bottle": dict(zip(METRIC_NAMES, [1.0, 0.9876, 0.5556, 0.9, 0.95, 0.6])),
        "cable": dict(zip(METRIC_NAMES, [0.9, 0.9124, 0.5, float("nan"), 0.85, 0.4])),
    }
    table = format_metrics_table(per_category, mean_metrics(per_category))
    assert table == (
        "| Category | I-AUROC | P-AUROC | P-mAP | AUPRO | I-F1max | P-F1max |\n"
        "|:---|---:|---:|---:|---:|---:|---:|\n"
        "| bottle | 100.0 | 98.8 | 55.6 | 90.0 | 95.0 | 60.0 |\n"
        "| cable | 90.0 | 91.2 | 50.0 | - | 85.0 | 40.0 |\n"
        "| Mean | 95.0 | 95.0 | 52.8 | 90.0 | 90.0 | 50.0 |"
    )
    assert format_metrics_table(per_category) == table


def test_evaluate_load_by_local_path_gives_identical_values(monkeypatch, tmp_path):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "modules")
    metric = evaluate.load(EVALUATE_MODULE_PATH, keep_in_memory=True, cache_dir=str(tmp_path / "cache"))
    maps, masks, image_scores, image_labels = random_case(11)
    results = metric.compute(predictions=maps, references=masks, image_scores=image_scores, image_labels=image_labels)
    assert results == compute_anomaly_metrics(maps, masks, image_scores, image_labels)
    assert all(type(value) is float for value in results.values())
    results = metric.compute(
        predictions=list(maps),
        references=list(masks),
        image_scores=image_scores,
        image_labels=image_labels,
        aupro_fpr_limit=0.1,
    )
    expected = compute_anomaly_metrics(maps, masks, image_scores, image_labels, aupro_fpr_limit=0.1)
    assert results == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_max_thresholds_are_the_scores_where_f1_max_is_reached(seed):
    maps, masks, image_scores, image_labels = random_case(seed)
    metrics = AnomalyMetrics()
    metrics.update(maps, masks, image_scores, image_labels)
    results = metrics.compute(include_thresholds=True)
    for prefix, labels, scores in (("image", image_labels > 0, image_scores), ("pixel", masks.ravel(), maps.ravel())):
        threshold = results[f"{prefix}_f1_max_threshold"]
        predicted = scores >= threshold
        true_positives = np.sum(predicted & labels)
        f1 = 2 * true_positives / (predicted.sum() + labels.sum())
        assert f1 == pytest.approx(results[f"{prefix}_f1_max"], abs=1e-12)
        assert threshold in set(scores[labels].tolist())
    assert set(metrics.compute()) == set(METRIC_NAMES)


def test_nan_in_a_mask_is_an_error_not_a_normal_pixel():
    maps, masks, image_scores, image_labels = random_case(0)
    masks = masks.astype(np.float32)
    masks[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="masks must be finite"):
        compute_anomaly_metrics(maps, masks, image_scores, image_labels)
