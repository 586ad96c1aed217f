"""Tests of CLIPADAImageProcessor: image modes, masks, post-processing, saving, and bad input."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
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


@pytest.mark.parametrize("resample, mode", [(Image.BICUBIC, "bicubic"), (Image.BILINEAR, "bilinear")])
@pytest.mark.parametrize("height, width", [(96, 96), (17, 23), (300, 280)])
def test_resize_matches_antialiased_float_interpolation(resample, mode, height, width):
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ours = CLIPADAImageProcessor(size=(32, 40), resample=resample)(images=image, do_normalize=False)["pixel_values"]
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    expected = torch.nn.functional.interpolate(pixels, size=(32, 40), mode=mode, antialias=True).clamp(0, 1)
    assert (ours - expected).abs().max() < 1e-4


def test_numpy_outputs_keep_their_dtypes(processor):
    mask = np.zeros((40, 48), dtype=np.uint8)
    outputs = processor(images=_gradient_image(), segmentation_maps=mask, return_tensors="np")
    assert isinstance(outputs["pixel_values"], np.ndarray) and outputs["pixel_values"].dtype == np.float32
    assert outputs["labels"].shape == (1, 32, 32) and outputs["labels"].dtype == np.int64


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


# Issue 9: bit depth, NaN/inf, EXIF orientation, and errors that name the item.


def _dark_sixteen_bit(mode: str) -> Image.Image:
    """A 16-bit image whose values all stay below 256: dark, not white."""
    values = np.full((20, 20), 200, dtype=np.uint16)
    return Image.fromarray(values) if mode == "I;16" else Image.fromarray(values.astype(np.int32))  # mode I


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_sixteen_bit_images_are_scaled_by_bit_depth_not_by_content(processor, tmp_path, mode):
    image = _dark_sixteen_bit(mode)
    assert image.mode == mode
    path = tmp_path / "dark16.png"
    _dark_sixteen_bit("I;16").save(path)  # a 16-bit PNG on disk (Pillow opens it as I;16, older Pillow as I)
    for source in (image, path):
        pixels = processor(images=source, do_normalize=False)["pixel_values"]
        torch.testing.assert_close(pixels, torch.full((1, 3, 32, 32), 200 / 65535))


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.full((8, 8), 200, dtype=np.uint8), 200 / 255),
        (np.full((8, 8), 200, dtype=np.uint16), 200 / 65535),
        (torch.full((8, 8), 200, dtype=torch.uint8), 200 / 255),
        (np.ones((8, 8), dtype=bool), 1.0),
        (np.full((8, 8), 0.25, dtype=np.float64), 0.25),
    ],
)
def test_arrays_are_scaled_by_their_dtype(processor, array, expected):
    pixels = processor(images=array, do_normalize=False)["pixel_values"]
    torch.testing.assert_close(pixels, torch.full((1, 3, 32, 32), expected))


@pytest.mark.parametrize(
    "array",
    [np.full((8, 8), 200, dtype=np.int32), torch.full((8, 8), 200, dtype=torch.int64)],
    ids=["numpy-int32", "torch-int64"],
)
def test_integer_arrays_without_a_bit_depth_are_refused(processor, array):
    with pytest.raises(TypeError, match=r"images\[1\] has dtype int(32|64).*uint8.*uint16"):
        processor(images=[np.zeros((8, 8), dtype=np.uint8), array])


@pytest.mark.parametrize("bad, word", [(float("nan"), "NaN"), (float("inf"), "inf")])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_float_images_with_nan_or_inf_name_the_image(processor, bad, word, kind):
    image = np.full((8, 8, 3), 0.5, dtype=np.float32)
    broken = image.copy()
    broken[2, 3, 1] = bad
    images = [image, image, image, broken]
    if kind == "torch":
        images = [torch.from_numpy(array) for array in images]
    with pytest.raises(ValueError, match=rf"images\[3\] contains {word}"):
        processor(images=images)


def _sideways_jpeg(path) -> None:
    """60x30 JPEG, bright top half, dark bottom half, stored with EXIF Orientation 6 (display rotated 90° clockwise)."""
    pixels = np.zeros((30, 60, 3), dtype=np.uint8)
    pixels[:15] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


def test_exif_orientation_is_applied_once(processor, tmp_path):
    path = tmp_path / "sideways.jpg"
    _sideways_jpeg(path)
    with Image.open(path) as opened:
        upright = ImageOps.exif_transpose(opened)
        assert upright.size == (30, 60)  # rotated: the bright half is now on the right
        from_open = processor(images=opened, do_normalize=False)["pixel_values"]
    from_path = processor(images=path, do_normalize=False)["pixel_values"]
    from_upright = processor(images=upright, do_normalize=False)["pixel_values"]  # not rotated a second time
    for pixels in (from_path, from_open, from_upright):
        left, right = pixels[0, :, :, :12].mean(), pixels[0, :, :, -12:].mean()
        assert left < 0.05 and right > 0.95
    torch.testing.assert_close(from_path, from_upright)
    torch.testing.assert_close(from_open, from_upright)


@pytest.mark.parametrize(
    "empty",
    [np.zeros((0, 0, 3), dtype=np.uint8), Image.new("RGB", (0, 0)), np.zeros((0, 5), dtype=np.uint8)],
    ids=["numpy-0x0", "pil-0x0", "numpy-5x0"],
)
def test_empty_images_are_named(processor, empty):
    with pytest.raises(ValueError, match=r"images\[1\] is empty"):
        processor(images=[_gradient_image(), empty])


def test_mask_size_mismatch_names_the_index_and_the_image_file(processor, tmp_path):
    _gradient_image().save(tmp_path / "good_000.png")
    _gradient_image().save(tmp_path / "crack_007.png")
    images = [tmp_path / "good_000.png", str(tmp_path / "crack_007.png")]
    with pytest.raises(ValueError, match=r"segmentation_maps\[1\] .*'crack_007.png'.*must match its image"):
        processor(images=images, segmentation_maps=[None, np.zeros((10, 10), dtype=np.uint8)])
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(tmp_path / "crack_007_mask.png")
    with pytest.raises(ValueError, match=r"segmentation_maps\[1\] \('crack_007_mask.png'\)"):
        processor(images=images, segmentation_maps=[None, tmp_path / "crack_007_mask.png"])


@pytest.mark.parametrize(
    "value, message",
    [(-1, r"segmentation_maps\[1\] has negative values"), (float("nan"), r"segmentation_maps\[1\] contains NaN")],
)
def test_masks_that_cannot_be_binarised_are_named(processor, value, message):
    mask = np.zeros((40, 48), dtype=np.float32)
    mask[5:10, 5:10] = value
    with pytest.raises(ValueError, match=message):
        processor(images=[_gradient_image(), _gradient_image()], segmentation_maps=[None, mask])


@pytest.mark.parametrize("size", [(30, 17), (1024, 900), (3, 2), (700, 1000)])
def test_the_torch_free_bilinear_resize_agrees_with_f_interpolate(size):
    """Squash maps come back to each image's size in numpy (predict on an export, without torch) and in torch (the
    pipeline): both give the same map to 1 float32 ulp, so masks agree but for pixels within 1.2e-7 of a threshold."""
    import torch.nn.functional as F

    from processing.image_processing_clipada import resize_bilinear

    anomaly_map = np.random.default_rng(0).random((56, 40), dtype=np.float32)
    reference = F.interpolate(torch.from_numpy(anomaly_map)[None, None], size=size, mode="bilinear")[0, 0].numpy()
    resized = resize_bilinear(anomaly_map, size)
    assert resized.dtype == np.float32 and resized.shape == size
    assert np.abs(resized - reference).max() <= 1.2e-7
