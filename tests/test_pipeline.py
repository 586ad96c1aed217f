"""The `image-anomaly-detection` pipeline: results per image, carried by every saved checkpoint, remote code alone."""

import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from run_helpers import run_without_project
from tiny_clip import IMAGE_SIZE, make_tiny_clip
from transformers import pipeline
from transformers.image_utils import SizeDict

from modeling_clipada import PIPELINE_TASK, CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor

THRESHOLDS = {"image_threshold": 0.5, "pixel_threshold": 0.5}


def _model(**config) -> CLIPADAForAnomalySegmentation:
    clip, tokenizer = make_tiny_clip()
    model = CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer, feature_layer=3, image_score_top_k=16, **config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(2)) * 0.3)
    return model.eval()


def _image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def _expected(model, processor, image: Image.Image, category=None) -> tuple[float, torch.Tensor, bool | None]:
    """The model's own score, map at the image's size, and label."""
    with torch.no_grad():
        outputs = model(processor(images=image)["pixel_values"], categories=[category])
    anomaly_map = processor.post_process_anomaly_maps(outputs, target_sizes=[image.size[::-1]])[0]
    label = None if outputs.pred_label is None else bool(outputs.pred_label[0])
    return outputs.pred_score.item(), anomaly_map, label


def test_results_hold_score_label_and_maps_at_each_images_size():
    per_category = {"bottle": {"image_threshold": 0.01, "pixel_threshold": 0.99}}
    model, processor = _model(**THRESHOLDS, category_thresholds=per_category), CLIPADAImageProcessor(size=IMAGE_SIZE)
    detector = pipeline(PIPELINE_TASK, model=model, image_processor=processor)
    images = [_image(40, 72), _image(IMAGE_SIZE, IMAGE_SIZE, seed=1)]
    results = detector(images, batch_size=2)
    assert len(results) == 2
    for image, result in zip(images, results):
        score, anomaly_map, label = _expected(model, processor, image)
        assert result["score"] == pytest.approx(score, abs=1e-6)
        assert result["label"] == ("NG" if label else "OK")
        assert result["anomaly_map"].size == image.size and result["mask"].size == image.size
        assert torch.allclose(result["predicted_anomaly_map"], anomaly_map, atol=1e-6)
        assert np.array_equal(np.asarray(result["mask"]) > 0, (anomaly_map >= 0.5).numpy())
        map_pixels = np.asarray(result["anomaly_map"]).astype(float) / 255
        assert np.abs(map_pixels - anomaly_map.numpy()).max() <= 0.5 / 255 + 1e-6  # a fixed 0..1 scale
    bottle = detector(images[0], category="bottle")
    assert bottle["label"] == "NG" and not np.asarray(bottle["mask"]).any()


def test_without_thresholds_there_is_no_label_and_no_mask(tmp_path):
    model, processor = _model(), CLIPADAImageProcessor(size=IMAGE_SIZE)
    _image(20, 30).save(tmp_path / "part.png")
    result = pipeline(PIPELINE_TASK, model=model, image_processor=processor)(str(tmp_path / "part.png"))
    assert "label" not in result and result["mask"] is None
    assert result["score"] == pytest.approx(_expected(model, processor, _image(20, 30))[0], abs=1e-6)


def test_save_pretrained_carries_the_pipeline_file_and_names_it_in_config(tmp_path):
    _model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["custom_pipelines"] == {
        PIPELINE_TASK: {"impl": "pipeline_clipada.ImageAnomalyDetectionPipeline", "pt": ["AutoModel"]}
    }
    assert "class ImageAnomalyDetectionPipeline(Pipeline)" in (tmp_path / "pipeline_clipada.py").read_text()


def test_push_to_hub_carries_the_pipeline(hub_uploads):
    _model().push_to_hub("someone/clipada-line3")
    files = hub_uploads[0]["files"]
    assert {"pipeline_clipada.py", "modeling_clipada.py", "config.json", "model.safetensors"} <= set(files)
    assert PIPELINE_TASK in json.loads(files["config.json"])["custom_pipelines"]


@pytest.mark.slow
def test_training_output_folders_carry_the_pipeline(trained_run):
    assert (trained_run / "pipeline_clipada.py").is_file()
    assert PIPELINE_TASK in json.loads((trained_run / "config.json").read_text())["custom_pipelines"]


