"""`inference.predict`: rows, decisions, overlays, maps and exit codes on folders of good, bad and broken files."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_clip import IMAGE_SIZE, make_tiny_clip

from inference import predict
from inference.backends import BackendOutput
from inference.overlays import DECISION_COLOURS, draw_overlay
from inference.predict.inputs import collect_inputs, output_names
from inference.predict.rows import Thresholds, anomalous_regions, choose_thresholds
from modeling_clipada import CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor


def _save_checkpoint(folder: Path, **thresholds) -> Path:
    clip, tokenizer = make_tiny_clip()
    model = CLIPADAForAnomalySegmentation.from_clip(
        clip, tokenizer, feature_layer=3, image_score_top_k=16, smoothing_sigma=1.0
    )
    with torch.no_grad():  # a head away from its initial values, so that scores differ between images
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    for name, value in thresholds.items():
        setattr(model.config, name, value)
    model.save_pretrained(folder)
    CLIPADAImageProcessor(size=IMAGE_SIZE).save_pretrained(folder)
    return folder


def _model_outputs(checkpoint: Path, paths: list[Path], categories=None):
    model = CLIPADAForAnomalySegmentation.from_pretrained(checkpoint).eval()
    processor = CLIPADAImageProcessor.from_pretrained(checkpoint)
    with torch.no_grad():
        return model(processor(images=[str(path) for path in paths])["pixel_values"], categories=categories)


def _write_images(folder: Path, sizes: dict[str, tuple[int, int]]) -> list[Path]:
    """Random RGB images `name -> (height, width)`; returns their paths."""
    rng = np.random.default_rng(0)
    paths = []
    for name, (height, width) in sizes.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def _rows(output_dir: Path) -> dict[str, dict]:
    with open(output_dir / "predictions.csv", newline="", encoding="utf-8") as file:
        csv_rows = {Path(row["path"]).as_posix(): row for row in csv.DictReader(file)}
    json_rows = [json.loads(line) for line in (output_dir / "predictions.jsonl").read_text().splitlines()]
    assert [Path(row["path"]).as_posix() for row in json_rows] == list(csv_rows)
    return {path: {"csv": csv_rows[path], **row} for path, row in zip(csv_rows, json_rows)}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, list[Path]]:
    """good/000.png, good/001.png, bad/000.png, bad/001.png (model size) and three broken files in one folder."""
    folder = tmp_path_factory.mktemp("line")
    names = ["good/000.png", "good/001.png", "bad/000.png", "bad/001.png"]
    paths = _write_images(folder, dict.fromkeys(names, (IMAGE_SIZE, IMAGE_SIZE)))
    valid = paths[0].read_bytes()
    (folder / "bad" / "truncated.png").write_bytes(valid[: len(valid) // 2])
    (folder / "bad" / "empty.png").write_bytes(b"")
    (folder / "bad" / "notes.jpg").write_text("not an image")
    (folder / "readme.md").write_text("ignored: not an image suffix")
    return folder, paths


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, images) -> Path:
    """A checkpoint whose global image threshold splits the four valid images 2/2, with one category's own."""
    folder = tmp_path_factory.mktemp("calibrated")
    _save_checkpoint(folder)
    scores = sorted(_model_outputs(folder, images[1]).pred_score.tolist())
    global_threshold = (scores[1] + scores[2]) / 2
    category_threshold = (scores[0] + scores[1]) / 2  # 3 of 4 NG for that category
    per_category = {"bottle": {"image_threshold": category_threshold, "pixel_threshold": 0.6}}
    return _save_checkpoint(
        folder, image_threshold=global_threshold, pixel_threshold=0.5, category_thresholds=per_category
    )


