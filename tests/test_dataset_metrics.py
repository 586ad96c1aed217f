"""SegF1, its validation threshold and sample-level I-AUROC against brute force; `clipada eval` with MVTec AD 2's
submission writer and Real-IAD's sample-level metrics on generated trees."""

import itertools
import json
import sys

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from fake_trees import write_mvtec_ad2_tree, write_real_iad_tree
from PIL import Image
from tiny_clip import IMAGE_SIZE, make_tiny_clip

from modeling_clipada import CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor
from training import benchmark_eval, evaluation
from training.metrics.dataset_metrics import DatasetMetrics
from training.metrics.sample_level import sample_level_metrics, sample_scores
from training.metrics.segf1 import PixelStatistics, SegF1Counts, seg_f1
from training.prepare_dataset import prepare_dataset
from training.submission import validation_thresholds, write_submission


def _brute_seg_f1(maps, masks, threshold) -> float:
    """Pixel by pixel: TP, FP, FN over all pixels of all images."""
    tp = fp = fn = 0
    for anomaly_map, mask in zip(maps, masks):
        for score, truth in zip(np.ravel(anomaly_map), np.ravel(mask)):
            flagged, anomalous = score >= threshold, truth > 0.5
            tp, fp, fn = (
                tp + (flagged and anomalous),
                fp + (flagged and not anomalous),
                fn + (anomalous and not flagged),
            )
    return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan")


def _brute_auroc(scores, labels) -> float:
    """The probability that a random positive outscores a random negative, ties counting one half."""
    positives = [s for s, label in zip(scores, labels) if label]
    negatives = [s for s, label in zip(scores, labels) if not label]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(positives, negatives))
    return wins / (len(positives) * len(negatives))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seg_f1_matches_brute_force_on_maps_of_different_sizes(seed):
    rng = np.random.default_rng(seed)
    shapes = [(5, 7), (6, 4), (3, 3)]
    maps = [np.round(rng.random(shape), 1) for shape in shapes]  # rounded: ties at the threshold
    masks = [(rng.random(shape) < 0.3).astype(np.uint8) * 255 for shape in shapes]
    for threshold in (0.0, 0.3, 0.5, 0.9, 1.1):
        assert seg_f1(maps, masks, threshold) == pytest.approx(_brute_seg_f1(maps, masks, threshold), nan_ok=True)


def test_seg_f1_counts_stream_batches_and_skip_images_without_ground_truth():
    rng = np.random.default_rng(3)
    maps, masks = rng.random((6, 4, 5)), rng.random((6, 4, 5)) < 0.2
    counts = SegF1Counts(0.6)
    counts.update(torch.from_numpy(maps[:2]), torch.from_numpy(masks[:2]))
    counts.update(maps[2:], masks[2:], mask_available=[True, False, True, True])
    kept = [0, 1, 2, 4, 5]
    assert counts.compute() == pytest.approx(_brute_seg_f1(maps[kept], masks[kept], 0.6))
    assert np.isnan(seg_f1(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), 0.5))  # nothing anomalous, nothing flagged
    with pytest.raises(ValueError, match="shape"):
        seg_f1([np.zeros((2, 2))], [np.zeros((2, 3))], 0.5)


def test_pixel_statistics_threshold_is_mean_plus_three_population_std():
    rng = np.random.default_rng(4)
    maps = [rng.normal(0.3, 0.1, shape) for shape in ((8, 9), (4, 4), (16, 2))]
    statistics = PixelStatistics()
    statistics.update(maps[:1])
    statistics.update(np.stack([maps[1]]))
    statistics.update(maps[2:])
    pixels = np.concatenate([m.ravel() for m in maps])
    assert statistics.threshold() == pytest.approx(pixels.mean() + 3 * pixels.std(), rel=1e-12)
    assert statistics.threshold(1.5) == pytest.approx(pixels.mean() + 1.5 * pixels.std(), rel=1e-12)
    with pytest.raises(ValueError, match="no validation pixels"):
        PixelStatistics().threshold()


