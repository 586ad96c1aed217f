"""Thresholds calibrated on normal and defective images: the estimators, the binding rule, the hold-out, training's
calibration, the model card and the CLI."""

import argparse
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from scipy import stats

from modeling_clipada import CLIPADAForAnomalySegmentation
from training import calibrate as calibrate_cli
from training import preparation
from training.calibration import (
    MIN_DEFECTIVE_IMAGES_PER_CATEGORY,
    DefectScores,
    NormalScores,
    calibrate,
    escape_threshold,
    harrell_davis_quantile,
    hold_out_normal_images,
    image_threshold,
    pixel_threshold,
)
from training.model_card import write_model_card
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


@pytest.mark.parametrize("num_images, target_escape_rate", [(300, 0.05), (1000, 0.02)])
def test_the_escape_interval_covers_the_true_threshold_and_the_real_escape_rate_meets_the_target(
    num_images, target_escape_rate
):
    distribution = stats.beta(6, 3)  # defect scores: mostly high, a tail of low ones that escape
    true_threshold = distribution.ppf(target_escape_rate)
    rng = np.random.default_rng(10)
    covered, rates = 0, []
    for repeat in range(60):
        estimate = escape_threshold(distribution.rvs(num_images, random_state=rng), target_escape_rate, seed=repeat)
        covered += estimate.interval[0] <= true_threshold <= estimate.interval[1]
        rates.append(distribution.cdf(estimate.value))
        assert estimate.note is None and estimate.num_defective_images == num_images
    assert covered / 60 >= 0.85
    assert np.mean(rates) == pytest.approx(target_escape_rate, rel=0.25)


def _largest_threshold_within(defects: np.ndarray, target_escape_rate: float) -> float:
    """Brute force: the largest candidate threshold (a defect score) that lets at most the target share escape."""
    allowed = [t for t in np.unique(defects) if np.sum(defects < t) <= target_escape_rate * defects.size + 1e-9]
    return max(allowed)


def test_the_escape_threshold_never_lets_more_than_the_target_share_through_on_the_calibration_data():
    rng = np.random.default_rng(11)
    for trial in range(300):
        size = int(rng.integers(1, 400))
        target = float(rng.choice([0.01, 0.02, 0.05, 0.1, 0.3, 0.57]))
        kind = trial % 3  # smooth, heavily tied, and gapped score sets (a gap pulls Harrell-Davis past it)
        if kind == 0:
            defects = rng.beta(5, 2, size)
        elif kind == 1:
            defects = rng.integers(0, 5, size) / 4
        else:
            defects = np.where(rng.random(size) < 0.1, rng.random(size) * 0.1, 0.9 + rng.random(size) * 0.1)
        estimate = escape_threshold(defects, target, seed=trial)
        escaped = np.sum(defects < estimate.value)
        assert escaped <= np.floor(target * size + 1e-9), (trial, size, target)
        assert estimate.value <= _largest_threshold_within(defects, target) + 1e-12
        assert estimate.interval[0] <= estimate.interval[1]


def test_too_few_defective_images_for_the_target_escape_rate_are_reported():
    defects = np.linspace(0.3, 1, 20)
    estimate = escape_threshold(defects, target_escape_rate=0.02)
    assert "20 defective images cannot resolve an escape rate of 0.02" in estimate.note
    assert estimate.value == pytest.approx(0.3)  # the lowest defect score: none of the 20 escapes


def _scores(rng, normal_categories, defect_categories, normal_high=0.6, defect_low=0.4):
    normal = NormalScores(
        rng.random(len(normal_categories)) * normal_high,
        np.array(normal_categories),
        [rng.random(64) for _ in normal_categories],
    )
    defects = DefectScores(
        defect_low + rng.random(len(defect_categories)) * (1 - defect_low), np.array(defect_categories)
    )
    return normal, defects