def test_a_folder_with_good_bad_and_broken_files_gives_rows_overlays_and_exit_code_1(
    images, calibrated, tmp_path, monkeypatch
):
    folder, _ = images
    output_dir = tmp_path / "out"
    argv = [str(folder), "--model_name_or_path", str(calibrated), "--output_dir", str(output_dir), "--batch_size", "3"]
    monkeypatch.setattr(sys, "argv", ["clipada-predict", *argv])
    with pytest.raises(SystemExit) as exit_info:
        predict.cli()
    assert exit_info.value.code == 1
    rows = _rows(output_dir)
    assert len(rows) == 7  # readme.md is no image
    errors = {Path(path).name: row for path, row in rows.items() if row["decision"] == "ERROR"}
    assert set(errors) == {"truncated.png", "empty.png", "notes.jpg"}
    assert all(row["error"] and row["score"] is None and row["overlay"] is None for row in errors.values())
    scored = {path: row for path, row in rows.items() if row["decision"] != "ERROR"}
    assert sorted(row["decision"] for row in scored.values()) == ["NG", "NG", "OK", "OK"]
    assert all(row["error"] == "" and row["threshold_source"] == "global" for row in scored.values())
    overlays = sorted(path.name for path in (output_dir / "overlays").iterdir())
    assert overlays == ["bad_000.png", "bad_001.png", "good_000.png", "good_001.png"]
    assert {row["overlay"] for row in scored.values()} == {f"overlays/{name}" for name in overlays}
    assert (
        json.loads(rows[(folder / "bad/000.png").as_posix()]["csv"]["boxes"])
        == rows[(folder / "bad/000.png").as_posix()]["boxes"]
    )


def test_rows_agree_with_the_models_own_outputs(images, calibrated, tmp_path):
    _, paths = images
    summary = predict.main([*map(str, paths), "--model_name_or_path", str(calibrated), "--output_dir", str(tmp_path)])
    assert summary["ERROR"] == 0 and summary["OK"] + summary["NG"] == 4
    outputs = _model_outputs(calibrated, paths)
    rows = _rows(tmp_path)
    for index, path in enumerate(paths):
        row = rows[path.as_posix()]
        assert row["score"] == pytest.approx(outputs.pred_score[index].item(), abs=1e-6)
        assert row["normalized_score"] == pytest.approx(outputs.pred_score_normalized[index].item(), abs=1e-6)
        assert row["decision"] == ("NG" if outputs.pred_label[index] else "OK")
        # images at the model's size: the original-resolution mask is the model's own mask
        assert row["anomalous_area"] == pytest.approx(outputs.pred_mask[index].float().mean().item(), abs=1e-6)
        assert (row["width"], row["height"]) == (IMAGE_SIZE, IMAGE_SIZE)


def test_category_uses_its_calibrated_thresholds_and_an_unknown_one_the_global(images, calibrated, tmp_path):
    _, paths = images
    common = [*map(str, paths), "--model_name_or_path", str(calibrated)]
    predict.main([*common, "--output_dir", str(tmp_path / "bottle"), "--category", "bottle"])
    predict.main([*common, "--output_dir", str(tmp_path / "other"), "--category", "screw"])
    bottle, other = _rows(tmp_path / "bottle"), _rows(tmp_path / "other")
    expected = _model_outputs(calibrated, paths, categories=["bottle"] * len(paths))
    for index, path in enumerate(paths):
        row = bottle[path.as_posix()]
        assert row["category"] == "bottle" and row["threshold_source"] == "category" and row["pixel_threshold"] == 0.6
        assert row["decision"] == ("NG" if expected.pred_label[index] else "OK")
        assert other[path.as_posix()]["threshold_source"] == "global"
    assert sum(row["decision"] == "NG" for row in bottle.values()) == 3
    assert sum(row["decision"] == "NG" for row in other.values()) == 2