@pytest.mark.parametrize("shape", [(3, 3), (1, 3, 3)])  # one map, or a batch of maps
def test_non_finite_maps_are_refused_in_every_shape(shape):
    anomaly_map = np.zeros(shape)
    anomaly_map[..., 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        PixelStatistics().update(anomaly_map)
    with pytest.raises(ValueError, match="NaN or infinite"):
        seg_f1(anomaly_map, np.zeros(shape), 0.5)


@pytest.mark.parametrize("reduction", ["max", "mean"])
def test_sample_level_auroc_matches_brute_force(reduction):
    rng = np.random.default_rng(5)
    ids = [f"part{p}" for p in range(12) for _ in range(5)]  # 12 parts x 5 views, in order
    scores = np.round(rng.random(len(ids)), 1)
    labels = np.zeros(len(ids), dtype=int)
    labels[[3, 7, 12, 31, 32, 58]] = 1  # parts 0, 1, 2, 6, 11 are defective
    combine = max if reduction == "max" else (lambda values: sum(values) / len(values))
    parts = sorted(set(ids))
    expected_scores = [combine([s for s, i in zip(scores, ids) if i == part]) for part in parts]
    expected_labels = [int(any(label for label, i in zip(labels, ids) if i == part)) for part in parts]
    order = rng.permutation(len(ids))  # the views' order does not matter
    got_scores, got_labels, got_ids = sample_scores(scores[order], labels[order], [ids[i] for i in order], reduction)
    assert got_ids == parts and got_labels.tolist() == expected_labels
    np.testing.assert_allclose(got_scores, expected_scores)
    metrics = sample_level_metrics(scores, labels, ids, reduction)
    assert metrics["sample_image_auroc"] == pytest.approx(_brute_auroc(expected_scores, expected_labels))
    assert metrics["num_samples"] == 12
    with pytest.raises(ValueError, match="unknown sample reduction"):
        sample_scores(scores, labels, ids, "median")


def test_evaluate_module_gives_the_same_values(monkeypatch, tmp_path):
    import evaluate

    from training.metrics import BENCHMARK_EVALUATE_MODULE_PATH

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "modules")
    # evaluate appends its module cache to sys.path and imports `evaluate_modules` from there: put this test's cache
    # first (an earlier load's stays on sys.path) and forget any package imported before, then this one's after
    monkeypatch.setattr(sys, "path", [str(tmp_path / "modules"), *sys.path])
    for name in [name for name in sys.modules if name.startswith("evaluate_modules")]:
        monkeypatch.delitem(sys.modules, name)
    try:
        metric = evaluate.load(BENCHMARK_EVALUATE_MODULE_PATH, keep_in_memory=True, cache_dir=str(tmp_path / "cache"))
    finally:
        for name in [name for name in sys.modules if name.startswith("evaluate_modules")]:
            del sys.modules[name]
    rng = np.random.default_rng(6)
    maps = [rng.random((4, 5)) for _ in range(6)]
    masks = [(rng.random((4, 5)) < 0.3).astype(float) for _ in range(6)]
    scores, labels, ids = rng.random(6), [0, 1, 0, 0, 1, 0], ["a", "a", "b", "b", "c", "c"]
    inputs = {"predictions": maps, "references": masks, "image_scores": scores, "image_labels": labels}
    results = metric.compute(**inputs, sample_ids=ids, segf1_threshold=0.6, sample_reduction="mean")
    assert results["seg_f1"] == pytest.approx(_brute_seg_f1(maps, masks, 0.6))
    assert results["sample_image_auroc"] == sample_level_metrics(scores, labels, ids, "mean")["sample_image_auroc"]
    assert "seg_f1" not in metric.compute(**inputs, sample_ids=ids)


def test_dataset_metrics_refuses_rows_that_do_not_match_the_sample_ids():
    metrics = DatasetMetrics(0.5, ["a", "a", "b"])
    metrics.update(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), np.array([0.1, 0.2]), np.array([0, 1]))
    with pytest.raises(ValueError, match="2 image scores were added for 3 sample ids"):
        metrics.compute()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("benchmarks") / "checkpoint"
    clip, tokenizer = make_tiny_clip()
    CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer, feature_layer=2).eval().save_pretrained(folder)
    CLIPADAImageProcessor(size=IMAGE_SIZE).save_pretrained(folder)
    return folder


