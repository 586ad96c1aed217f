"""Tests of the anomaly-detection metrics against scikit-learn, hand-computed cases and a brute-force AUPRO."""

import bisect
import json
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
    format_operating_points_table,
    mean_metrics,
    operating_point_metrics,
    overkill_metrics,
)

METRIC_NAMES = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "image_f1_max", "pixel_f1_max")
OVERKILL_NAMES = ("overkill_at_2pct_escape", "overkill_at_5pct_escape", "overkill_at_10pct_escape")


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
    assert set(results) == set(METRIC_NAMES + OVERKILL_NAMES)
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
    assert all(math.isnan(no_anomaly[name]) for name in METRIC_NAMES)
    assert all(no_anomaly[name] is None for name in OVERKILL_NAMES)  # not available, with the reason
    assert no_anomaly["overkill"] == "not available: no defective images"
    all_anomalous = compute_anomaly_metrics(maps, np.ones((3, 4, 4)), [0.1, 0.2, 0.3], [1, 1, 1])
    assert all(math.isnan(all_anomalous[name]) for name in METRIC_NAMES)
    assert all_anomalous["overkill"] == "not available: no normal images"
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
    assert set(metrics.compute()) == set(METRIC_NAMES + OVERKILL_NAMES)


def test_nan_in_a_mask_is_an_error_not_a_normal_pixel():
    maps, masks, image_scores, image_labels = random_case(0)
    masks = masks.astype(np.float32)
    masks[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="masks must be finite"):
        compute_anomaly_metrics(maps, masks, image_scores, image_labels)


# ----------------------------------------------------------------------------------------------------
# Operating points: overkill at fixed escape rates, false-reject and escape rates at a threshold
# ----------------------------------------------------------------------------------------------------


def test_overkill_matches_a_hand_computation():
    # Five defects 0.2, 0.4, 0.6, 0.8, 1.0: the r quantile (linear) sits at position 4r between them, so
    # 2 % -> 0.2 + 0.08 * 0.2 = 0.216, 5 % -> 0.24, 10 % -> 0.28. Normal scores >= each: 3/5, 2/5, 1/5.
    scores = [0.2, 0.4, 0.6, 0.8, 1.0, 0.1, 0.2, 0.22, 0.25, 0.5]
    labels = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    results = overkill_metrics(scores, labels)
    assert results == pytest.approx({OVERKILL_NAMES[0]: 0.6, OVERKILL_NAMES[1]: 0.4, OVERKILL_NAMES[2]: 0.2})
    # 30 % -> position 1.2: 0.4 + 0.2 * 0.2 = 0.44, only the normal 0.5 reaches it; the median 0.6 none.
    assert overkill_metrics(scores, labels, escape_rates=[0.3, 0.5]) == {
        "overkill_at_30pct_escape": 0.2,
        "overkill_at_50pct_escape": 0.0,
    }


def test_overkill_counts_ties_with_the_threshold_as_rejected():
    # Tied defects: every quantile below 3/4 is 0.5 exactly; the two normal images at 0.5 are rejected.
    results = overkill_metrics([0.5, 0.5, 0.5, 0.9, 0.5, 0.5, 0.1, 0.49], [1, 1, 1, 1, 0, 0, 0, 0])
    assert results == {name: 0.5 for name in OVERKILL_NAMES}
    # Two defects 0.0 and 1.0: the quantile interpolates (0.02, 0.05, 0.1); the normal image at 0.1 ties at 10 %.
    results = overkill_metrics([0.0, 1.0, 0.1, 0.09], [1, 1, 0, 0])
    assert results == {OVERKILL_NAMES[0]: 1.0, OVERKILL_NAMES[1]: 1.0, OVERKILL_NAMES[2]: 0.5}


def test_overkill_without_defects_or_normal_images_is_none_with_the_reason():
    results = overkill_metrics([0.1, 0.2], [0, 0])
    assert results == {**dict.fromkeys(OVERKILL_NAMES), "overkill": "not available: no defective images"}
    assert overkill_metrics([0.1], [1])["overkill"] == "not available: no normal images"
    with pytest.raises(ValueError, match="escape_rates"):
        overkill_metrics([0.1, 0.2], [0, 1], escape_rates=[0.0])
    # the category without defects is left out of the mean, which says so
    per_category = {"bottle": overkill_metrics([0.2, 0.4, 0.3, 0.1], [1, 1, 0, 0]), "cable": results}
    mean = mean_metrics(per_category)
    assert mean[OVERKILL_NAMES[0]] == per_category["bottle"][OVERKILL_NAMES[0]] == 0.5
    assert mean["overkill"] == "over the 1 of 2 categories with defective and normal images"
    table = format_operating_points_table(per_category, mean)
    assert "| Overkill @ 2% escape | 50.0 | n/a | 50.0 |" in table.splitlines()
    assert "cable: overkill not available: no defective images." in table


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_false_reject_and_escape_rates_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random(40), 2)  # ties with the thresholds below
    labels = rng.random(40) < 0.4
    for threshold in (0.0, 0.3, 0.5, 0.77, 1.5):
        results = operating_point_metrics(scores, labels, threshold)
        rejected = [np.float32(score) >= np.float32(threshold) for score in scores]
        normal_rejected = sum(r for r, label in zip(rejected, labels) if not label)
        defective_passed = sum(not r for r, label in zip(rejected, labels) if label)
        assert results == {
            "image_threshold": threshold,
            "false_reject_rate": normal_rejected / (~labels).sum(),
            "normal_images_rejected": normal_rejected,
            "normal_images": int((~labels).sum()),
            "escape_rate": defective_passed / labels.sum(),
            "defective_images_passed": defective_passed,
            "defective_images": int(labels.sum()),
        }
        assert all(type(results[name]) is int for name in ("normal_images_rejected", "defective_images_passed"))


