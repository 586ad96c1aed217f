"""Tests of the plain folder layout of your own images (training/data/folder.py) and of evaluation without masks."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from fake_trees import FOLDER_BAD_CASES, counts, write_folder_tree
from PIL import Image
from tiny_clip import make_tiny_clip

from modeling_clipada import CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor
from training import evaluation, prepare_dataset
from training.data import (
    DatasetFormatError,
    build_folder_dataset,
    build_mvtec_ad,
    has_ground_truth,
    infer_dataset_layout,
    load_anomaly_dataset,
)
from training.metrics import AnomalyMetrics, compute_anomaly_metrics, format_metrics_table, mean_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
PIXEL_NAMES = ("pixel_auroc", "pixel_ap", "aupro", "pixel_f1_max")


pytestmark = pytest.mark.usefixtures("isolated_datasets_cache")


def masks_by_path(split: datasets.Dataset) -> dict[str, bool]:
    """Image path -> whether the row has a mask."""
    return {row["image_path"]: row["mask"] is not None for row in split}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run prepare_dataset's main in-process; return (exit code, stdout, stderr)."""
    code = prepare_dataset.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ----------------------------------------------------------------------------------------------------
# The layout
# ----------------------------------------------------------------------------------------------------


def test_folder_without_masks_keeps_anomalous_images_with_mask_none(tmp_path):
    tree = write_folder_tree(tmp_path / "widget")
    assert infer_dataset_layout(tree.root) == "folder"
    dataset = load_anomaly_dataset(str(tree.root))
    assert counts(dataset) == {
        "train": {("widget", "good"): 3},
        "test": {("widget", "good"): 2, ("widget", "scratch"): 2, ("widget", "dent"): 2},
    }
    test = dataset["test"]
    assert test["mask"] == [None] * 6
    assert [has_ground_truth(row["label"], row["mask"]) for row in test] == [
        False,
        False,
        True,
        True,
        False,
        False,
    ]  # dent, good, scratch
    assert "widget/test/scratch/001.png" in test["image_path"]
    assert {row["image"].mode for row in test} == {"RGB"}


def test_folder_with_all_masks_gives_the_same_rows_as_the_mvtec_builder(tmp_path):
    tree = write_folder_tree(tmp_path / "widget", masks="all")  # dent masks are <stem>.png, scratch <stem>_mask.png
    folder, mvtec = build_folder_dataset(tree.root), build_mvtec_ad(tree.root)
    for split in ("train", "test"):
        assert folder[split].to_dict() == mvtec[split].to_dict()
    anomalous = [row for row in folder["test"] if row["label"] == 1]
    assert len(anomalous) == 4 and all(row["mask"].size == row["image"].size for row in anomalous)
    assert all(set(np.unique(np.asarray(row["mask"])).tolist()) == {0, 255} for row in anomalous)


def test_folder_with_some_masks_keeps_both_kinds_of_anomalous_rows(tmp_path):
    tree = write_folder_tree(tmp_path / "widget", masks="mixed")
    assert infer_dataset_layout(tree.root) == "mvtec_ad"  # ground_truth/ exists: strict unless asked for "folder"
    with pytest.raises(DatasetFormatError, match="001.png: anomalous image without its mask.*--dataset folder"):
        load_anomaly_dataset(str(tree.root))
    has_mask = masks_by_path(load_anomaly_dataset(str(tree.root), dataset="folder")["test"])
    assert [path for path, value in has_mask.items() if value] == [
        "widget/test/dent/000.png",
        "widget/test/scratch/000.png",
    ]


def test_folder_of_several_categories_and_the_category_filter(tmp_path):
    tree = write_folder_tree(tmp_path / "line", categories=["cap", "label"], num_train=2)
    dataset = load_anomaly_dataset(str(tree.root), dataset="folder")
    assert set(dataset["train"]["category"]) == set(dataset["test"]["category"]) == {"cap", "label"}
    assert dataset["train"]["image_path"][0] == "cap/train/good/000.png"
    only_label = load_anomaly_dataset(str(tree.root), dataset="folder", categories=["label"])
    assert set(only_label["test"]["category"]) == {"label"}
    with pytest.raises(DatasetFormatError, match="unknown categories 'box'; available: cap, label"):
        load_anomaly_dataset(str(tree.root), dataset="folder", categories=["box"])


def test_train_only_folder_has_an_empty_test_split_that_survives_saving(tmp_path, capsys):
    tree = write_folder_tree(tmp_path / "widget", with_test=False)
    dataset = load_anomaly_dataset(str(tree.root))
    assert len(dataset["train"]) == 3 and len(dataset["test"]) == 0
    assert dataset["test"].features == dataset["train"].features
    out = tmp_path / "out"
    code, stdout, _ = run_cli(["--data_dir", str(tree.root), "--output_dir", str(out)], capsys)
    assert code == 0 and re.search(r"^test +\(total\) +0$", stdout, re.MULTILINE)
    reloaded = load_anomaly_dataset(str(out))
    assert len(reloaded["train"]) == 3 and len(reloaded["test"]) == 0