def test_when_the_targets_conflict_the_escape_threshold_binds_and_the_report_says_so():
    rng = np.random.default_rng(12)
    normal, defects = _scores(rng, ["a"] * 200, ["a"] * 100)  # overlapping scores: the targets conflict
    result = calibrate(normal, target_image_fpr=0.01, defect_scores=defects, target_escape_rate=0.05)
    image = result.image
    assert image.binding == "escape" and image.value == image.escape.value < image.false_reject.value
    chosen = image.rates["chosen"]
    assert chosen["escape_rate"] == np.mean(defects.image_scores < image.value) <= 0.05
    assert chosen["false_reject_rate"] == np.mean(normal.image_scores >= image.value) > 0.01
    assert image.rates["false_reject"]["threshold"] == image.false_reject.value
    report = json.loads(json.dumps(result.to_dict()))
    assert report["image_threshold"]["binding"] == "escape"
    assert report["image_threshold"]["escape"]["escape_rate"] == chosen["escape_rate"]
    assert report["image_threshold"]["false_reject"]["target_fpr"] == 0.01
    assert report["resolution"] == {
        "normal_images": 200,
        "smallest_false_reject_rate": 1 / 200,
        "defective_images": 100,
        "smallest_escape_rate": 1 / 100,
    }
    fields = result.config_fields()
    assert fields["image_threshold"] == image.value and fields["target_escape_rate"] == 0.05
    assert fields["target_image_fpr"] == 0.01 and fields["calibration_size"] == 200
    table = calibrate_cli.format_calibration(result)
    assert "escape target binds" in table and "for target FPR 0.01" in table


def test_when_the_targets_agree_the_false_reject_threshold_binds():
    rng = np.random.default_rng(13)
    normal, defects = _scores(rng, ["a"] * 200, ["a"] * 100, normal_high=0.4, defect_low=0.7)
    result = calibrate(normal, target_image_fpr=0.01, defect_scores=defects, target_escape_rate=0.05)
    assert result.image.binding == "false_reject" and result.image.value == result.image.false_reject.value
    assert result.image.rates["chosen"]["escape_rate"] == 0.0


def test_an_escape_target_alone_sets_the_image_threshold_and_the_pixel_threshold_stays_from_normals():
    rng = np.random.default_rng(14)
    normal, defects = _scores(rng, ["a"] * 50, ["a"] * 50)
    result = calibrate(normal, target_image_fpr=None, defect_scores=defects, target_escape_rate=0.1)
    assert result.image.binding == "escape" and result.image.false_reject is None
    assert result.pixel.value == pytest.approx(np.quantile(np.concatenate(normal.pixel_samples), 0.99))
    fields = result.config_fields()
    assert fields["target_image_fpr"] is None and fields["target_escape_rate"] == 0.1
    with pytest.raises(ValueError, match="needs defective images"):
        calibrate(normal, target_image_fpr=None, target_escape_rate=0.1)
    with pytest.raises(ValueError, match="a target escape rate, or both"):
        calibrate(normal, target_image_fpr=None)


def test_categories_get_their_own_escape_threshold_only_with_enough_defective_images():
    rng = np.random.default_rng(15)
    enough = MIN_DEFECTIVE_IMAGES_PER_CATEGORY
    normal, defects = _scores(
        rng,
        ["big"] * 40 + ["few_normals"] * 4 + ["small"] * 5,
        ["big"] * 30 + ["few_normals"] * enough + ["small"] * (enough - 1),
    )
    result = calibrate(normal, target_image_fpr=0.05, defect_scores=defects, target_escape_rate=0.1)
    assert set(result.per_category) == {"big", "few_normals"}
    big = result.per_category["big"]["image_threshold"]
    assert big.false_reject.scope == "big" and big.escape.scope == "big"
    few = result.per_category["few_normals"]
    assert few["image_threshold"].false_reject is result.image.false_reject  # too few normals: the global one
    assert few["image_threshold"].escape.scope == "few_normals" and few["pixel_threshold"] is result.pixel
    assert few["image_threshold"].value == min(result.image.false_reject.value, few["image_threshold"].escape.value)
    rows = defects.categories == "few_normals"
    assert np.sum(defects.image_scores[rows] < few["image_threshold"].value) <= 1
    fields = result.config_fields()
    assert set(fields["category_thresholds"]) == {"big", "few_normals"}
    json.dumps(result.to_dict())


def _card(tmp_path: Path, config: dict, report: dict | None = None) -> str:
    (tmp_path / "config.json").write_text(json.dumps(config))
    if report is not None:
        (tmp_path / "calibration.json").write_text(json.dumps(report))
    return write_model_card(tmp_path, {"dataset_name": "data"}, None).read_text()


def test_the_model_card_says_when_the_calibration_images_do_not_resolve_the_targets(tmp_path):
    config = {"image_threshold": 0.6, "pixel_threshold": 0.5, "target_image_fpr": 0.01, "target_pixel_fpr": 0.01}
    card = _card(tmp_path, config | {"calibration_size": 20})
    assert "target false-positive rate 0.01 on normal images, **not resolved**" in card
    assert "20 normal images support false-positive rates down to 1/20 = 0.05 only" in card
    assert "needs at least 100" in card
    mode = {"resize_mode": "squash", "tile_size": 64, "tile_overlap": 0.25, "size": [32, 32]}
    report = {"resolution": {"defective_images": 30}, "image_threshold": {"binding": "escape"}}
    config |= {"calibration_size": 200, "target_escape_rate": 0.05, "calibration_mode": mode}
    card = _card(tmp_path, config, report)
    assert "target false-positive rate 0.01 on normal images, resolved (200 normal images" in card
    assert "target escape rate 0.05, resolved (30 defective images" in card
    assert "The escape target binds" in card and "tiles of 64 px (overlap 0.25) at 32x32" in card