def test_operating_point_compares_in_float32_as_the_decisions_do():
    from modeling_clipada.decisions import reaches

    # The model's float32 score for 0.7 lies below the float64 0.7: float32 says NG (equal), float64 would say OK.
    score = torch.tensor([0.7, 0.7], dtype=torch.float32)
    assert float(score[0]) < 0.7 and bool(reaches(score, 0.7).all())
    results = operating_point_metrics(score.double().numpy(), [0, 1], 0.7)
    assert results["normal_images_rejected"] == 1 and results["false_reject_rate"] == 1.0
    assert results["defective_images_passed"] == 0 and results["escape_rate"] == 0.0
    streamed = compute_anomaly_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), score, [0, 1], image_threshold=0.7)
    assert streamed["false_reject_rate"] == 1.0 and streamed["escape_rate"] == 0.0


def test_operating_point_without_threshold_or_images_says_why():
    results = operating_point_metrics([0.1, 0.9], [0, 1], None)
    assert results["operating_point"] == "not calibrated"
    assert results["false_reject_rate"] is None and results["escape_rate"] is None and results["normal_images"] == 1
    results = operating_point_metrics([0.1, 0.9], [0, 0], 0.5)
    assert results["false_reject_rate"] == 0.5 and results["escape_rate"] is None
    assert results["operating_point"] == "escape_rate not available: no defective images"
    with pytest.raises(ValueError, match="finite"):
        operating_point_metrics([0.1], [0], float("nan"))
    # compute() without a threshold reports it only when asked for the thresholds
    maps, masks, image_scores, image_labels = random_case(0)
    assert "false_reject_rate" not in compute_anomaly_metrics(maps, masks, image_scores, image_labels)
    with_thresholds = compute_anomaly_metrics(maps, masks, image_scores, image_labels, include_thresholds=True)
    assert with_thresholds["operating_point"] == "not calibrated"


def test_overall_operating_point_pools_the_counts():
    bottle = operating_point_metrics([0.1, 0.6, 0.7, 0.2], [0, 0, 1, 1], 0.5)  # 1/2 rejected, 1/2 passed
    cable = operating_point_metrics([0.1, 0.2, 0.3, 0.9], [0, 0, 0, 1], 0.25)  # 1/3 rejected, 0/1 passed
    mean = mean_metrics({"bottle": bottle, "cable": cable})
    assert mean["false_reject_rate"] == 2 / 5 and mean["normal_images_rejected"] == 2 and mean["normal_images"] == 5
    assert mean["escape_rate"] == 1 / 3 and mean["defective_images_passed"] == 1 and mean["defective_images"] == 3
    assert "image_threshold" not in mean and "operating_point" not in mean
    table = format_operating_points_table({"bottle": bottle, "cable": cable}, mean).splitlines()
    assert "| False-reject rate (OK rejected) | 50.0 (1/2) | 33.3 (1/3) | 40.0 (2/5) |" in table
    assert "| Escape rate (NG passed) | 50.0 (1/2) | 0.0 (0/1) | 33.3 (1/3) |" in table
    uncalibrated = operating_point_metrics([0.1, 0.9], [0, 1], None)
    mean = mean_metrics({"bottle": bottle, "cable": uncalibrated})
    assert mean["normal_images"] == 2 and mean["operating_point"] == "over the 1 of 2 categories with thresholds"
    mean = mean_metrics({"cable": uncalibrated})
    assert mean["false_reject_rate"] is None and mean["operating_point"] == "not calibrated"


