"""Tests of CLIPADAImageProcessor: image modes, masks, post-processing, saving, and bad input."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

from processing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CLIPADAImageProcessor


@pytest.fixture
def processor() -> CLIPADAImageProcessor:
    return CLIPADAImageProcessor(size=32)


def _gradient_image(width: int = 48, height: int = 40) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    return Image.fromarray(np.concatenate([x + 0 * y, y + 0 * x, 128 + 0 * (x + y)], axis=2).astype(np.uint8))


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16", "P", "1"])
def test_every_image_mode_becomes_three_normalised_channels(processor, mode):
    image = _gradient_image()
    image = image.convert("I;16") if mode == "I;16" else image.convert(mode)
    pixel_values = processor(images=image)["pixel_values"]
    assert pixel_values.shape == (1, 3, 32, 32) and pixel_values.dtype == torch.float32
    if mode in ("L", "I;16", "1"):
        assert torch.allclose(
            pixel_values[0, 0] * OPENAI_CLIP_STD[0] + OPENAI_CLIP_MEAN[0],
            pixel_values[0, 1] * OPENAI_CLIP_STD[1] + OPENAI_CLIP_MEAN[1],
            atol=1e-5,
        )


def test_sixteen_bit_images_use_their_full_range(processor):
    image = Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16))
    pixels = processor(images=image)["pixel_values"][0]
    expected = (1.0 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    torch.testing.assert_close(pixels[:, 10, 10], expected)


def test_pil_numpy_and_torch_inputs_agree(processor):
    image = _gradient_image()
    array = np.array(image)
    from_pil = processor(images=image)["pixel_values"]
    from_hwc = processor(images=array)["pixel_values"]
    from_chw = processor(images=torch.from_numpy(array).permute(2, 0, 1))["pixel_values"]
    from_float = processor(images=array.astype(np.float32) / 255)["pixel_values"]
    torch.testing.assert_close(from_hwc, from_pil)
    torch.testing.assert_close(from_chw, from_pil)
    torch.testing.assert_close(from_float, from_pil)


def test_resize_is_bicubic_like_pil(processor):
    image = _gradient_image(96, 96)
    ours = processor(images=image)["pixel_values"][0]
    pil = np.asarray(image.resize((32, 32), Image.BICUBIC), dtype=np.float32) / 255
    pil = (torch.from_numpy(pil).permute(2, 0, 1) - torch.tensor(OPENAI_CLIP_MEAN)[:, None, None]) / torch.tensor(
        OPENAI_CLIP_STD
    )[:, None, None]
    assert (ours - pil).abs().mean() < 0.02


def test_batches_and_paths_are_accepted(processor, tmp_path):
    path = tmp_path / "image.png"
    _gradient_image().save(path)
    batch = processor(images=[str(path), path, _gradient_image(10, 20)])["pixel_values"]
    assert batch.shape == (3, 3, 32, 32)
    torch.testing.assert_close(batch[0], batch[1])
    stacked = processor(images=np.zeros((4, 16, 16, 3), dtype=np.uint8))["pixel_values"]
    assert stacked.shape == (4, 3, 32, 32)


@pytest.mark.parametrize("anomalous_value", [255, 1, 6])
def test_masks_are_binary_nearest_resized_and_never_normalised(processor, anomalous_value):
    mask = np.zeros((40, 48), dtype=np.uint8)
    mask[10:30, 12:36] = anomalous_value
    labels = processor(images=_gradient_image(), segmentation_maps=Image.fromarray(mask))["labels"]
    assert labels.shape == (1, 32, 32) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) == {0, 1}
    assert labels[0, 16, 16] == 1 and labels[0, 0, 0] == 0
    assert abs(labels.float().mean().item() - (20 * 24) / (40 * 48)) < 0.03


def test_none_mask_means_a_normal_image(processor):
    mask = np.ones((40, 48), dtype=bool)
    labels = processor(images=[_gradient_image(), _gradient_image()], segmentation_maps=[None, mask])["labels"]
    assert labels[0].sum() == 0 and labels[1].sum() == 32 * 32


def test_post_process_returns_maps_at_the_original_sizes(processor):
    class Outputs:
        anomaly_map = torch.rand(2, 32, 32)

    maps = processor.post_process_anomaly_maps(Outputs(), target_sizes=[(40, 48), (900, 900)])
    assert [tuple(m.shape) for m in maps] == [(40, 48), (900, 900)]
    assert all(0 <= m.min() and m.max() <= 1 for m in maps)
    assert [tuple(m.shape) for m in processor.post_process_anomaly_maps(Outputs())] == [(32, 32), (32, 32)]
    with pytest.raises(ValueError, match="target_sizes"):
        processor.post_process_anomaly_maps(Outputs(), target_sizes=[(40, 48)])


def test_save_and_load_round_trip(processor, tmp_path):
    processor = CLIPADAImageProcessor(size=(64, 96), image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    assert (tmp_path / "image_processing_clipada.py").is_file()
    for reloaded in (
        CLIPADAImageProcessor.from_pretrained(tmp_path),
        AutoImageProcessor.from_pretrained(tmp_path, trust_remote_code=True),
    ):
        assert reloaded.size == {"height": 64, "width": 96}
        assert list(reloaded.image_mean) == [0.5, 0.5, 0.5]
        out = reloaded(images=_gradient_image())["pixel_values"]
        torch.testing.assert_close(out, processor(images=_gradient_image())["pixel_values"])


@pytest.mark.parametrize(
    "images, error, message",
    [
        (None, ValueError, "None"),
        ([], ValueError, "empty"),
        ("not/an/image.png", ValueError, "not an existing image file"),
        (np.zeros((1, 2, 3, 4, 5)), ValueError, "5 dimensions"),
        (np.zeros((7, 7, 7)), ValueError, "shape"),
        (np.full((8, 8), 3.0), ValueError, r"\[0, 1\]"),
        (12, TypeError, "int"),
        ([_gradient_image(), None], ValueError, r"images\[1\] is None"),
    ],
)
def test_bad_images_name_what_was_expected(processor, images, error, message):
    with pytest.raises(error, match=message):
        processor(images=images)


def test_corrupt_image_file_is_named(processor, tmp_path):
    broken = tmp_path / "broken.png"
    _gradient_image().save(broken)
    broken.write_bytes(broken.read_bytes()[:60])
    with pytest.raises(ValueError, match="broken.png"):
        processor(images=str(broken))


def test_mask_errors(processor):
    image = _gradient_image()
    with pytest.raises(ValueError, match="must match its image"):
        processor(images=image, segmentation_maps=np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="one mask per image"):
        processor(images=[image, image], segmentation_maps=[None])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"size": 0}, "size"),
        ({"size": "big"}, "size"),
        ({"image_std": [1, 0, 1]}, "image_std"),
        ({"image_mean": [1, 2]}, "image_mean"),
        ({"resample": 7}, "resample"),
    ],
)
def test_bad_processor_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        CLIPADAImageProcessor(**kwargs)


def test_unnormalised_pixels_then_normalize_equals_the_normalised_path(processor):
    image = _gradient_image()
    raw = processor(images=image, do_normalize=False)["pixel_values"]
    assert 0 <= raw.min() and raw.max() <= 1
    torch.testing.assert_close(processor.normalize(raw), processor(images=image)["pixel_values"])
