"""`clipada predict` against hostile inputs (issue 19): formula cells, folders it does not own, its own earlier
outputs, links and special files, odd image shapes and names, missing inputs and models that produce NaN."""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_clip import IMAGE_SIZE, make_tiny_clip

from inference import overlays
from inference.backends import BackendOutput
from inference.output_folder import OUTPUT_MARKER
from inference.predict import command, inputs, predict_images
from inference.predict.inputs import collect_inputs, output_names
from inference.predict.rows import COLUMNS, Thresholds, error_row
from inference.predict.writers import PredictionWriter
from modeling_clipada import CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny CLIP-ADA checkpoint with thresholds that split random images, and `bottle`'s own thresholds."""
    folder = tmp_path_factory.mktemp("checkpoint")
    clip, tokenizer = make_tiny_clip()
    model = CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer, feature_layer=3, image_score_top_k=16)
    model.config.image_threshold, model.config.pixel_threshold = 0.5, 0.5
    model.config.category_thresholds = {"bottle": {"image_threshold": 0.01, "pixel_threshold": 0.4}}
    model.save_pretrained(folder)
    CLIPADAImageProcessor(size=IMAGE_SIZE).save_pretrained(folder)
    return folder


def _image(path: Path, height: int = IMAGE_SIZE, width: int = IMAGE_SIZE, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _run(argv: list) -> int:
    """`clipada predict argv` -> its exit code (0 when it returned)."""
    try:
        command.cli([str(value) for value in argv])
    except SystemExit as exit_info:
        return exit_info.code
    return 0


def _jsonl(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


def _csv(output_dir: Path) -> list[dict]:
    with open(output_dir / "predictions.csv", newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _constant_backend(value: float):
    def backend(pixel_values, category=None):
        batch_size = pixel_values.shape[0]
        return BackendOutput(np.full((batch_size, 8, 8), value, np.float32), np.full(batch_size, value, np.float32))

    return backend


# item 3: CSV formula injection


def test_csv_cells_that_start_like_a_formula_are_neutralised_and_the_jsonl_keeps_them(
    checkpoint, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    names = ["=1+1.png", "=cmd|' /C calc'!A0.png", "+SUM(A1).png", "@SUM(A1).png", "-2+3.png", "\tx.png", "plain.png"]
    for seed, name in enumerate(names):
        _image(tmp_path / name, seed=seed)
    category = '=HYPERLINK("http://x","y")'
    arguments = [f"./{name}" for name in names]  # ./ so that argparse takes -2+3.png for a file; rows say -2+3.png
    code = _run([*arguments, "--model_name_or_path", checkpoint, "--output_dir", "out", "--category", category])
    assert code == 0
    rows, raw = _csv(tmp_path / "out"), _jsonl(tmp_path / "out")
    for name, row, json_row in zip(names, rows, raw):
        expected = name if name == "plain.png" else "'" + name
        assert row["path"] == expected and json_row["path"] == name
        assert row["category"] == "'" + category and json_row["category"] == category
        assert float(row["score"]) == pytest.approx(json_row["score"])  # numbers are never prefixed


def test_the_writer_neutralises_text_cells_only(tmp_path):
    row = error_row("-x.png", "@cat", "=evil message")
    row.update(score=-0.5, image_threshold=0.3)
    with PredictionWriter(tmp_path) as writer:
        writer.write(row)
    (written,) = _csv(tmp_path)
    assert set(written) == set(COLUMNS)
    assert (written["path"], written["category"], written["error"]) == ("'-x.png", "'@cat", "'=evil message")
    assert written["score"] == "-0.5" and written["decision"] == "ERROR"


# items 5 and 14: the ownership rule


def test_a_folder_predict_did_not_write_is_refused_and_left_as_it_was(checkpoint, tmp_path, capsys):
    image = _image(tmp_path / "in" / "a.png")
    output_dir = tmp_path / "theirs"
    (output_dir / "overlays").mkdir(parents=True)
    (output_dir / "overlays" / "a.png").write_bytes(b"their picture")
    for flags in ([], ["--overwrite_output_dir"]):
        code = _run([image, "--model_name_or_path", checkpoint, "--output_dir", output_dir, *flags])
        assert code == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and str(output_dir) in error and "Traceback" not in error
    assert (output_dir / "overlays" / "a.png").read_bytes() == b"their picture"
    assert sorted(path.name for path in output_dir.iterdir()) == ["overlays"]


def test_the_input_folder_itself_is_never_the_output_folder(checkpoint, tmp_path, capsys):
    folder = tmp_path / "line"
    image = _image(folder / "overlays" / "a.png")
    before = image.read_bytes()
    for flags in ([], ["--overwrite_output_dir"]):
        assert _run([folder, "--model_name_or_path", checkpoint, "--output_dir", folder, *flags]) == 2
        assert "own input" in capsys.readouterr().err
    assert image.read_bytes() == before and not (folder / "predictions.csv").exists()
    single = _image(tmp_path / "other" / "b.png")
    assert _run([single, "--model_name_or_path", checkpoint, "--output_dir", tmp_path / "other"]) == 2
    assert not (tmp_path / "other" / "predictions.csv").exists()


def test_an_overwrite_rerun_leaves_only_its_own_overlays(checkpoint, tmp_path):
    images = [_image(tmp_path / "in" / f"{index}.png", seed=index) for index in range(4)]
    output_dir = tmp_path / "out"
    assert _run([*images, "--model_name_or_path", checkpoint, "--output_dir", output_dir]) == 0
    assert len(list((output_dir / "overlays").iterdir())) == 4
    common = ["--model_name_or_path", checkpoint, "--output_dir", output_dir, "--overwrite_output_dir"]
    assert _run([images[0], *common, "--save_maps", "npz"]) == 0
    assert sorted(path.name for path in (output_dir / "overlays").iterdir()) == ["0.png"]
    assert len(_jsonl(output_dir)) == 1 and sorted(path.name for path in (output_dir / "maps").iterdir()) == ["0.npz"]
    assert _run([images[1], *common, "--no-overlays"]) == 0
    assert not (output_dir / "overlays").exists() and not (output_dir / "maps").exists()


# item 12: our own outputs, links, special files, unreadable folders


def test_an_output_folder_inside_the_input_folder_is_not_scored_again(checkpoint, tmp_path, capsys):
    folder = tmp_path / "line"
    for index in range(2):
        _image(folder / f"{index}.png", seed=index)
    output_dir = folder / "results"
    common = [folder, "--model_name_or_path", checkpoint, "--output_dir", output_dir]
    assert _run(common) == 0
    assert _run([*common, "--overwrite_output_dir", "--save_maps", "png16"]) == 0
    assert [Path(row["path"]).name for row in _jsonl(output_dir)] == ["0.png", "1.png"]
    assert str(output_dir) in capsys.readouterr().err  # the skipped folder is named
    found = inputs.find_inputs([str(folder)])
    assert found.skipped_outputs == [output_dir] and (output_dir / OUTPUT_MARKER).is_file()
    assert collect_inputs([str(folder / "**" / "*.png")]) == [folder / "0.png", folder / "1.png"]  # globs skip it too


def test_links_special_files_and_unreadable_folders_each_get_an_error_row(checkpoint, tmp_path, monkeypatch):
    folder = tmp_path / "line"
    _image(folder / "a.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "gone.png").symlink_to(folder / "missing.png")
    os.mkfifo(folder / "pipe.png")
    (folder / "sub").mkdir()
    _image(folder / "sub" / "hidden_by_permissions.png")
    (folder / "sub" / "back").symlink_to(folder)  # a loop of folders: its images are listed once
    _image(folder / "z.png", seed=3)
    real_entries = inputs._folder_entries

    def entries(directory):
        if Path(directory).name == "sub":
            raise PermissionError(13, "Permission denied", str(directory))
        return real_entries(directory)

    monkeypatch.setattr(inputs, "_folder_entries", entries)
    output_dir = tmp_path / "out"
    assert _run([folder, "--model_name_or_path", checkpoint, "--output_dir", output_dir]) == 1
    rows = {Path(row["path"]).name: row for row in _jsonl(output_dir)}
    assert set(rows) == {"a.png", "loop.png", "zero.png", "gone.png", "pipe.png", "sub", "z.png"}
    assert rows["a.png"]["decision"] != "ERROR" and rows["z.png"]["decision"] != "ERROR"
    assert "loop" in rows["loop.png"]["error"]
    assert "not a regular file" in rows["zero.png"]["error"] and "not a regular file" in rows["pipe.png"]["error"]
    assert "broken" in rows["gone.png"]["error"]
    assert "Permission denied" in rows["sub"]["error"] and "folder" in rows["sub"]["error"]


# items 15 and 16: odd shapes and names never stop the run, and overlays have a bounded size


@pytest.mark.parametrize("shape", [(1, 1_000_000), (1_000_000, 1), (1, 1), (3, 200), (200, 3), (20, 400), (4000, 3000)])
def test_overlays_have_a_bounded_size_whatever_the_shape(shape):
    height, width = shape
    image = np.zeros((height, width, 3), np.uint8)
    anomaly_map = np.zeros((height, width), np.float32)
    anomaly_map[: max(1, height // 2)] = 0.9
    picture = overlays.draw_overlay(image, anomaly_map, anomaly_map > 0.5, 0.7, "NG", 0.6, "part.png", 0.5)
    assert max(picture.size) <= 1.5 * overlays.MAX_DISPLAY_SIDE and min(picture.size) >= 150  # room for the text
    assert overlays.DECISION_COLOURS["NG"] in {tuple(colour) for colour in np.asarray(picture).reshape(-1, 3)}


def test_odd_images_get_a_row_each_and_the_run_goes_on(checkpoint, tmp_path):
    folder = tmp_path / "line"
    odd = {
        "a_one.png": (1, 1),
        "b_two.png": (1, 2),
        "c_tall.png": (2, 1),
        "d_wide.png": (20, 400),
        "e_thin.png": (3, 200),
        "f_line.png": (1, 300_000),
        "g_new\nline.png": (IMAGE_SIZE, IMAGE_SIZE),
        "h_" + "x" * 240 + ".png": (IMAGE_SIZE, IMAGE_SIZE),
        "z_last.png": (IMAGE_SIZE, IMAGE_SIZE),
    }
    for seed, (name, (height, width)) in enumerate(odd.items()):
        _image(folder / name, height, width, seed=seed)
    clash = folder / ("y" * 200) / ("h_" + "x" * 240 + ".png")  # two stems alike: the folder names make it longer
    _image(clash)
    output_dir = tmp_path / "out"
    code = _run([folder, "--model_name_or_path", checkpoint, "--output_dir", output_dir, "--save_maps", "png16"])
    rows = {Path(row["path"]).name: row for row in _jsonl(output_dir)}
    assert len(_jsonl(output_dir)) == len(odd) + 1 and set(odd) <= set(rows)
    for name, (height, width) in odd.items():
        row = rows[name]
        assert row["decision"] in ("OK", "NG"), (name, row["error"])
        assert (row["height"], row["width"]) == (height, width)
        assert (output_dir / row["overlay"]).is_file() and (output_dir / row["map"]).is_file()
        assert "\n" not in row["overlay"] and len(Path(row["overlay"]).name.encode()) <= 255
    assert code == 0


def test_output_names_are_valid_file_names():
    paths = [Path("a/new\nline.png"), Path("b/" + "x" * 300 + ".png"), Path("c/back\\slash.png"), Path("d/...png")]
    paths += [Path("e/A.png"), Path("e/a.png")]
    names = output_names(paths)
    assert len(set(name.casefold() for name in names)) == len(names)  # unique even where case does not count
    for name in names:
        assert name not in ("", ".", "..") and "/" not in name and "\\" not in name and "\n" not in name
        assert len((name + "_99.png").encode()) <= 255


def test_one_image_the_backend_fails_on_gets_an_error_row_and_the_others_are_scored(tmp_path):
    paths = [_image(tmp_path / "in" / f"{index}.png", seed=index) for index in range(3)]
    _image(tmp_path / "in" / "1.png", 40, 40, seed=1)  # the one the backend refuses

    def backend(pixel_values, category=None):
        if pixel_values.shape[0] > 1 or float(pixel_values.mean()) == pytest.approx(bad_mean, abs=1e-6):
            raise RuntimeError("the runtime refused this input")
        return _constant_backend(0.7)(pixel_values)

    processor = CLIPADAImageProcessor(size=IMAGE_SIZE)
    bad_mean = float(processor(images=[str(paths[1])])["pixel_values"].mean())
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    counts = predict_images(paths, backend, processor, Thresholds(0.5, 0.6, "override"), output_dir, batch_size=3)
    assert counts == {"NG": 2, "ERROR": 1}
    rows = _jsonl(output_dir)
    assert [row["decision"] for row in rows] == ["NG", "ERROR", "NG"]
    assert "the runtime refused this input" in rows[1]["error"]


def test_an_image_over_the_pixel_limit_is_an_error_row(checkpoint, tmp_path):
    limited = tmp_path / "limited"
    shutil.copytree(checkpoint, limited)
    CLIPADAImageProcessor(size=IMAGE_SIZE, max_image_pixels=1000).save_pretrained(limited)
    paths = [_image(tmp_path / "in" / "big.png", 64, 64), _image(tmp_path / "in" / "small.png", 8, 8)]
    output_dir = tmp_path / "out"
    assert _run([*paths, "--model_name_or_path", limited, "--output_dir", output_dir]) == 1
    big, small = _jsonl(output_dir)
    assert big["decision"] == "ERROR" and "pixels" in big["error"] and small["decision"] in ("OK", "NG")


# item 23: a missing input is a usage error


def test_a_missing_input_is_a_usage_error_naming_it(checkpoint, tmp_path, capsys):
    image = _image(tmp_path / "a.png")
    output_dir = tmp_path / "out"
    code = _run([image, tmp_path / "typo.png", "--model_name_or_path", checkpoint, "--output_dir", output_dir])
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "typo.png" in error and "Traceback" not in error
    assert not output_dir.exists()


def test_a_missing_entry_of_a_list_file_gets_a_readable_error_row(checkpoint, tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "todo.txt").write_text("a.png\nmissing.png\n")
    output_dir = tmp_path / "out"
    assert _run([tmp_path / "todo.txt", "--model_name_or_path", checkpoint, "--output_dir", output_dir]) == 1
    missing = _jsonl(output_dir)[1]
    assert missing["decision"] == "ERROR" and missing["error"] == "no such file"


# item 6: a model that produces NaN


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_score_or_map_is_an_error_row_never_a_decision(tmp_path, value):
    paths = [_image(tmp_path / "in" / f"{index}.png", seed=index) for index in range(2)]
    processor = CLIPADAImageProcessor(size=IMAGE_SIZE)
    for name, backend in (("score", _constant_backend(value)), ("map", _map_only_backend(value))):
        output_dir = tmp_path / name
        output_dir.mkdir()
        counts = predict_images(paths, backend, processor, Thresholds(0.5, 0.6, "override"), output_dir)
        assert counts == {"ERROR": 2}
        for row in _jsonl(output_dir):
            assert row["decision"] == "ERROR" and "NaN" in row["error"] and row["overlay"] is None


def _map_only_backend(value: float):
    def backend(pixel_values, category=None):
        anomaly_maps = np.full((pixel_values.shape[0], 8, 8), 0.2, np.float32)
        anomaly_maps[:, 0, 0] = value
        return BackendOutput(anomaly_maps, np.full(pixel_values.shape[0], 0.2, np.float32))

    return backend


def test_a_checkpoint_with_nan_weights_never_decides(checkpoint, tmp_path, capsys):
    broken = tmp_path / "nan"
    model = CLIPADAForAnomalySegmentation.from_pretrained(checkpoint)
    with torch.no_grad():
        next(parameter for parameter in model.parameters() if parameter.requires_grad).fill_(float("nan"))
    model.save_pretrained(broken)
    CLIPADAImageProcessor(size=IMAGE_SIZE).save_pretrained(broken)
    image = _image(tmp_path / "a.png")
    code = _run([image, "--model_name_or_path", broken, "--output_dir", tmp_path / "out"])
    captured = capsys.readouterr()
    if code == 2:  # the loader refuses NaN weights: one line, nothing decided
        assert captured.err.startswith("error: ") and "NaN" in captured.err
        assert not (tmp_path / "out" / "predictions.jsonl").exists()
    else:  # weights the loader lets through: the image's row says so
        assert code == 1 and "1 errors" in captured.out
        (row,) = _jsonl(tmp_path / "out")
        assert row["decision"] == "ERROR" and "NaN" in row["error"]


# item 25: readable titles and categories of dataset images


def test_overlay_titles_are_readable_names(checkpoint, tmp_path, monkeypatch):
    image = _image(tmp_path / "deep" / "er" / "good" / "000.png")
    titles = []
    original = command.draw_overlay

    def spy(*args, **kwargs):
        titles.append(kwargs["title"])
        return original(*args, **kwargs)

    monkeypatch.setattr(command, "draw_overlay", spy)
    assert _run([image, "--model_name_or_path", checkpoint, "--output_dir", tmp_path / "out"]) == 0
    assert titles == ["good/000.png"]


def test_dataset_images_get_the_category_their_folder_names(checkpoint, tmp_path, capsys):
    good = _image(tmp_path / "mvtec" / "bottle" / "test" / "good" / "000.png")
    other = _image(tmp_path / "mvtec" / "screw" / "test" / "good" / "000.png", seed=1)
    output_dir = tmp_path / "out"
    assert _run([tmp_path / "mvtec", "--model_name_or_path", checkpoint, "--output_dir", output_dir]) == 0
    rows = {Path(row["path"]): row for row in _jsonl(output_dir)}
    assert rows[good]["category"] == "bottle" and rows[good]["threshold_source"] == "category"
    assert rows[good]["image_threshold"] == 0.01
    assert rows[other]["category"] == "" and rows[other]["threshold_source"] == "global"
    assert "bottle" in capsys.readouterr().err  # says where the category came from
    explicit = tmp_path / "explicit"
    assert (
        _run([tmp_path / "mvtec", "--model_name_or_path", checkpoint, "--output_dir", explicit, "--category", "x"]) == 0
    )
    assert {row["category"] for row in _jsonl(explicit)} == {"x"}
