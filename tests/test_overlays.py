"""The pictures: evaluation heatmaps are drawn like predict's overlays, with the ground truth outlined; numpy arrays and
torch tensors alike; sizes bounded whatever the image's shape."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.overlays import (
    CONTOUR_COLOUR,
    DECISION_COLOURS,
    DEFAULT_ALPHA,
    DEFAULT_COLOUR_MAP,
    GROUND_TRUTH_COLOUR,
    colour_table,
    display_name,
    draw_overlay,
    save_heatmap,
)

REPO = Path(__file__).resolve().parents[1]


def _inputs(height: int = 60, width: int = 80) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.zeros((3, height, width), dtype=np.float32)  # black, so the overlay shows the colour alone
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[20:40, 10:30] = 1
    anomaly_map = np.zeros((height, width), dtype=np.float32)
    anomaly_map[:, width // 2 :] = 1.0
    return image, mask, anomaly_map


def _colours(picture: Image.Image) -> set[tuple[int, ...]]:
    return {tuple(colour) for colour in np.asarray(picture.convert("RGB")).reshape(-1, 3)}


def test_the_heatmap_is_an_overlay_with_the_ground_truth_score_and_decision(tmp_path):
    image, mask, anomaly_map = _inputs()
    path = tmp_path / "heatmaps" / "disc_0000.png"
    save_heatmap(path, image, mask, anomaly_map, 0.9, "NG", 0.5, "disc · 000.png (anomalous)", pixel_threshold=0.5)
    picture = Image.open(path)
    expected = draw_overlay(
        image.transpose(1, 2, 0), anomaly_map, anomaly_map >= 0.5, 0.9, "NG", 0.5, "disc · 000.png (anomalous)", 0.5,
        ground_truth=mask,
    )  # fmt: skip
    assert np.array_equal(np.asarray(picture), np.asarray(expected))
    colours = _colours(picture)
    assert {GROUND_TRUTH_COLOUR, CONTOUR_COLOUR, DECISION_COLOURS["NG"]} <= colours
    top = tuple(np.round(DEFAULT_ALPHA * colour_table(DEFAULT_COLOUR_MAP)[255]).astype(np.uint8).tolist())
    assert top in colours  # the map, in the overlays' colour map, over the black image
    assert picture.width > 3 * 80 and picture.height > 60  # enlarged, with header and colour bar


def test_the_ground_truth_outline_is_drawn_only_when_given():
    image, mask, anomaly_map = _inputs()
    rgb = image.transpose(1, 2, 0)
    without = draw_overlay(rgb, anomaly_map, None, 0.2, "OK", 0.5, "a.png")
    with_truth = draw_overlay(rgb, anomaly_map, None, 0.2, "OK", 0.5, "a.png", ground_truth=mask)
    assert GROUND_TRUTH_COLOUR not in _colours(without) and GROUND_TRUTH_COLOUR in _colours(with_truth)
    with pytest.raises(ValueError, match="ground_truth has shape"):
        draw_overlay(rgb, anomaly_map, None, 0.2, "OK", 0.5, "a.png", ground_truth=mask[:10])


def test_the_heatmap_takes_torch_tensors_like_numpy_arrays(tmp_path):
    torch = pytest.importorskip("torch")
    arrays = _inputs()
    arrays[0][:] = np.random.default_rng(0).random(arrays[0].shape)
    save_heatmap(tmp_path / "numpy.png", *arrays, 0.4, "OK", 0.5, "a")
    save_heatmap(tmp_path / "torch.png", *(torch.from_numpy(array) for array in arrays), 0.4, "OK", 0.5, "a")
    pictures = [np.asarray(Image.open(tmp_path / name)) for name in ("numpy.png", "torch.png")]
    assert np.array_equal(*pictures)


def test_a_map_of_another_size_is_named(tmp_path):
    image, mask, _ = _inputs()
    with pytest.raises(ValueError, match="anomaly_map has shape"):
        save_heatmap(tmp_path / "x.png", image, mask, np.zeros((3, 3)), 0.4, "OK", 0.5, "a")


def test_titles_are_readable_names_without_control_characters():
    assert display_name(Path("/very/long/absolute/path/to/good/000.png")) == "good/000.png"
    assert display_name(Path("000.png")) == "000.png"
    assert display_name(Path("/x/new\nline.png")) == "x/new?line.png"
    image = np.zeros((8, 8, 3), np.uint8)
    draw_overlay(image, np.zeros((8, 8), np.float32), None, 0.1, "OK", 0.5, "new\nline\x00.png")  # one line drawn


def test_a_nan_map_is_drawn_as_zero_instead_of_failing():
    anomaly_map = np.full((8, 8), np.nan, np.float32)
    picture = draw_overlay(np.zeros((8, 8, 3), np.uint8), anomaly_map, None, 0.1, "ERROR", None, "a.png")
    assert picture.mode == "RGB"


def test_the_pictures_never_import_torch():
    code = "import sys, inference.overlays; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_evaluation_heatmaps_are_labelled_overlays_with_the_ground_truth(tmp_path):
    pytest.importorskip("torch")
    from fake_trees import write_folder_tree
    from tiny_clip import make_tiny_clip

    from modeling_clipada import CLIPADAForAnomalySegmentation
    from processing import CLIPADAImageProcessor
    from training import evaluation
    from training.data import load_anomaly_dataset

    write_folder_tree(tmp_path / "data", ["disc"], num_train=1, masks="all")
    test = load_anomaly_dataset(str(tmp_path / "data"), dataset="folder")["test"]
    clip, tokenizer = make_tiny_clip()
    model = CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer, feature_layer=2).eval()
    model.config.image_threshold, model.config.pixel_threshold = 0.0001, 0.0001  # everything NG, every pixel outlined
    evaluation.evaluate_model(model, CLIPADAImageProcessor(size=32), test, output_dir=tmp_path / "out", num_heatmaps=2)
    heatmaps = sorted((tmp_path / "out" / "heatmaps").iterdir())
    assert len(heatmaps) == 2
    for path in heatmaps:
        picture = Image.open(path)
        assert picture.width >= 480 and picture.height > 480  # not a 96 px strip: enlarged, header, colour bar
        colours = _colours(picture)
        assert DECISION_COLOURS["NG"] in colours and CONTOUR_COLOUR in colours
    labels = [label for category, label in zip(test["category"], test["label"]) if category == "disc"]
    outlined = [GROUND_TRUTH_COLOUR in _colours(Image.open(path)) for path in heatmaps]
    assert outlined == [bool(labels[int(path.stem.split("_")[-1])]) for path in heatmaps]  # anomalous: outlined
    assert any(outlined)