def _strict_json(text: str):
    """json.loads that refuses NaN and Infinity."""

    def refuse(constant: str):
        raise ValueError(f"bare {constant} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_write_evaluation_writes_strict_json_and_the_operating_points(tmp_path):
    from training.evaluation import write_evaluation

    maps, masks, image_scores, image_labels = random_case(0)
    per_category = {
        "bottle": compute_anomaly_metrics(maps, masks, image_scores, image_labels, image_threshold=0.5),
        "cable": compute_anomaly_metrics(  # defective images only: nan image metrics, no overkill
            maps[image_labels == 1], masks[image_labels == 1], image_scores[image_labels == 1], [1] * 4,
            include_thresholds=True, image_threshold=0.5,
        ),
    }  # fmt: skip
    assert math.isnan(per_category["cable"]["image_auroc"])
    table = write_evaluation(tmp_path, per_category, mean_metrics(per_category))
    saved = _strict_json((tmp_path / "metrics.json").read_text())
    assert saved["per_category"]["cable"]["image_auroc"] is None
    assert saved["per_category"]["cable"]["overkill"] == "not available: no normal images"
    assert saved["per_category"]["bottle"]["false_reject_rate"] == per_category["bottle"]["false_reject_rate"]
    assert saved["mean"]["escape_rate"] is not None and saved["mean"]["defective_images"] == 8
    assert (tmp_path / "metrics.md").read_text() == table + "\n"
    assert table.startswith("| Category | I-AUROC |") and "| Operating point | bottle | cable | Mean |" in table
    assert "| Escape rate (NG passed) |" in table and "NaN" not in table


def test_evaluate_model_reports_the_checkpoints_own_thresholds(tmp_path):
    from fake_trees import write_folder_tree
    from tiny_clip import make_tiny_clip

    from modeling_clipada import CLIPADAForAnomalySegmentation
    from processing import CLIPADAImageProcessor
    from training import evaluation
    from training.data import load_anomaly_dataset

    write_folder_tree(tmp_path / "data", ["disc", "weave"], num_train=1)
    test = load_anomaly_dataset(str(tmp_path / "data"), dataset="folder")["test"]
    clip, tokenizer = make_tiny_clip()
    model = CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer, feature_layer=2).eval()
    processor = CLIPADAImageProcessor(size=32)

    def run(output):
        torch.manual_seed(0)
        per_category, mean = evaluation.evaluate_model(
            model, processor, test, batch_size=4, output_dir=output, save_predictions=True, num_heatmaps=0
        )
        return per_category, mean, {c: np.load(output / "predictions" / f"{c}.npz") for c in per_category}

    per_category, mean, _ = run(tmp_path / "uncalibrated")
    assert mean["operating_point"] == "not calibrated" and per_category["disc"]["false_reject_rate"] is None
    assert all(0.0 <= per_category["disc"][name] <= 1.0 for name in OVERKILL_NAMES)
    # calibrated: a global threshold, and weave's own one, each exactly an image's float32 score (a tie: NG)
    _, _, predictions = run(tmp_path / "scores")
    thresholds = {c: float(np.sort(predictions[c]["image_scores"])[3]) for c in ("disc", "weave")}
    model.config.image_threshold = thresholds["disc"]
    model.config.category_thresholds = {"weave": {"image_threshold": thresholds["weave"]}}
    per_category, mean, predictions = run(tmp_path / "calibrated")
    for category, metrics in per_category.items():
        scores, labels = predictions[category]["image_scores"], predictions[category]["image_labels"] == 1
        rejected = scores >= np.float32(thresholds[category])
        assert metrics["image_threshold"] == thresholds[category]
        assert metrics["normal_images_rejected"] == int(rejected[~labels].sum())
        assert metrics["defective_images_passed"] == int((~rejected[labels]).sum())
        assert metrics["false_reject_rate"] == rejected[~labels].mean()
        assert metrics["escape_rate"] == (~rejected[labels]).mean()
    assert mean["normal_images_rejected"] == sum(m["normal_images_rejected"] for m in per_category.values())
    table = evaluation.write_evaluation(tmp_path / "calibrated", per_category, mean)
    saved = _strict_json((tmp_path / "calibrated" / "metrics.json").read_text())
    assert saved["per_category"]["weave"]["image_threshold"] == thresholds["weave"]
    assert "| False-reject rate (OK rejected) |" in table


def test_evaluate_module_reports_overkill_and_the_operating_point(monkeypatch, tmp_path):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "modules")
    metric = evaluate.load(EVALUATE_MODULE_PATH, keep_in_memory=True, cache_dir=str(tmp_path / "cache"))
    maps, masks, image_scores, image_labels = random_case(12)
    inputs = {"predictions": maps, "references": masks, "image_scores": image_scores, "image_labels": image_labels}
    results = metric.compute(**inputs)
    assert set(results) == set(METRIC_NAMES + OVERKILL_NAMES)
    assert {name: results[name] for name in OVERKILL_NAMES} == overkill_metrics(image_scores, image_labels)
    results = metric.compute(**inputs, image_threshold=0.5)
    expected = operating_point_metrics(image_scores, image_labels, 0.5)
    assert {name: results[name] for name in expected} == expected
    assert results["normal_images"] + results["defective_images"] == len(maps)
