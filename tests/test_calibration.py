"""Thresholds calibrated on normal images: the estimator, the hold-out, training's calibration and the CLI."""

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from scipy import stats

from modeling_clipada import CLIPADAForAnomalySegmentation
from training import calibrate as calibrate_cli
from training.calibration import (
    NormalScores,
    calibrate,
    harrell_davis_quantile,
    hold_out_normal_images,
    image_threshold,
    pixel_threshold,
)
from training.run_dir import LOCK_FILE


@pytest.mark.parametrize("num_images, target_fpr", [(300, 0.05), (1000, 0.01)])
def test_the_interval_covers_the_true_threshold_and_the_real_rate_meets_the_target(num_images, target_fpr):
    distribution = stats.beta(2, 8)
    true_threshold = distribution.ppf(1 - target_fpr)
    rng = np.random.default_rng(0)
    covered, rates = 0, []
    for repeat in range(60):
        estimate = image_threshold(distribution.rvs(num_images, random_state=rng), target_fpr, seed=repeat)
        covered += estimate.interval[0] <= true_threshold <= estimate.interval[1]
        rates.append(distribution.sf(estimate.value))
        assert estimate.note is None and estimate.num_images == num_images
    assert covered / 60 >= 0.85  # a 95% interval; percentile bootstraps cover slightly less than nominal
    assert np.mean(rates) == pytest.approx(target_fpr, rel=0.25)


def test_harrell_davis_is_smoother_than_an_order_statistic_and_agrees_on_many_samples():
    samples = np.random.default_rng(1).normal(size=20000)
    assert harrell_davis_quantile(samples, 0.99) == pytest.approx(np.quantile(samples, 0.99), abs=0.02)
    few = np.arange(20.0)  # 20 scores: the empirical 99% quantile jumps between the two largest
    assert 18 < harrell_davis_quantile(few, 0.99) < 19.01


def test_too_few_images_for_the_target_rate_are_reported():
    estimate = image_threshold(np.linspace(0, 1, 20), target_fpr=0.01)
    assert "20 normal images cannot resolve a false-positive rate of 0.01" in estimate.note
    assert estimate.interval[0] <= estimate.value <= estimate.interval[1] <= 1


def test_pixel_threshold_pools_pixels_and_resamples_images():
    rng = np.random.default_rng(2)
    images = [rng.random(4096) * scale for scale in rng.uniform(0.5, 1.0, 30)]
    estimate = pixel_threshold(images, target_fpr=0.01)
    assert estimate.value == pytest.approx(np.quantile(np.concatenate(images), 0.99))
    assert estimate.interval[0] < estimate.value < estimate.interval[1] and estimate.num_images == 30


def test_calibrate_gives_per_category_thresholds_only_where_enough_images_exist():
    rng = np.random.default_rng(3)
    categories = np.array(["big"] * 40 + ["small"] * 5)
    scores = NormalScores(rng.random(45), categories, [rng.random(64) for _ in range(45)])
    result = calibrate(scores, target_image_fpr=0.05, target_pixel_fpr=0.05)
    assert set(result.per_category) == {"big"}
    fields = result.config_fields()
    assert fields["calibration_size"] == 45 and fields["target_image_fpr"] == 0.05
    assert set(fields["category_thresholds"]["big"]) == {"image_threshold", "pixel_threshold"}
    json.dumps(result.to_dict())


def test_hold_out_is_stratified_seeded_and_never_takes_every_normal_image():
    rows = [{"label": 0, "category": "a"}] * 20 + [{"label": 0, "category": "b"}] * 3
    rows += [{"label": 1, "category": "a"}, {"label": 0, "category": "c"}]
    split = datasets.Dataset.from_list([dict(row, index=i) for i, row in enumerate(rows)])
    train, held_out = hold_out_normal_images(split, 0.1, seed=5)
    assert sorted(held_out["category"]) == ["a", "a", "b"] and set(held_out["label"]) == {0}
    assert len(train) + len(held_out) == len(split) and not set(train["index"]) & set(held_out["index"])
    assert hold_out_normal_images(split, 0.1, seed=5)[1]["index"] == held_out["index"]
    assert hold_out_normal_images(split, 0.0, seed=5) == (split, None)
    with pytest.raises(ValueError, match="calibration_fraction"):
        hold_out_normal_images(split, 1.0, seed=5)


@pytest.mark.slow
def test_training_calibrates_on_held_out_images_and_the_checkpoint_carries_the_thresholds(trained_run):
    config = json.loads((trained_run / "config.json").read_text())
    report = json.loads((trained_run / "calibration.json").read_text())
    assert config["image_threshold"] == report["image_threshold"]["value"]
    assert config["calibration_size"] == 2 and config["target_image_fpr"] == 0.01  # 1 of 6 per category
    model = CLIPADAForAnomalySegmentation.from_pretrained(trained_run)
    assert model.config.has_thresholds


def _copy(trained_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    (copy / LOCK_FILE).unlink(missing_ok=True)
    return copy


@pytest.mark.slow
def test_calibrate_cli_updates_the_checkpoint_in_place_and_reports_f1_thresholds(workspace, trained_run, tmp_path):
    run = _copy(trained_run, tmp_path)
    data = str(workspace / "data")
    argv = ["--model_name_or_path", str(run), "--dataset_name", data, "--target_fpr", "0.2"]
    result = calibrate_cli.main([*argv, "--calibrate_on", data])
    config = json.loads((run / "config.json").read_text())
    assert config["image_threshold"] == result.image.value and config["target_image_fpr"] == 0.2
    assert config["calibration_size"] == 12  # every normal image of the train split
    report = json.loads((run / "calibration.json").read_text())
    assert set(report["f1_optimal_thresholds"]["per_category"]) == {"disc", "weave"}
    assert report["calibrated_on"] == {"dataset": data, "split": "train"}
    assert (run / "model.safetensors").read_bytes() == (trained_run / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_calibrate_cli_writes_a_copy_with_output_dir(workspace, trained_run, tmp_path):
    argv = ["--model_name_or_path", str(trained_run), "--dataset_name", str(workspace / "data")]
    calibrate_cli.main([*argv, "--output_dir", str(tmp_path / "calibrated"), "--split", "test"])
    reloaded = CLIPADAForAnomalySegmentation.from_pretrained(tmp_path / "calibrated")
    assert reloaded.config.calibration_size == 4 and (tmp_path / "calibrated" / "preprocessor_config.json").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target_fpr", "0"], "--target_fpr"),
        (["--split", "validation"], "no split 'validation'"),
    ],
)
@pytest.mark.slow
def test_calibrate_cli_errors_are_clear(workspace, trained_run, tmp_path, capsys, extra, message):
    argv = ["--model_name_or_path", str(_copy(trained_run, tmp_path)), "--dataset_name", str(workspace / "data")]
    with pytest.raises(SystemExit) as exit_info:
        calibrate_cli.main([*argv, *extra])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