def test_training_warns_when_the_held_out_images_cannot_resolve_the_target_fpr(monkeypatch):
    warnings = []
    monkeypatch.setattr(preparation.logger, "warning", lambda message, **kwargs: warnings.append(message))
    split = datasets.Dataset.from_list([{"label": 0}] * 300 + [{"label": 1}] * 5)
    args = argparse.Namespace(target_fpr=0.01, calibration_fraction=0.1, train_split="train")
    preparation._warn_if_calibration_unresolved(split, 30, args)
    assert "has 30 normal images, fewer than the 100" in warnings[0] and "--calibration_fraction" in warnings[0]
    assert "about 0.33" in warnings[0]
    preparation._warn_if_calibration_unresolved(split.select(range(50)), 5, args)
    assert "only 50 normal images: collect more" in warnings[1]
    preparation._warn_if_calibration_unresolved(split, 100, args)
    assert len(warnings) == 2


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
    assert config["calibration_mode"]["resize_mode"] == "squash" and config["calibration_mode"]["tile_size"] is None
    assert config["target_escape_rate"] is None and report["resolution"]["smallest_false_reject_rate"] == 0.5
    model = CLIPADAForAnomalySegmentation.from_pretrained(trained_run)
    assert model.config.has_thresholds
    card = (trained_run / "README.md").read_text()
    assert "target false-positive rate 0.01 on normal images, **not resolved**" in card


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


@pytest.mark.slow
def test_calibrate_cli_with_an_escape_target_and_tiles_records_both_and_saves_the_processor_in_that_mode(
    workspace, trained_run, tmp_path, capsys
):
    data = str(workspace / "data")
    argv = ["--model_name_or_path", str(trained_run), "--dataset_name", data, "--split", "test"]
    output = tmp_path / "calibrated"
    extra = ["--target_fpr", "0.3", "--target_escape_rate", "0.3", "--tile_size", "16", "--output_dir", str(output)]
    result = calibrate_cli.main([*argv, *extra])
    printed = capsys.readouterr().out
    config = json.loads((output / "config.json").read_text())
    report = json.loads((output / "calibration.json").read_text())
    assert config["target_escape_rate"] == 0.3 and config["target_image_fpr"] == 0.3
    assert config["image_threshold"] == result.image.value == report["image_threshold"]["value"]
    assert result.image.value == min(result.image.false_reject.value, result.image.escape.value)
    assert report["image_threshold"]["binding"] == result.image.binding
    assert report["resolution"]["defective_images"] == result.num_defective_images > 0
    assert config["calibration_size"] == 4
    assert config["calibration_mode"]["tile_size"] == 16 and report["calibration_mode"] == config["calibration_mode"]
    assert json.loads((output / "preprocessor_config.json").read_text())["tile_size"] == 16
    assert "binds" in printed and "the processor is saved in that mode" in printed


@pytest.mark.slow
def test_calibrate_cli_in_place_in_another_mode_rewrites_the_processor_too(workspace, trained_run, tmp_path):
    run = _copy(trained_run, tmp_path)
    argv = ["--model_name_or_path", str(run), "--dataset_name", str(workspace / "data"), "--resize_mode", "letterbox"]
    calibrate_cli.main(argv)
    assert json.loads((run / "preprocessor_config.json").read_text())["resize_mode"] == "letterbox"
    assert json.loads((run / "config.json").read_text())["calibration_mode"]["resize_mode"] == "letterbox"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target_fpr", "0"], "--target_fpr"),
        (["--split", "validation"], "no split 'validation'"),
        (["--target_escape_rate", "0.1"], "needs defective images (label 1) in the 'train' split"),
        (["--tile_overlap", "1.5"], "--tile_overlap must lie in [0, 0.75]"),
    ],
)
@pytest.mark.slow
def test_calibrate_cli_errors_are_clear(workspace, trained_run, tmp_path, capsys, extra, message):
    argv = ["--model_name_or_path", str(_copy(trained_run, tmp_path)), "--dataset_name", str(workspace / "data")]
    with pytest.raises(SystemExit) as exit_info:
        calibrate_cli.main([*argv, *extra])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
