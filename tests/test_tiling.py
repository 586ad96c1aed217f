"""Letterboxed and tiled inference: geometry, blending, the score rule, the processor's config, evaluate, predict."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fake_trees import write_mvtec_tree
from PIL import Image
from tiny_clip import IMAGE_SIZE, make_tiny_clip

from inference import predict
from modeling_clipada import CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor
from processing.tiling import (
    TileLayout,
    blend_weights,
    letterbox_layout,
    merge_maps,
    reassemble,
    resize_map,
    tile_layout,
    top_k_score,
)
from training import evaluation
from training.calibration import collect_normal_scores
from training.evaluation import save_category_predictions
from training.metrics import compute_anomaly_metrics

TOP_K = 16


def _crops(full_map: np.ndarray, layout: TileLayout) -> np.ndarray:
    size = layout.tile_size
    return np.stack([full_map[top : top + size, left : left + size] for top, left in layout.tile_origins])


@pytest.mark.parametrize("length, tile, overlap", [(100, 32, 8), (33, 32, 0), (32, 32, 8), (1000, 224, 56)])
def test_tiles_cover_every_pixel_and_neighbours_share_at_least_the_overlap(length, tile, overlap):
    layout = tile_layout((length, length + 7), (tile, tile), tile, overlap / tile)
    rows = sorted({top for top, _ in layout.tile_origins})
    assert rows[0] == 0 and rows[-1] + tile == length
    assert all(later - earlier <= tile - overlap for earlier, later in zip(rows, rows[1:]))
    assert layout.num_inputs == len(rows) * len({left for _, left in layout.tile_origins})


def test_a_side_shorter_than_a_tile_is_enlarged_keeping_proportions():
    layout = tile_layout((16, 40), (32, 32), tile_size=32, tile_overlap=0.25)
    assert layout.working_size == (32, 80) and layout.image_size == (16, 40)


def test_blend_weights_are_one_inside_and_fade_towards_every_border_without_reaching_zero():
    weights = blend_weights(32, 8)
    assert weights[8:24, 8:24].min() == 1.0 and weights.min() > 0
    assert np.all(np.diff(weights[16, :16]) >= 0) and np.all(np.diff(weights[16, 16:]) <= 0)
    assert np.array_equal(blend_weights(32, 0), np.ones((32, 32)))


def test_a_map_made_of_constant_tiles_comes_back_exactly():
    layout = tile_layout((80, 112), (32, 32), tile_size=32, tile_overlap=0.25)
    values = np.arange(1, layout.num_inputs + 1, dtype=np.float32) / (layout.num_inputs + 1)
    merged = merge_maps(values[:, None, None] * np.ones((1, 32, 32), np.float32), layout)
    covered = np.zeros((layout.num_inputs, *layout.working_size), dtype=bool)
    for index, (top, left) in enumerate(layout.tile_origins):
        covered[index, top : top + 32, left : left + 32] = True
    alone = covered.sum(0) == 1  # pixels of one tile only take its value, bit for bit
    assert np.array_equal(merged[alone], values[covered.argmax(0)][alone])
    shared = ~alone  # the others lie between the values of the tiles that cover them
    lowest = np.where(covered, values[:, None, None], np.inf).min(0)
    highest = np.where(covered, values[:, None, None], -np.inf).max(0)
    assert np.all(merged[shared] >= lowest[shared] - 1e-7) and np.all(merged[shared] <= highest[shared] + 1e-7)
    same = merge_maps(np.full((layout.num_inputs, 32, 32), 0.375, np.float32), layout)
    assert np.array_equal(same, np.full(layout.working_size, 0.375, np.float32))


def test_crops_of_one_map_are_blended_back_into_that_map():
    layout = tile_layout((70, 100), (32, 32), tile_size=32, tile_overlap=0.3)
    full_map = np.random.default_rng(0).random((70, 100)).astype(np.float32)
    np.testing.assert_allclose(merge_maps(_crops(full_map, layout), layout), full_map, rtol=0, atol=1e-6)


def test_a_smooth_map_survives_tiles_resized_to_the_input_within_0_01():
    # tiles of 64 image pixels go through a 32-pixel model input and back: bilinear down and up again
    layout = tile_layout((192, 256), (32, 32), tile_size=64, tile_overlap=0.25)
    rows, columns = np.mgrid[0:192, 0:256]
    smooth = (0.5 + 0.25 * np.sin(rows / 30.0) * np.cos(columns / 40.0)).astype(np.float32)
    tiles = np.stack([resize_map(tile, (32, 32)) for tile in _crops(smooth, layout)])
    merged = merge_maps(tiles, layout)
    assert merged.shape == smooth.shape and np.abs(merged - smooth).max() <= 0.01


def test_the_score_averages_the_same_fraction_of_pixels_as_the_top_k_at_the_input_size():
    anomaly_map = np.zeros((64, 64), np.float32)
    anomaly_map[:8, :8] = 1.0  # 64 hot pixels = 4 x (16 / (32 x 32)) of the map's 4096 pixels
    assert top_k_score(anomaly_map, TOP_K, (32, 32)) == 1.0  # k = 64
    anomaly_map[0, 0] = 0.0
    assert top_k_score(anomaly_map, TOP_K, (32, 32)) == pytest.approx(63 / 64)


def test_letterbox_keeps_proportions_and_pads_with_the_mean_colour_zero_once_normalised():
    processor = CLIPADAImageProcessor(size=32, resize_mode="letterbox")
    image = np.full((20, 40, 3), 200, np.uint8)
    inputs = processor(images=image, segmentation_maps=np.ones((20, 40), np.uint8))
    (layout,) = inputs["image_layouts"]
    assert layout == letterbox_layout((20, 40), (32, 32)) and layout.content_box == (8, 0, 16, 32)
    assert inputs["pixel_values"][0, :, :8].abs().max() == 0 and inputs["pixel_values"][0, :, 24:].abs().max() == 0
    assert inputs["labels"][0].sum() == 16 * 32 and inputs["labels"][0, 8:24].min() == 1


def test_letterbox_padding_never_raises_the_score(tmp_path):
    clip, tokenizer = make_tiny_clip()
    model = CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer, feature_layer=3, image_score_top_k=TOP_K).eval()
    processor = CLIPADAImageProcessor(size=IMAGE_SIZE, resize_mode="letterbox")
    normal = (np.random.default_rng(1).random((24, 64, 3)) * 60 + 100).astype(np.uint8)
    inputs = processor(images=[normal])
    with torch.no_grad():
        outputs = model(inputs["pixel_values"])
    (layout,) = inputs["image_layouts"]
    top, left, height, width = layout.content_box
    content = outputs.anomaly_map[0, top : top + height, left : left + width].numpy()
    padded = outputs.anomaly_map.clone()
    padded[:, :top], padded[:, top + height :] = 1.0, 1.0  # the padding looks as anomalous as can be
    for anomaly_map in (outputs.anomaly_map, padded):
        maps, scores = processor.post_process_anomaly_detection(
            SimpleNamespace(anomaly_map=anomaly_map), image_layouts=inputs["image_layouts"], image_score_top_k=TOP_K
        )
        assert scores[0].item() == pytest.approx(top_k_score(content, TOP_K, (IMAGE_SIZE, IMAGE_SIZE)), abs=1e-7)
        assert scores[0] < 1.0 and maps[0].shape == (24, 64) and maps[0].max() < 1.0
        np.testing.assert_array_equal(maps[0].numpy(), resize_map(content, (24, 64)))


def test_squash_stays_bit_identical_and_returns_the_models_own_score():
    images = [(np.random.default_rng(2).random((20, 44, 3)) * 255).astype(np.uint8)]
    default, explicit = CLIPADAImageProcessor(size=32), CLIPADAImageProcessor(size=32, resize_mode="squash")
    first, second = default(images=images), explicit(images=images)
    assert "image_layouts" not in first and torch.equal(first["pixel_values"], second["pixel_values"])
    outputs = SimpleNamespace(anomaly_map=torch.rand(1, 32, 32), pred_score=torch.tensor([0.25]))
    maps, scores = default.post_process_anomaly_detection(outputs, target_sizes=[(20, 44)])
    assert scores is outputs.pred_score
    assert torch.equal(maps[0], default.post_process_anomaly_maps(outputs, target_sizes=[(20, 44)])[0])


def test_all_tiles_of_a_batch_come_as_one_batch_with_their_masks():
    processor = CLIPADAImageProcessor(size=32, tile_size=32, tile_overlap=0.25)
    images = [np.zeros((48, 80, 3), np.uint8), np.zeros((32, 40, 3), np.uint8)]
    mask = np.zeros((48, 80), np.uint8)
    mask[20:30, 50:60] = 1
    inputs = processor(images=images, segmentation_maps=[mask, None])
    counts = [layout.num_inputs for layout in inputs["image_layouts"]]
    assert counts == [6, 2] and inputs["pixel_values"].shape == (8, 3, 32, 32) and inputs["labels"].shape == (8, 32, 32)
    merged = merge_maps(inputs["labels"][:6].numpy().astype(np.float32), inputs["image_layouts"][0])
    np.testing.assert_array_equal(merged, mask.astype(np.float32))


def test_reassemble_checks_the_number_of_maps():
    layouts = [tile_layout((48, 80), (32, 32), 32, 0.25)]
    with pytest.raises(ValueError, match="6 inputs"):
        reassemble(np.zeros((5, 32, 32), np.float32), layouts)


def test_the_mode_is_saved_in_preprocessor_config_and_bad_values_name_their_field(tmp_path):
    CLIPADAImageProcessor(size=32, resize_mode="letterbox", tile_size=48, tile_overlap=0.5).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert (saved["resize_mode"], saved["tile_size"], saved["tile_overlap"]) == ("letterbox", 48, 0.5)
    loaded = CLIPADAImageProcessor.from_pretrained(tmp_path)
    assert (loaded.resize_mode, loaded.tile_size, loaded.tile_overlap) == ("letterbox", 48, 0.5)
    for key in ("resize_mode", "tile_size", "tile_overlap"):  # a checkpoint saved before the modes existed
        saved.pop(key)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(saved))
    old = CLIPADAImageProcessor.from_pretrained(tmp_path)
    assert (old.resize_mode, old.tile_size) == ("squash", None)
    for field, value in (("resize_mode", "crop"), ("tile_size", 0), ("tile_overlap", 1.0)):
        with pytest.raises(ValueError, match=field):
            CLIPADAImageProcessor(size=32, **{field: value})
    with pytest.raises(ValueError, match="square"):
        CLIPADAImageProcessor(size=(32, 48), tile_size=32)


def test_predictions_of_different_sizes_are_saved_one_key_per_image(tmp_path):
    predictions = {
        "image_scores": [np.array([0.1]), np.array([0.2])],
        "image_labels": [np.array([0]), np.array([1])],
        "anomaly_maps": [np.zeros((1, 4, 6)), np.ones((1, 5, 3))],
        "masks": [np.zeros((1, 4, 6)), np.ones((1, 5, 3))],
        "mask_available": [np.array([True]), np.array([True])],
    }
    save_category_predictions(tmp_path / "c.npz", predictions)
    saved = np.load(tmp_path / "c.npz")
    assert saved["anomaly_map_00001"].shape == (5, 3) and saved["mask_00001"].dtype == np.uint8
    assert "anomaly_maps" not in saved and saved["image_scores"].shape == (2,)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained tiny CLIP-ADA (its head moved off its initial values) with a squash processor."""
    folder = tmp_path_factory.mktemp("tiling_checkpoint")
    clip, tokenizer = make_tiny_clip()
    model = CLIPADAForAnomalySegmentation.from_clip(
        clip, tokenizer, feature_layer=3, image_score_top_k=TOP_K, smoothing_sigma=1.0
    )
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    model.save_pretrained(folder)
    CLIPADAImageProcessor(size=IMAGE_SIZE).save_pretrained(folder)
    return folder