@pytest.mark.slow
def test_pipeline_loads_as_remote_code_where_the_project_is_blocked(tmp_path):
    model, processor = _model(**THRESHOLDS), CLIPADAImageProcessor(size=IMAGE_SIZE)
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    image = _image(40, 72)
    image.save(tmp_path / "wide.png")
    expected_score, _, expected_label = _expected(model, processor, image)
    script = textwrap.dedent(
        f"""
        from PIL import Image
        from transformers import pipeline
        detector = pipeline("image-anomaly-detection", model={str(tmp_path / "ckpt")!r}, trust_remote_code=True)
        path = {str(tmp_path / "wide.png")!r}
        single, from_pil = detector(path), detector([Image.open(path)])[0]
        assert single["anomaly_map"].size == (72, 40) and single["mask"].size == (72, 40), single
        assert abs(single["score"] - from_pil["score"]) < 1e-6
        print(type(detector).__module__, single["score"], single["label"])
        """
    )
    result = run_without_project(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    module, score, label = result.stdout.split()
    assert module.startswith("transformers_modules.") and module.endswith(".pipeline_clipada")
    assert float(score) == pytest.approx(expected_score, abs=1e-6)
    assert label == ("NG" if expected_label else "OK")


# Issue 19: thin images keep their size, NaN models raise, bad files and settings are named.


@pytest.mark.parametrize("height, width", [(3, 200), (1, 120), (4, 64), (3, 3)])
def test_thin_images_keep_their_height_and_width(tmp_path, height, width):
    model, processor = _model(**THRESHOLDS), CLIPADAImageProcessor(size=IMAGE_SIZE)
    detector = pipeline(PIPELINE_TASK, model=model, image_processor=processor)
    image = _image(height, width)
    image.save(tmp_path / "thin.png")
    pixels = np.moveaxis(np.asarray(image), -1, 0).astype(np.float32) / 255  # (3, H, W), read by hand
    pixel_values = processor.normalize(processor.resize(pixels, SizeDict(height=IMAGE_SIZE, width=IMAGE_SIZE)))
    with torch.no_grad():
        expected = model(torch.from_numpy(pixel_values)[None]).pred_score.item()
    for source in (image, str(tmp_path / "thin.png")):
        result = detector(source)
        assert result["anomaly_map"].size == (width, height) and result["mask"].size == (width, height)
        assert tuple(result["predicted_anomaly_map"].shape) == (height, width)
        assert result["score"] == pytest.approx(expected, abs=1e-6)


def test_a_model_that_gives_nan_raises_instead_of_deciding():
    model = _model(**THRESHOLDS)
    with torch.no_grad():
        next(parameter for parameter in model.parameters() if parameter.requires_grad).fill_(float("nan"))
    detector = pipeline(PIPELINE_TASK, model=model, image_processor=CLIPADAImageProcessor(size=IMAGE_SIZE))
    with pytest.raises(ValueError, match="NaN or infinite"):
        detector(_image(20, 30))


def test_a_preprocessor_with_nan_image_std_is_refused_at_load(tmp_path):
    _model(**THRESHOLDS).save_pretrained(tmp_path)
    CLIPADAImageProcessor(size=IMAGE_SIZE).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    config["image_std"] = [float("nan")] * 3
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="`image_std`"):
        pipeline(PIPELINE_TASK, model=str(tmp_path), trust_remote_code=True)


def test_multi_frame_and_oversized_files_are_named(tmp_path):
    detector = pipeline(PIPELINE_TASK, model=_model(), image_processor=CLIPADAImageProcessor(size=IMAGE_SIZE))
    frames = [_image(10, 12, seed) for seed in range(3)]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(ValueError, match=r"clip\.gif.*3 frames"):
        detector(str(tmp_path / "clip.gif"))
    _image(20, 30).save(tmp_path / "big.png")
    strict = pipeline(
        PIPELINE_TASK, model=_model(), image_processor=CLIPADAImageProcessor(size=IMAGE_SIZE, max_image_pixels=500)
    )
    with pytest.raises(ValueError, match=r"big\.png.*30x20.*max_image_pixels"):
        strict(str(tmp_path / "big.png"))
