"""Thresholds decide only in the inference mode they were calibrated in: predict, the app, exports, the pipeline."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_clip import IMAGE_SIZE, make_tiny_clip

from inference import predict
from inference.modes import NO_THRESHOLDS, calibration_mode, input_mode, same_mode, thresholds_fit
from modeling_clipada import PIPELINE_TASK, CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor

# thresholds that make every image NG when they are applied: an UNCALIBRATED row shows they were not
THRESHOLDS = {"image_threshold": 1e-4, "pixel_threshold": 0.5}
TILE_FLAGS = ["--tile_size", "24", "--tile_overlap", "0.5"]
TILES_SETTINGS = {"tile_size": 24, "tile_overlap": 0.5}
SQUASH = {"resize_mode": "squash", "tile_size": None, "tile_overlap": None, "size": [IMAGE_SIZE, IMAGE_SIZE]}
TILES = {"resize_mode": "squash", "tile_size": 24, "tile_overlap": 0.5, "size": [IMAGE_SIZE, IMAGE_SIZE]}


@pytest.fixture(scope="module")
def model() -> CLIPADAForAnomalySegmentation:
    clip, tokenizer = make_tiny_clip()
    return CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer, feature_layer=3, image_score_top_k=16).eval()


@pytest.fixture(scope="module")
def save_checkpoint(model, tmp_path_factory):
    """`save_checkpoint(name, processor, **config_fields)`: the tiny model with those decision fields, and the
    processor saved beside it."""
    root = tmp_path_factory.mktemp("modes")

    def save(name: str, processor: CLIPADAImageProcessor, **fields) -> Path:
        unset = dict.fromkeys(("image_threshold", "pixel_threshold", "category_thresholds", "calibration_mode"))
        for field, value in {**unset, **fields}.items():
            setattr(model.config, field, value)
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
        return root / name

    return save


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = [folder / f"{index}.png" for index in range(2)]
    for path in paths:
        Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save(path)
    return paths


def _predict(images, checkpoint, output_dir, *flags) -> list[dict]:
    predict.main([*map(str, images), "--model_name_or_path", str(checkpoint), "--output_dir", str(output_dir), *flags])
    return [json.loads(line) for line in (output_dir / "predictions.jsonl").read_text().splitlines()]


def _notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("note:")]


# ---------------------------------------------------------------------------------------------- the rule


def test_the_rule_compares_what_makes_the_inputs():
    squash, tiles = CLIPADAImageProcessor(size=IMAGE_SIZE), CLIPADAImageProcessor(size=IMAGE_SIZE, **TILES_SETTINGS)
    assert input_mode(squash) == SQUASH and input_mode(tiles) == TILES
    assert same_mode(SQUASH, SQUASH) and not same_mode(SQUASH, TILES)
    assert same_mode(TILES, {**TILES, "resize_mode": "letterbox"})  # tiles are cut the same whatever resize_mode
    assert not same_mode(TILES, {**TILES, "tile_overlap": 0.25}) and not same_mode(SQUASH, {**SQUASH, "size": [64, 64]})
    assert not same_mode(SQUASH, {**SQUASH, "resize_mode": "letterbox"})
    calibrated = {**THRESHOLDS, "calibration_mode": TILES}
    assert thresholds_fit(calibrated, tiles, squash) and not thresholds_fit(calibrated, squash, squash)
    assert thresholds_fit(THRESHOLDS, squash, squash) and not thresholds_fit(THRESHOLDS, tiles, squash)  # not recorded
    assert calibration_mode(THRESHOLDS, tiles) == TILES
    assert not thresholds_fit(THRESHOLDS, squash, None)  # thresholds of an unknown mode never decide
    assert thresholds_fit({}, tiles, squash) and thresholds_fit(NO_THRESHOLDS, tiles, None)  # nothing to misapply


# ---------------------------------------------------------------------------------------------- predict


def test_tiles_never_decide_with_squash_thresholds_and_one_note_says_how_to_fix_it(
    save_checkpoint, images, tmp_path, capsys
):
    checkpoint = save_checkpoint(
        "squash", CLIPADAImageProcessor(size=IMAGE_SIZE), **THRESHOLDS, calibration_mode=SQUASH
    )
    rows = _predict(images, checkpoint, tmp_path / "squash")
    assert [row["decision"] for row in rows] == ["NG", "NG"] and _notes(capsys.readouterr().err) == []
    rows = _predict(images, checkpoint, tmp_path / "tiles", *TILE_FLAGS)
    assert [row["decision"] for row in rows] == ["UNCALIBRATED", "UNCALIBRATED"]
    assert all(row["threshold_source"] == "none" and row.get("normalized_score") is None for row in rows)
    (note,) = _notes(capsys.readouterr().err)
    assert f"squash at {IMAGE_SIZE}x{IMAGE_SIZE}" in note and "tiles of 24 px (overlap 0.5)" in note
    assert "clipada calibrate" in note and "--tile_size 24" in note and "--image_threshold" in note


def test_thresholds_calibrated_in_the_tile_mode_decide_with_tiles_only(save_checkpoint, images, tmp_path, capsys):
    tiles = CLIPADAImageProcessor(size=IMAGE_SIZE, **TILES_SETTINGS)
    checkpoint = save_checkpoint("tiles", tiles, **THRESHOLDS, calibration_mode=TILES)
    rows = _predict(images, checkpoint, tmp_path / "own")  # its preprocessor_config.json tiles
    assert [row["decision"] for row in rows] == ["NG", "NG"] and {row["threshold_source"] for row in rows} == {"global"}
    rows = _predict(images, checkpoint, tmp_path / "flags", *TILE_FLAGS)  # the same mode, given again
    assert [row["decision"] for row in rows] == ["NG", "NG"] and _notes(capsys.readouterr().err) == []
    rows = _predict(images, checkpoint, tmp_path / "squash", "--tile_size", "0")
    assert [row["decision"] for row in rows] == ["UNCALIBRATED", "UNCALIBRATED"]
    (note,) = _notes(capsys.readouterr().err)
    assert "tiles of 24 px" in note and "--resize_mode squash --tile_size 0" in note


def test_threshold_flags_still_decide_in_another_mode(save_checkpoint, images, tmp_path, capsys):
    checkpoint = save_checkpoint("override", CLIPADAImageProcessor(size=IMAGE_SIZE), **THRESHOLDS)
    rows = _predict(images, checkpoint, tmp_path / "image", *TILE_FLAGS, "--image_threshold", "0.99")
    assert [row["decision"] for row in rows] == ["OK", "OK"]
    assert {row["threshold_source"] for row in rows} == {"image:override,pixel:none"}  # the squash pixel one: not
    assert all(row.get("anomalous_area") is None for row in rows) and len(_notes(capsys.readouterr().err)) == 1
    rows = _predict(images, checkpoint, tmp_path / "both", *TILE_FLAGS, "--image_threshold", "0.99",
                    "--pixel_threshold", "0.5")  # fmt: skip
    assert {row["threshold_source"] for row in rows} == {"override"} and _notes(capsys.readouterr().err) == []


def test_a_checkpoint_without_calibration_mode_counts_as_calibrated_in_its_preprocessor_config(
    save_checkpoint, images, tmp_path, capsys
):
    tiles = CLIPADAImageProcessor(size=IMAGE_SIZE, **TILES_SETTINGS)
    checkpoint = save_checkpoint("older", tiles, **THRESHOLDS)  # calibrated before the mode was recorded
    assert json.loads((checkpoint / "config.json").read_text()).get("calibration_mode") is None
    assert [row["decision"] for row in _predict(images, checkpoint, tmp_path / "own")] == ["NG", "NG"]
    rows = _predict(images, checkpoint, tmp_path / "squash", "--tile_size", "0")
    assert [row["decision"] for row in rows] == ["UNCALIBRATED", "UNCALIBRATED"]
    rows = _predict(images, checkpoint, tmp_path / "larger", "--image_size", str(2 * IMAGE_SIZE))  # size: its mode too
    assert [row["decision"] for row in rows] == ["UNCALIBRATED", "UNCALIBRATED"]
    notes = _notes(capsys.readouterr().err)
    assert len(notes) == 2 and f"at {2 * IMAGE_SIZE}x{2 * IMAGE_SIZE}" in notes[1]


# ---------------------------------------------------------------------------------------------- the app


def test_the_app_starts_its_sliders_at_the_default_and_says_why_when_the_thresholds_do_not_fit(save_checkpoint, images):
    from inference.app.model import load_served_model
    from inference.app.results import DEFAULT_THRESHOLD, render_results, score_uploads, slider_start, slider_thresholds

    # calibrated with tiles, but its preprocessor_config.json squashes: the app runs squash
    checkpoint = save_checkpoint("app", CLIPADAImageProcessor(size=IMAGE_SIZE), **THRESHOLDS, calibration_mode=TILES)
    served = load_served_model(str(checkpoint))
    assert served.config is NO_THRESHOLDS and "tiles of 24 px" in served.thresholds_note
    assert slider_start(served.config, None) == (DEFAULT_THRESHOLD, DEFAULT_THRESHOLD)
    results = score_uploads(images, served.backend, served.processor)
    rows = [item.row for item in render_results(results, slider_thresholds(served.config, None, 0.5, 0.5))]
    assert {row["threshold_source"] for row in rows} == {"override"}  # the sliders decide
    fitting = load_served_model(str(save_checkpoint("app-squash", served.processor, **THRESHOLDS)))
    assert fitting.thresholds_note == "" and slider_start(fitting.config, None) == (1e-4, 0.5)

    pytest.importorskip("gradio")
    from inference.app.ui import GLOBAL_CATEGORY, _threshold_note

    assert "not applied" in _threshold_note(served, GLOBAL_CATEGORY) and "tiles of 24 px" in _threshold_note(
        served, GLOBAL_CATEGORY
    )
    assert _threshold_note(fitting, GLOBAL_CATEGORY).startswith("Calibrated (global)")


# ---------------------------------------------------------------------------------------------- exports


@pytest.mark.slow
def test_an_export_carries_the_calibration_mode_and_decides_only_in_it(
    save_checkpoint, images, tmp_path, capsys, monkeypatch
):
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module)
    from inference.backends import load_backend
    from inference.deploy.export import export
    from inference.deploy.runners import EXPORT_CONFIG_NAME, cli

    checkpoint = save_checkpoint("export", CLIPADAImageProcessor(size=IMAGE_SIZE), **THRESHOLDS)  # no mode recorded
    folder = tmp_path / "onnx"
    export(str(checkpoint), folder, "onnx")
    metadata = json.loads((folder / EXPORT_CONFIG_NAME).read_text())
    assert metadata["thresholds"]["calibration_mode"] == SQUASH  # the checkpoint's own preprocessor_config.json's
    assert load_backend(None, str(folder)).decision_config.calibration_mode == SQUASH
    assert [row["decision"] for row in _predict(images, folder, tmp_path / "squash")] == ["NG", "NG"]
    rows = _predict(images, folder, tmp_path / "tiles", *TILE_FLAGS)
    assert [row["decision"] for row in rows] == ["UNCALIBRATED", "UNCALIBRATED"]
    assert len(_notes(capsys.readouterr().err)) == 1

    # the runners' command: thresholds recorded for another mode than the export's do not decide either
    cli(["--model_dir", str(folder), *map(str, images)])
    assert [json.loads(line)["decision"] for line in capsys.readouterr().out.splitlines()] == ["NG", "NG"]
    metadata["thresholds"]["calibration_mode"] = TILES
    (folder / EXPORT_CONFIG_NAME).write_text(json.dumps(metadata))
    cli(["--model_dir", str(folder), *map(str, images)])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [row["decision"] for row in rows] == ["UNCALIBRATED", "UNCALIBRATED"]
    assert {row["threshold_source"] for row in rows} == {"none"} and len(_notes(captured.err)) == 1


@pytest.mark.slow
def test_an_export_at_another_image_size_does_not_decide_with_thresholds_of_the_checkpoints_size(
    save_checkpoint, images, tmp_path
):
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module)
    from inference.deploy.export import export

    checkpoint = save_checkpoint("export-size", CLIPADAImageProcessor(size=IMAGE_SIZE), **THRESHOLDS)
    folder = tmp_path / "onnx"
    export(str(checkpoint), folder, "onnx", image_size=2 * IMAGE_SIZE)
    rows = _predict(images, folder, tmp_path / "predictions")
    assert [row["decision"] for row in rows] == ["UNCALIBRATED", "UNCALIBRATED"]
    from inference.deploy.runners import ExportedCLIPADA

    runner_outputs = ExportedCLIPADA(folder).predict([str(path) for path in images])  # the Python API decides alike
    assert "pred_label" not in runner_outputs and runner_outputs["pred_score"].shape == (2,)


# ---------------------------------------------------------------------------------------------- the pipeline


def test_the_pipeline_does_not_decide_with_an_image_processor_of_another_mode(model, tmp_path):
    from transformers import pipeline

    for field, value in {**THRESHOLDS, "calibration_mode": SQUASH}.items():
        setattr(model.config, field, value)
    image = Image.fromarray((np.random.default_rng(1).random((40, 56, 3)) * 255).astype(np.uint8))
    own = pipeline(PIPELINE_TASK, model=model, image_processor=CLIPADAImageProcessor(size=IMAGE_SIZE))(image)
    assert own["label"] == "NG" and own["mask"] is not None and "uncalibrated" not in own
    tiles = CLIPADAImageProcessor(size=IMAGE_SIZE, **TILES_SETTINGS)
    foreign = pipeline(PIPELINE_TASK, model=model, image_processor=tiles)(image)
    assert "label" not in foreign and "normalized_score" not in foreign and foreign["mask"] is None
    assert "tile_size" in foreign["uncalibrated"] and foreign["predicted_anomaly_map"].shape == (40, 56)
    model.config.calibration_mode = TILES  # calibrated with those tiles: they decide
    assert pipeline(PIPELINE_TASK, model=model, image_processor=tiles)(image)["label"] == "NG"
    model.config.calibration_mode = None  # not recorded: the pipeline cannot tell, and decides as before
    assert "label" in pipeline(PIPELINE_TASK, model=model, image_processor=tiles)(image)


def test_eval_measures_the_operating_point_only_in_the_mode_of_the_thresholds(save_checkpoint, workspace, tmp_path):
    """`clipada eval --tile_size` on a squash-calibrated checkpoint: the paper's metrics and overkill, but no
    false-reject or escape rate at thresholds of another scale; in the checkpoint's own mode they are measured."""
    from training import evaluation

    checkpoint = save_checkpoint(
        "eval-mode", CLIPADAImageProcessor(size=IMAGE_SIZE), **THRESHOLDS, calibration_mode=SQUASH
    )
    common = ["--model_name_or_path", str(checkpoint), "--dataset_name", str(workspace / "data"), "--num_heatmaps", "0"]
    tiled = evaluation.main([*common, "--output_dir", str(tmp_path / "tiles"), *TILE_FLAGS])["mean"]
    assert tiled["false_reject_rate"] is None and tiled["escape_rate"] is None and tiled["image_auroc"] is not None
    squashed = evaluation.main([*common, "--output_dir", str(tmp_path / "squash")])["mean"]
    assert squashed["false_reject_rate"] is not None or squashed["escape_rate"] is not None