# flags of the commands -> the processor settings they mean
MODES = {
    "letterbox": (["--resize_mode", "letterbox"], {"resize_mode": "letterbox"}),
    "tiles": (["--tile_size", "24", "--tile_overlap", "0.5"], {"tile_size": 24, "tile_overlap": 0.5}),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_evaluation_compares_maps_and_masks_at_the_image_size(checkpoint, mode, tmp_path, isolated_datasets_cache):
    tree = write_mvtec_tree(tmp_path / "mvtec", categories=("bottle",), size=(56, 40), num_per_defect=2)
    output = tmp_path / "evaluation"
    flags = ["--model_name_or_path", str(checkpoint), "--dataset_name", str(tree.root), "--output_dir", str(output)]
    metrics = evaluation.main([*flags, "--save_predictions", "--per_device_eval_batch_size", "2", *MODES[mode][0]])
    saved = np.load(output / "predictions" / "bottle.npz")
    assert saved["anomaly_maps"].shape == saved["masks"].shape == (5, 40, 56)  # (H, W) of the images, not 32 x 32
    # the same maps and scores computed here, image by image, with one forward per image
    model = CLIPADAForAnomalySegmentation.from_pretrained(checkpoint).eval()
    processor = CLIPADAImageProcessor(size=IMAGE_SIZE, **MODES[mode][1])
    dataset = evaluation.load_anomaly_dataset(str(tree.root))["test"]
    maps, scores = [], []
    for example in dataset:
        inputs = processor(images=example["image"])
        with torch.no_grad():
            outputs = model(inputs["pixel_values"])
        (one_map,), one_score = processor.post_process_anomaly_detection(
            outputs, image_layouts=inputs["image_layouts"], image_score_top_k=TOP_K
        )
        maps.append(one_map.numpy()), scores.append(one_score.numpy())
    np.testing.assert_allclose(saved["anomaly_maps"].astype(np.float32), np.stack(maps), atol=1e-3)
    np.testing.assert_allclose(saved["image_scores"], np.concatenate(scores), atol=1e-5)
    recomputed = compute_anomaly_metrics(np.stack(maps), saved["masks"], np.concatenate(scores), saved["image_labels"])
    assert recomputed["pixel_auroc"] == pytest.approx(metrics["per_category"]["bottle"]["pixel_auroc"], abs=1e-4)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_predict_gives_maps_and_scores_of_the_mode_at_the_image_size(checkpoint, mode, tmp_path):
    rng = np.random.default_rng(3)
    paths = []
    for index, (height, width) in enumerate([(40, 56), (30, 90), (64, 48)]):
        paths.append(tmp_path / "images" / f"{index}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(paths[-1])
    output = tmp_path / "predictions"
    flags = ["--model_name_or_path", str(checkpoint), "--output_dir", str(output), "--save_maps", "npz"]
    predict.main([str(path.parent) for path in paths[:1]] + [*flags, "--batch_size", "2", "--image_threshold", "0.5",
                 "--pixel_threshold", "0.5", *MODES[mode][0]])  # fmt: skip
    rows = {row["path"]: row for row in map(json.loads, (output / "predictions.jsonl").read_text().splitlines())}
    model = CLIPADAForAnomalySegmentation.from_pretrained(checkpoint).eval()
    processor = CLIPADAImageProcessor(size=IMAGE_SIZE, **MODES[mode][1])
    for path in paths:
        inputs = processor(images=str(path))
        with torch.no_grad():
            outputs = model(inputs["pixel_values"])
        (expected_map,), expected_score = processor.post_process_anomaly_detection(
            outputs, image_layouts=inputs["image_layouts"], image_score_top_k=TOP_K
        )
        row = rows[str(path)]
        assert row["score"] == pytest.approx(expected_score.item(), abs=1e-5)
        saved_map = np.load(output / row["map"])["anomaly_map"]
        assert saved_map.shape == expected_map.shape and np.abs(saved_map - expected_map.numpy()).max() < 1e-3


@pytest.mark.parametrize("mode", sorted(MODES))
def test_calibration_scores_each_normal_image_once_in_the_mode(checkpoint, mode, isolated_datasets_cache):
    import datasets

    rng = np.random.default_rng(4)
    images = [Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8)) for _ in range(3)]
    split = datasets.Dataset.from_dict({"image": images, "label": [0, 0, 0], "category": ["a", "a", "b"]})
    model = CLIPADAForAnomalySegmentation.from_pretrained(checkpoint).eval()
    processor = CLIPADAImageProcessor(size=IMAGE_SIZE, **MODES[mode][1])
    scores = collect_normal_scores(model, processor, split.cast_column("image", datasets.Image()), batch_size=2)
    inputs = processor(images=images)
    with torch.no_grad():
        outputs = model(inputs["pixel_values"])
    _, expected = processor.post_process_anomaly_detection(outputs, None, inputs["image_layouts"], TOP_K)
    np.testing.assert_allclose(scores.image_scores, expected.numpy(), atol=1e-6)