def test_maps_and_boxes_are_at_the_original_resolution_of_non_square_images(calibrated, tmp_path):
    (path,) = _write_images(tmp_path / "in", {"wide.png": (40, 72)})
    arguments = [str(path), "--model_name_or_path", str(calibrated), "--pixel_threshold", "0.5"]
    predict.main([*arguments, "--output_dir", str(tmp_path / "png"), "--save_maps", "png16"])
    predict.main([*arguments, "--output_dir", str(tmp_path / "npz"), "--save_maps", "npz"])
    row = _rows(tmp_path / "npz")[path.as_posix()]
    assert (row["width"], row["height"]) == (72, 40)
    anomaly_map = np.load(tmp_path / "npz" / row["map"])["anomaly_map"]
    processor = CLIPADAImageProcessor.from_pretrained(calibrated)
    expected = processor.post_process_anomaly_maps(_model_outputs(calibrated, [path]), target_sizes=[(40, 72)])[0]
    assert anomaly_map.shape == (40, 72) and np.abs(anomaly_map - expected.numpy()).max() < 1e-6
    png = np.asarray(Image.open(tmp_path / "png" / _rows(tmp_path / "png")[path.as_posix()]["map"]))
    assert png.dtype == np.uint16 and np.abs(png / 65535 - anomaly_map).max() <= 1 / 65535
    mask = anomaly_map >= np.float32(0.5)
    assert row["anomalous_area"] == pytest.approx(mask.mean())
    assert row["num_regions"] >= 1 and row["num_regions"] == anomalous_regions(mask)[0]
    covered = np.zeros_like(mask)
    for x_min, y_min, x_max, y_max in row["boxes"]:
        assert 0 <= x_min < x_max <= 72 and 0 <= y_min < y_max <= 40
        box = mask[y_min:y_max, x_min:x_max]
        assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()  # tight on every side
        covered[y_min:y_max, x_min:x_max] = True
    assert not (mask & ~covered).any()  # every anomalous pixel lies in a box
    assert Image.open(tmp_path / "npz" / row["overlay"]).width > 72  # drawn at its own aspect ratio, enlarged


def test_an_uncalibrated_checkpoint_says_so_and_threshold_flags_decide(images, tmp_path, capsys):
    _, paths = images
    checkpoint = _save_checkpoint(tmp_path / "plain")
    common = [*map(str, paths), "--model_name_or_path", str(checkpoint)]
    summary = predict.main([*common, "--output_dir", str(tmp_path / "a")])
    assert summary["UNCALIBRATED"] == 4 and "calibrate" in capsys.readouterr().err
    rows = _rows(tmp_path / "a").values()
    assert all(row["normalized_score"] is None and row["anomalous_area"] is None for row in rows)
    assert all(row["threshold_source"] == "none" for row in rows)
    predict.main([*common, "--output_dir", str(tmp_path / "b"), "--image_threshold", "0.01"])
    rows = _rows(tmp_path / "b").values()
    assert {row["decision"] for row in rows} == {"NG"} and {row["threshold_source"] for row in rows} == {
        "image:override,pixel:none"
    }