@pytest.mark.usefixtures("isolated_datasets_cache")
def test_eval_reports_seg_f1_and_writes_the_submission_layout(tmp_path, checkpoint, capsys, monkeypatch):
    tifffile = pytest.importorskip("tifffile")
    used_thresholds = []

    def recording_write_submission(model, processor, dataset, folder, thresholds, *args):
        used_thresholds.append(thresholds)
        return write_submission(model, processor, dataset, folder, thresholds, *args)

    monkeypatch.setattr(benchmark_eval, "write_submission", recording_write_submission)
    tree = write_mvtec_ad2_tree(tmp_path / "ad2", scenarios=("can",), size=(40, 30))
    prepare_dataset(tree.root, tmp_path / "data")
    submission = tmp_path / "submission"
    result = evaluation.main(
        ["--model_name_or_path", str(checkpoint), "--dataset_name", str(tmp_path / "data"), "--output_dir",
         str(tmp_path / "eval"), "--num_heatmaps", "0", "--write_submission", str(submission)]
    )  # fmt: skip
    seg = result["per_category"]["can"]["seg_f1"]
    assert 0.0 <= seg <= 1.0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["per_category"]["can"]["seg_f1"] == seg
    # exactly the two folders the server's checker accepts, one file per private image, named after it
    assert sorted(p.name for p in submission.iterdir()) == ["anomaly_images", "anomaly_images_thresholded"]
    tiffs = sorted(p.relative_to(submission).as_posix() for p in (submission / "anomaly_images").rglob("*.*"))
    assert tiffs == [f"anomaly_images/can/test_private/{i:03d}_regular.tiff" for i in range(3)] + [
        f"anomaly_images/can/test_private_mixed/{i:03d}_mixed.tiff" for i in range(2)
    ]
    anomaly_map = tifffile.imread(submission / "anomaly_images" / "can" / "test_private" / "000_regular.tiff")
    assert anomaly_map.dtype == np.float16 and anomaly_map.shape == (30, 40)  # one channel, the image's size
    binary = np.asarray(
        Image.open(submission / "anomaly_images_thresholded" / "can" / "test_private_mixed" / "001_mixed.png")
    )
    assert binary.shape == (30, 40) and set(np.unique(binary)) <= {0, 255}
    # squash mode: binarized at the threshold of the validation maps at the images' own size (the submission's
    # resolution), not at the model's input size where eval measures SegF1
    model = CLIPADAForAnomalySegmentation.from_pretrained(checkpoint).eval()
    processor = CLIPADAImageProcessor.from_pretrained(checkpoint)
    validation = load_from_disk(str(tmp_path / "data"))["validation"]
    at_image_size = validation_thresholds(model, processor, validation, at_image_size=True)
    assert used_thresholds == [at_image_size] != [validation_thresholds(model, processor, validation)]
    note = capsys.readouterr().err  # the server expects all eight scenarios: the missing ones are named
    assert "missing: fabric/test_private, fabric/test_private_mixed" in note and "can/" not in note
    with pytest.raises(SystemExit):  # a non-empty folder is never written into
        evaluation.main(
            ["--model_name_or_path", str(checkpoint), "--dataset_name", str(tmp_path / "data"), "--output_dir",
             str(tmp_path / "eval2"), "--write_submission", str(submission)]
        )  # fmt: skip
    assert "must be new or empty" in capsys.readouterr().err


@pytest.mark.usefixtures("isolated_datasets_cache")
def test_eval_reports_sample_level_auroc_for_real_iad(tmp_path, checkpoint, capsys):
    tree = write_real_iad_tree(tmp_path / "realiad", objects=("audiojack",), size=(32, 32))
    prepare_dataset(tree.root, tmp_path / "data")
    args = ["--model_name_or_path", str(checkpoint), "--dataset_name", str(tmp_path / "data"), "--num_heatmaps", "0"]
    result = evaluation.main([*args, "--output_dir", str(tmp_path / "eval"), "--save_predictions"])
    metrics = result["per_category"]["audiojack"]
    predictions = np.load(tmp_path / "eval" / "predictions" / "audiojack.npz")
    scores = predictions["image_scores"]  # rows in the test split's order: part S0003's 5 views, then S0004's
    expected = float(scores[5:].max() > scores[:5].max()) + 0.5 * float(scores[5:].max() == scores[:5].max())
    assert metrics["sample_image_auroc"] == pytest.approx(expected)
    with pytest.raises(SystemExit):  # no validation split, no private test sets: no submission
        evaluation.main([*args, "--output_dir", str(tmp_path / "eval_x"), "--write_submission", str(tmp_path / "sub")])
    assert "no validation split; --write_submission needs MVTec AD 2" in capsys.readouterr().err
    assert not (tmp_path / "sub").exists() and not (tmp_path / "eval_x").exists()
    mean = evaluation.main([*args, "--output_dir", str(tmp_path / "eval_mean"), "--sample_score", "mean"])
    expected = float(scores[5:].mean() > scores[:5].mean())
    assert mean["per_category"]["audiojack"]["sample_image_auroc"] == pytest.approx(expected, abs=1e-6)