@pytest.mark.parametrize("mode", [{"tile_size": IMAGE_SIZE}, {"resize_mode": "letterbox"}])
def test_the_pipeline_merges_tiles_and_crops_letterbox_as_predict_does(tmp_path, mode):
    from transformers import pipeline

    clip, tokenizer = make_tiny_clip()
    model = CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer, feature_layer=2).eval()
    model.config.image_threshold, model.config.pixel_threshold = 0.5, 0.5
    processor = CLIPADAImageProcessor(size=IMAGE_SIZE, **mode)
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8))
    inputs = processor(images=[image])
    with torch.no_grad():
        outputs = model(inputs["pixel_values"])
    maps, scores = processor.post_process_anomaly_detection(outputs, [(48, 80)], inputs["image_layouts"], 500)
    result = pipeline("image-anomaly-detection", model=str(tmp_path / "ckpt"), trust_remote_code=True)(image)
    assert result["predicted_anomaly_map"].shape == (48, 80)
    assert torch.allclose(result["predicted_anomaly_map"], maps[0], atol=1e-6)
    assert result["score"] == pytest.approx(float(scores[0]), abs=1e-6)
    assert result["label"] == ("NG" if float(scores[0]) >= 0.5 else "OK") and result["mask"].size == (80, 48)


def test_the_app_scores_tiles_and_names_the_category_like_predict(tmp_path):
    from inference.app.results import score_uploads
    from inference.torch_backend import TorchBackend

    clip, tokenizer = make_tiny_clip()
    model = CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer, feature_layer=2).eval()
    processor = CLIPADAImageProcessor(size=IMAGE_SIZE, tile_size=IMAGE_SIZE)
    image = np.random.default_rng(1).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "wide.png")
    seen = []

    class RecordingBackend(TorchBackend):
        def __call__(self, pixel_values, categories=None):
            seen.append((len(pixel_values), categories))
            return super().__call__(pixel_values, categories)

    backend = RecordingBackend(model, "cpu")
    (result,) = score_uploads([tmp_path / "wide.png"], backend, processor, category="disc")
    inputs = processor(images=[image])
    with torch.no_grad():
        outputs = model(inputs["pixel_values"])
    top_k = model.config.image_score_top_k
    maps, scores = processor.post_process_anomaly_detection(outputs, [(48, 80)], inputs["image_layouts"], top_k)
    num_tiles = len(inputs["pixel_values"])
    assert seen == [(num_tiles, ["disc"] * num_tiles)] and num_tiles > 1
    assert result.anomaly_map.shape == (48, 80) and np.allclose(result.anomaly_map, maps[0].numpy(), atol=1e-6)
    assert result.score == pytest.approx(float(scores[0]), abs=1e-6)