@pytest.mark.parametrize(
    "change, bad_path, message",
    [
        ("image_in_test", "test/004.png", "image directly in test/"),
        ("mask_of_normal", "ground_truth/good/000_mask.png", "mask for normal"),
        ("two_masks", "ground_truth/scratch/000_mask.png", "two masks for the image stem '000'"),
        ("empty_test", "test", "empty test split"),
        ("train_without_good", "train/good", "folder not found"),
    ],
)
def test_folder_mistakes_are_errors_naming_the_file(tmp_path, change, bad_path, message):
    root = write_folder_tree(tmp_path / "widget").root
    if change == "image_in_test":
        Image.new("RGB", (20, 16)).save(root / bad_path)
    elif change in ("mask_of_normal", "two_masks"):
        (root / bad_path).parent.mkdir(parents=True)
        Image.new("L", (20, 16)).save(root / bad_path)
        if change == "two_masks":
            Image.new("L", (20, 16)).save(root / "ground_truth" / "scratch" / "000.png")
    elif change == "empty_test":
        for image in (root / "test").rglob("*.png"):
            image.unlink()
    else:
        (root / "train" / "good").rename(root / "train" / "normal")
    with pytest.raises(DatasetFormatError) as error:
        load_anomaly_dataset(str(root), dataset="folder")
    assert message in str(error.value)
    assert str(root / bad_path) in str(error.value)


# ----------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------


def test_cli_converts_a_folder_into_a_self_contained_dataset(tmp_path, capsys):
    tree = write_folder_tree(tmp_path / "widget", masks="mixed")
    out = tmp_path / "out"
    argv = ["--dataset", "folder", "--data_dir", str(tree.root), "--output_dir", str(out)]
    code, stdout, _ = run_cli(argv, capsys)
    assert code == 0 and "scratch" in stdout
    assert "2 anomalous images have no mask" in stdout
    for path in tree.root.rglob("*.png"):
        path.unlink()  # the saved dataset must not need the raw files
    reloaded = load_anomaly_dataset(str(out))
    assert sum(masks_by_path(reloaded["test"]).values()) == 2
    assert prepare_dataset.count_images_without_mask(reloaded) == 2


@pytest.mark.parametrize("bad_case", FOLDER_BAD_CASES)
def test_cli_bad_input_exits_2_names_the_file_and_writes_nothing(tmp_path, capsys, bad_case):
    tree = write_folder_tree(tmp_path / "widget", masks="all", bad_case=bad_case)
    out = tmp_path / "out"
    argv = ["--dataset", "folder", "--data_dir", str(tree.root), "--output_dir", str(out)]
    code, _, stderr = run_cli(argv, capsys)
    assert code == 2
    assert stderr.startswith("error: ") and str(tree.bad_file) in stderr and stderr.count("\n") == 1
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_inferred_layout_names_a_missing_train_good(tmp_path, capsys):
    tree = write_folder_tree(tmp_path / "widget", bad_case="missing_train")
    code, _, stderr = run_cli(["--data_dir", str(tree.root), "--output_dir", str(tmp_path / "out")], capsys)
    assert code == 2 and f"error: {tree.bad_file}: folder not found" in stderr


# ----------------------------------------------------------------------------------------------------
# Evaluation without masks
# ----------------------------------------------------------------------------------------------------


def test_metrics_without_any_mask_are_not_available_rather_than_nan():
    rng = np.random.default_rng(0)
    maps, masks = rng.random((4, 8, 8)), np.zeros((4, 8, 8))
    metrics = AnomalyMetrics()
    metrics.update(maps, masks, [0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], mask_available=[True, True, False, False])
    result = metrics.compute(include_thresholds=True)
    assert result["image_auroc"] == 1.0 and result["images_without_mask"] == 2
    assert all(result[name] is None for name in (*PIXEL_NAMES, "pixel_f1_max_threshold"))
    # without the flag, the same all-zero masks are an undefined metric (nan), as before
    assert math.isnan(compute_anomaly_metrics(maps, masks, [0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])["pixel_auroc"])
    per_category = {"widget": result}
    mean = mean_metrics(per_category)
    assert mean["pixel_auroc"] is None and mean["image_auroc"] == 1.0 and "images_without_mask" not in mean
    lines = format_metrics_table(per_category, mean).splitlines()
    assert lines[2] == "| widget | 100.0 | n/a | n/a | n/a | 100.0 | n/a |"
    assert lines[3] == "| Mean | 100.0 | n/a | n/a | n/a | 100.0 | n/a |"
    assert lines[5:] == [
        "widget: pixel metrics not available: no ground-truth masks.",
        "Mean: pixel metrics not available: no ground-truth masks.",
    ]