def test_usage_errors_exit_2_and_keep_earlier_predictions(images, calibrated, tmp_path, capsys):
    _, paths = images
    common = ["--model_name_or_path", str(calibrated), "--output_dir", str(tmp_path)]
    predict.main([str(paths[0]), *common])
    before = (tmp_path / "predictions.csv").read_bytes()
    for argv in (
        [str(paths[1]), *common],  # would replace the earlier predictions
        [str(tmp_path / "nothing" / "*.png"), *common],
        [str(paths[0]), "--model_name_or_path", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "x")],
        [str(paths[0]), *common, "--image_threshold", "1.5"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            predict.main(argv)
        assert exit_info.value.code == 2
        assert "error:" in capsys.readouterr().err
    assert (tmp_path / "predictions.csv").read_bytes() == before
    predict.main([str(paths[1]), *common, "--overwrite_output_dir"])
    assert list(_rows(tmp_path)) == [paths[1].as_posix()]


def test_rows_are_written_batch_by_batch_whatever_the_backend(images, tmp_path):
    """A backend is any callable on pixel values: here a constant-map fake; rows reach the disk after each batch."""
    _, paths = images
    seen_rows = []

    def backend(pixel_values, category=None):
        assert pixel_values.shape[0] <= 2  # never more than one batch at a time
        seen_rows.append(len((tmp_path / "predictions.csv").read_text().splitlines()) - 1)
        batch_size = pixel_values.shape[0]
        return BackendOutput(np.full((batch_size, 8, 8), 0.7, np.float32), np.full(batch_size, 0.7, np.float32))

    processor = CLIPADAImageProcessor(size=IMAGE_SIZE)
    counts = predict.predict_images(
        paths, backend, processor, Thresholds(0.5, 0.6, "override"), tmp_path, batch_size=2, draw_overlays=False
    )
    assert counts == {"NG": 4} and seen_rows == [0, 2]
    rows = _rows(tmp_path).values()
    assert all(row["anomalous_area"] == 1.0 and row["boxes"] == [[0, 0, IMAGE_SIZE, IMAGE_SIZE]] for row in rows)


def test_inputs_from_files_folders_globs_and_list_files(tmp_path):
    paths = _write_images(tmp_path, dict.fromkeys(["a/1.png", "a/b/2.jpg", "c/3.png", ".hidden/4.png"], (8, 8)))
    (tmp_path / "list.txt").write_text("# a comment\n\nc/3.png\nmissing.png\n")
    found = collect_inputs([str(tmp_path / "a"), str(tmp_path / "c" / "*.png"), str(tmp_path / "list.txt")])
    assert found == [paths[0], paths[1], paths[2], tmp_path / "missing.png"]  # c/3.png once; missing kept (ERROR)


def test_output_names_are_the_input_stems_made_unique():
    paths = [Path("x/good/000.png"), Path("x/crack/000.png"), Path("y/good/000.png"), Path("z/001.png")]
    assert output_names(paths) == ["x_good_000", "crack_000", "y_good_000", "001"]
    assert output_names([Path("a/0.png"), Path("a/0.jpg")]) == ["0", "0_2"]


def test_choose_thresholds_prefers_overrides_then_category_then_global():
    class Config:
        image_threshold, pixel_threshold = 0.6, 0.5
        category_thresholds = {"bottle": {"image_threshold": 0.7, "pixel_threshold": 0.4}}

    assert choose_thresholds(Config, "bottle") == Thresholds(0.7, 0.4, "category")
    assert choose_thresholds(Config, "screw") == Thresholds(0.6, 0.5, "global")
    assert choose_thresholds(Config, "bottle", pixel_override=0.9) == Thresholds(
        0.7, 0.9, "image:category,pixel:override"
    )


def test_anomalous_regions_are_8_connected_and_largest_first():
    mask = np.zeros((10, 12), dtype=bool)
    mask[1:3, 1:3] = True
    mask[3, 3] = True  # touches the first region diagonally
    mask[5:9, 6:11] = True
    assert anomalous_regions(mask) == (2, [[6, 5, 11, 9], [1, 1, 4, 4]])
    assert anomalous_regions(np.zeros((4, 4), dtype=bool)) == (0, [])


def test_overlay_shows_the_verdict_colour_and_checks_shapes():
    image = np.full((30, 50, 3), 128, np.uint8)
    anomaly_map = np.tile(np.linspace(0, 1, 50, dtype=np.float32), (30, 1))
    for decision in ("OK", "NG"):
        picture = draw_overlay(image, anomaly_map, anomaly_map > 0.5, 0.7, decision, 0.6, "part.png", 0.5)
        assert picture.mode == "RGB" and picture.width > picture.height
        colours = {tuple(colour) for colour in np.asarray(picture).reshape(-1, 3)}
        assert DECISION_COLOURS[decision] in colours
    with pytest.raises(ValueError, match="anomaly_map has shape"):
        draw_overlay(image, anomaly_map[:, :10], None, 0.7, "OK", 0.6, "part.png")