def test_calibration_names_the_category_of_every_tile():
    import datasets

    clip, tokenizer = make_tiny_clip()
    model = CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer, feature_layer=2).eval()
    seen, forward = [], model.forward

    def recording_forward(pixel_values, labels=None, categories=None, **kwargs):
        seen.append((len(pixel_values), list(categories)))
        return forward(pixel_values, labels, categories, **kwargs)

    model.forward = recording_forward
    rng = np.random.default_rng(2)
    images = [Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)) for _ in range(2)]
    split = datasets.Dataset.from_dict({"image": images, "label": [0, 0], "category": ["disc", "weave"]})
    processor = CLIPADAImageProcessor(size=IMAGE_SIZE, tile_size=IMAGE_SIZE)
    scores = collect_normal_scores(model, processor, split.cast_column("image", datasets.Image()), batch_size=2)
    tiles = processor(images=[np.asarray(images[0])])["pixel_values"].shape[0]
    assert seen == [(2 * tiles, ["disc"] * tiles + ["weave"] * tiles)] and scores.image_scores.shape == (2,)


def test_overriding_the_checkpoints_mode_warns_that_thresholds_do_not_carry_over(capsys):
    from inference.modes import with_inference_mode

    processor = CLIPADAImageProcessor(size=IMAGE_SIZE)
    assert with_inference_mode(processor, resize_mode="squash").to_dict() == processor.to_dict()
    assert capsys.readouterr().err == ""
    tiled = with_inference_mode(processor, tile_size=IMAGE_SIZE)
    assert tiled.tile_size == IMAGE_SIZE
    assert "instead of the checkpoint's squash" in capsys.readouterr().err