def test_metrics_with_some_masks_cover_exactly_the_images_with_masks():
    rng = np.random.default_rng(1)
    maps, masks = rng.random((5, 8, 8)), np.zeros((5, 8, 8))
    masks[2, 2:5, 2:5] = 1  # image 2 has a mask; images 3 and 4 are anomalous without one
    scores, labels, available = [0.1, 0.3, 0.7, 0.2, 0.9], [0, 0, 1, 1, 1], [True, True, True, False, False]
    metrics = AnomalyMetrics()
    metrics.update(maps[:3], masks[:3], scores[:3], labels[:3], available[:3])
    metrics.update(maps[3:], masks[3:], scores[3:], labels[3:], available[3:])
    result = metrics.compute()
    with_masks = compute_anomaly_metrics(maps[:3], masks[:3], scores[:3], labels[:3])
    everything = compute_anomaly_metrics(maps, masks, scores, labels)
    for name in PIXEL_NAMES:
        assert result[name] == with_masks[name]
    assert result["image_auroc"] == everything["image_auroc"] and result["images_without_mask"] == 2
    with pytest.raises(ValueError, match="mask_available has 2 values for 3 images"):
        metrics.update(maps[:3], masks[:3], scores[:3], labels[:3], [True, True])


@pytest.fixture(scope="module")
def tiny_model() -> tuple[CLIPADAForAnomalySegmentation, CLIPADAImageProcessor]:
    """An untrained tiny CLIP-ADA model (32 px) and its processor."""
    clip, tokenizer = make_tiny_clip()
    model = CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer, feature_layer=2).eval()
    return model, CLIPADAImageProcessor(size=32)


def test_evaluation_reports_image_metrics_and_marks_pixel_metrics_not_available(tmp_path, tiny_model):
    write_folder_tree(tmp_path / "data" / "plain", num_train=1)  # no masks at all
    write_folder_tree(tmp_path / "data" / "partly", num_train=1, masks="mixed")  # 2 of 4 anomalies have masks
    test = load_anomaly_dataset(str(tmp_path / "data"), dataset="folder")["test"]
    output = tmp_path / "evaluation"
    torch.manual_seed(0)
    per_category, mean = evaluation.evaluate_model(
        *tiny_model, test, batch_size=4, output_dir=output, save_predictions=True, num_heatmaps=0
    )
    table = evaluation.write_evaluation(output, per_category, mean)
    saved = json.loads((output / "metrics.json").read_text())
    plain, partly = saved["per_category"]["plain"], saved["per_category"]["partly"]
    assert all(plain[name] is None for name in PIXEL_NAMES) and 0.0 <= plain["image_auroc"] <= 1.0
    assert plain["pixel_metrics"] == "not available: no ground-truth masks" and plain["images_without_mask"] == 4
    assert all(0.0 <= partly[name] <= 1.0 for name in PIXEL_NAMES) and partly["images_without_mask"] == 2
    assert partly["pixel_metrics"].startswith("over the images with ground-truth masks; 2 anomalous images")
    assert saved["mean"]["pixel_auroc"] == partly["pixel_auroc"] and saved["mean"]["pixel_metrics"] == (
        "over the 1 of 2 categories with ground-truth masks"
    )
    assert (output / "metrics.md").read_text() == table + "\n"
    rows = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
    assert rows["| plain"].count("n/a") == 4 and "nan" not in table and " - " not in table
    assert "plain: pixel metrics not available: no ground-truth masks." in table
    predictions = np.load(output / "predictions" / "partly.npz")
    assert predictions["mask_available"].tolist() == [True, False, True, True, True, False]  # dent, good, scratch
    keep = predictions["mask_available"]
    recomputed = compute_anomaly_metrics(
        predictions["anomaly_maps"][keep].astype(np.float32),
        predictions["masks"][keep],
        predictions["image_scores"][keep],
        predictions["image_labels"][keep],
    )
    assert recomputed["pixel_auroc"] == pytest.approx(partly["pixel_auroc"], abs=2e-3)


# ----------------------------------------------------------------------------------------------------
# Training on a train-only folder
# ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_only_folder_trains_with_skip_evaluation(tmp_path, tiny_clip_dir):
    tree = write_folder_tree(tmp_path / "widget", with_test=False, num_train=4, size=(32, 32))
    output = tmp_path / "run"
    command = [sys.executable, "-m", "training.train", "--model_name_or_path", str(tiny_clip_dir)]
    command += ["--dataset_name", str(tree.root), "--output_dir", str(output), "--per_device_train_batch_size", "2"]
    command += ["--max_train_steps", "1", "--skip_evaluation", "--calibration_fraction", "0"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (output / "model.safetensors").is_file() and not (output / "evaluation").exists()
