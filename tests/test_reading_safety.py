"""Issue 19, reading images safely: thin images keep (H, W), multi-frame files are refused, one rule for float and
16-bit pixels, one pixel limit checked before decoding, a bound on tiles, and processor settings with sane bounds."""

import json
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

from processing import CLIPADAImageProcessor
from processing.image_inputs import DEFAULT_MAX_IMAGE_PIXELS, pil_to_unit_array
from processing.tiling import tile_layout


@pytest.fixture
def processor() -> CLIPADAImageProcessor:
    return CLIPADAImageProcessor(size=32)


def _ramp(height: int, width: int) -> np.ndarray:
    """`(height, width, 3)` uint8 whose channels differ and whose pixels all differ along both axes."""
    values = np.arange(height * width * 3, dtype=np.int64).reshape(height, width, 3)
    return (values * 7 % 251).astype(np.uint8)


def _unit_chw(array: np.ndarray) -> np.ndarray:
    return np.moveaxis(array, -1, 0).astype(np.float32) / 255


# Item 8: PIL images and files are (H, W, C), always; only raw arrays may be channels-first.

THIN_SIZES = [(3, 200), (1, 200), (2, 200), (4, 200), (200, 3), (3, 3), (4, 4), (1, 1), (3, 1)]


@pytest.mark.parametrize("height, width", THIN_SIZES)
def test_thin_pil_images_and_files_keep_their_height_and_width(processor, tmp_path, height, width):
    array = _ramp(height, width)
    path = tmp_path / "thin.png"
    Image.fromarray(array).save(path)
    for source in (Image.fromarray(array), path, str(path), Image.open(path)):
        pixels = processor.process_image(source, "thin")
        assert pixels.shape == (3, height, width)
        np.testing.assert_array_equal(pixels, _unit_chw(array))


@pytest.mark.parametrize("height, width", [(3, 200), (1, 200), (4, 200), (3, 3)])
def test_thin_rgba_and_grey_images_keep_their_height_and_width(processor, height, width):
    rgba = Image.fromarray(np.dstack([_ramp(height, width), np.full((height, width), 255, np.uint8)]))
    grey = Image.fromarray(_ramp(height, width)[..., 0])
    assert processor.process_image(rgba, "rgba").shape == (3, height, width)
    assert processor.process_image(grey, "grey").shape == (3, height, width)


def test_ambiguous_arrays_follow_the_channels_last_rule_unless_told(processor):
    hwc = _ramp(3, 5)  # (3, 5, 3): a 3x5 RGB image, or 3 channels of 5x3: the last axis wins
    np.testing.assert_array_equal(processor.process_image(hwc, "a"), _unit_chw(hwc))
    chw = torch.from_numpy(np.moveaxis(_ramp(3, 200), -1, 0).copy())  # (3, 3, 200): the last axis cannot be channels
    np.testing.assert_array_equal(processor.process_image(chw, "b"), _unit_chw(_ramp(3, 200)))
    as_chw = processor.process_image(hwc, "c", input_data_format="channels_first")
    np.testing.assert_array_equal(as_chw, hwc.astype(np.float32) / 255)
    through_call = processor(images=hwc, input_data_format="channels_first", do_normalize=False)["pixel_values"]
    expected = processor(images=np.moveaxis(hwc, 0, -1), do_normalize=False)["pixel_values"]
    torch.testing.assert_close(through_call, expected)


def test_a_thin_mask_matches_its_thin_image(processor):
    image = Image.fromarray(_ramp(3, 200))
    mask = np.zeros((3, 200), np.uint8)
    mask[:, 150:] = 255
    labels = processor(images=image, segmentation_maps=Image.fromarray(mask))["labels"]
    assert labels.shape == (1, 32, 32) and labels[0, :, 28:].all() and not labels[0, :, :20].any()


# Item 10: multi-frame files are refused; one reading rule for float and 16-bit pixels (`pil_to_unit_array`).


def _frames(count: int, height: int = 8, width: int = 10) -> list[Image.Image]:
    return [Image.fromarray(np.full((height, width, 3), 40 * index, np.uint8)) for index in range(count)]


@pytest.mark.parametrize("suffix, count", [(".tif", 2), (".gif", 3), (".png", 2), (".webp", 2)])
def test_multi_frame_files_are_refused_naming_the_file_and_the_frames(processor, tmp_path, suffix, count):
    path = tmp_path / f"line3_part{suffix}"
    first, *rest = _frames(count)
    first.save(path, save_all=True, append_images=rest)
    message = rf"line3_part\{suffix}.*{count} frames"
    with pytest.raises(ValueError, match=message):
        processor(images=str(path))
    with Image.open(path) as opened, pytest.raises(ValueError, match=rf"{count} frames"):
        processor(images=opened)
    with Image.open(path) as opened, pytest.raises(ValueError, match=rf"{count} frames"):
        pil_to_unit_array(opened, "line3_part")


def test_a_single_frame_gif_and_tiff_are_read(processor, tmp_path):
    for suffix in (".gif", ".tif"):
        _frames(1)[0].save(tmp_path / f"one{suffix}")
        assert processor.process_image(tmp_path / f"one{suffix}", "one").shape == (3, 8, 10)


def _float_tiff(path, values: np.ndarray) -> None:
    Image.fromarray(values.astype(np.float32), mode="F").save(path)


def test_a_float_tiff_is_read_as_values_in_0_1_everywhere(processor, tmp_path):
    values = np.linspace(0, 1, 6 * 9, dtype=np.float32).reshape(6, 9)
    _float_tiff(tmp_path / "float.tif", values)
    with Image.open(tmp_path / "float.tif") as opened:
        assert opened.mode == "F"
        unit = pil_to_unit_array(opened, "float.tif")
    assert unit.shape == (6, 9, 3) and unit.dtype == np.float32
    np.testing.assert_allclose(unit, np.repeat(values[..., None], 3, axis=2))
    pixels = processor.process_image(tmp_path / "float.tif", "float.tif")
    np.testing.assert_allclose(pixels, np.moveaxis(unit, -1, 0))


@pytest.mark.parametrize("bad", [2.0, -0.5, float("nan"), 255.0])
def test_a_float_tiff_outside_0_1_is_refused_naming_the_file(processor, tmp_path, bad):
    values = np.full((6, 9), 0.5, np.float32)
    values[2, 3] = bad
    _float_tiff(tmp_path / "scan.tif", values)
    with pytest.raises(ValueError, match=r"scan\.tif"):
        processor(images=tmp_path / "scan.tif")
    with Image.open(tmp_path / "scan.tif") as opened, pytest.raises(ValueError, match=r"scan\.tif"):
        pil_to_unit_array(opened, "scan.tif")


def _modes() -> dict[str, Image.Image]:
    rgb = Image.fromarray(_ramp(5, 7))
    sixteen = Image.fromarray(np.arange(35, dtype=np.uint16).reshape(5, 7) * 1000)
    return {
        "RGB": rgb,
        "L": rgb.convert("L"),
        "RGBA": rgb.convert("RGBA"),
        "P": rgb.convert("P"),
        "1": rgb.convert("1"),
        "LA": rgb.convert("LA"),
        "CMYK": rgb.convert("CMYK"),
        "I;16": sixteen,
        "I": Image.fromarray(np.asarray(sixteen).astype(np.int32)),
    }


@pytest.mark.parametrize("mode", list(_modes()))
def test_pil_to_unit_array_is_the_processors_reading_rule(processor, mode):
    image = _modes()[mode]
    unit = pil_to_unit_array(image, mode)
    assert unit.shape == (5, 7, 3) and unit.dtype == np.float32 and 0 <= unit.min() and unit.max() <= 1
    np.testing.assert_array_equal(np.moveaxis(unit, -1, 0), processor.process_image(image, mode))
    if mode == "I;16":
        np.testing.assert_allclose(unit[..., 0], np.asarray(image) / 65535, rtol=1e-6)


# Item 15: one pixel limit, checked from the file's header before decoding; PIL's bomb check as the same error.


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG that claims `width` x `height` grey pixels but holds one row of data: reading its size costs nothing,
    decoding it would fail (or take the memory of the whole image)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = zlib.compress(b"\x00" + b"\x00" * min(width, 1000))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(1_000_000, 60), (12_000, 12_000), (8_000, 8_000)])
def test_images_above_the_pixel_limit_are_refused_before_decoding(processor, tmp_path, width, height):
    path = tmp_path / "huge.png"
    _png_header_only(path, width, height)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even PIL's DecompressionBombWarning gets out
        with pytest.raises(ValueError, match=rf"huge\.png.*{width}x{height}.*max_image_pixels"):
            processor(images=str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the caller's own Image.open may warn
        opened = Image.open(path)
    with opened, pytest.raises(ValueError, match=rf"{width}x{height}.*max_image_pixels"):
        processor(images=opened)


def test_a_long_thin_image_under_the_limit_is_read_in_every_mode(tmp_path):
    Image.fromarray(np.full((1, 200_000, 3), 90, np.uint8)).save(tmp_path / "line.png")
    for mode in ({}, {"resize_mode": "letterbox"}):
        pixels = CLIPADAImageProcessor(size=32, **mode)(images=tmp_path / "line.png")["pixel_values"]
        assert pixels.shape == (1, 3, 32, 32) and torch.isfinite(pixels).all()
    with pytest.raises(ValueError, match=r"line\.png.*enlarged.*tile_size"):
        CLIPADAImageProcessor(size=32, tile_size=32)(images=tmp_path / "line.png")


def test_pils_own_bomb_limit_becomes_the_same_named_error(tmp_path):
    path = tmp_path / "bomb.png"
    _png_header_only(path, 20_000, 20_000)  # 400 Mpx: above twice PIL's MAX_IMAGE_PIXELS, Image.open itself refuses
    generous = CLIPADAImageProcessor(size=32, max_image_pixels=10**9)
    with pytest.raises(ValueError, match=r"bomb\.png.*too large"):
        generous(images=str(path))


def test_the_pixel_limit_is_a_setting_saved_with_the_processor(tmp_path):
    strict = CLIPADAImageProcessor(size=32, max_image_pixels=100)
    assert CLIPADAImageProcessor(size=32).max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS == 50_000_000
    with pytest.raises(ValueError, match=r"images\[0\].*11x10.*max_image_pixels"):
        strict(images=np.zeros((10, 11, 3), np.uint8))
    assert strict(images=np.zeros((10, 10, 3), np.uint8))["pixel_values"].shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="max_image_pixels"):
        CLIPADAImageProcessor(size=32)(images=np.zeros((10, 11), np.uint8), max_image_pixels=100)
    strict.save_pretrained(tmp_path)
    assert CLIPADAImageProcessor.from_pretrained(tmp_path).max_image_pixels == 100


def test_tiles_are_bounded_per_image(tmp_path):
    with pytest.raises(ValueError, match=r"tiles.*tile_size"):
        tile_layout((20_000, 20_000), (224, 224), tile_size=16, tile_overlap=0.5)
    with pytest.raises(ValueError, match=r"enlarged.*tile_size"):
        tile_layout((2, 3_000), (224, 224), tile_size=4096, tile_overlap=0.0)
    processor = CLIPADAImageProcessor(size=224, tile_size=16, tile_overlap=0.5)
    with pytest.raises(ValueError, match=r"600x600.*tiles"):
        processor(images=np.zeros((600, 600, 3), np.uint8))


# Item 17: processor settings with bounds, each error naming its field, at construction and from a saved config.

BAD_SETTINGS = [
    ({"tile_size": 1}, "tile_size"),
    ({"tile_size": 100_000}, "tile_size"),
    ({"tile_size": 2.5}, "tile_size"),
    ({"tile_overlap": 0.999}, "tile_overlap"),
    ({"tile_overlap": float("nan")}, "tile_overlap"),
    ({"size": 20_000}, "size"),
    ({"size": 100_000}, "size"),
    ({"size": {"height": 224, "width": 100_000}}, "size"),
    ({"image_std": [float("nan"), 0.5, 0.5]}, "image_std"),
    ({"image_std": float("nan")}, "image_std"),
    ({"image_std": 0}, "image_std"),
    ({"image_std": [-0.2, 0.2, 0.2]}, "image_std"),
    ({"image_std": [float("inf"), 0.2, 0.2]}, "image_std"),
    ({"image_std": ["a", "b", "c"]}, "image_std"),
    ({"image_mean": [0.5, 0.5]}, "image_mean"),
    ({"image_mean": [0.5, 0.5, 0.5, 0.5]}, "image_mean"),
    ({"image_mean": np.array([0.5, 0.5])}, "image_mean"),
    ({"image_mean": [float("nan"), 0.5, 0.5]}, "image_mean"),
    ({"image_mean": [[0.5, 0.5, 0.5]]}, "image_mean"),
    ({"max_image_pixels": 0}, "max_image_pixels"),
    ({"max_image_pixels": -5}, "max_image_pixels"),
    ({"max_image_pixels": "many"}, "max_image_pixels"),
]


@pytest.mark.parametrize("settings, field", BAD_SETTINGS, ids=[str(s) for s, _ in BAD_SETTINGS])
def test_bad_settings_name_their_field_at_construction(settings, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        CLIPADAImageProcessor(**settings)


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"size": {"height": 100_000, "width": 100_000}}, "size"),
        ({"tile_size": 1}, "tile_size"),
        ({"image_std": [float("nan")] * 3}, "image_std"),
        ({"image_mean": [0.5, 0.5]}, "image_mean"),
        ({"tile_overlap": 0.999}, "tile_overlap"),
    ],
)
def test_bad_settings_in_a_saved_config_are_refused_at_load(tmp_path, settings, field):
    CLIPADAImageProcessor(size=32).save_pretrained(tmp_path)
    config_path = tmp_path / "preprocessor_config.json"
    config = {**json.loads(config_path.read_text()), **settings}
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"`{field}`"):
        CLIPADAImageProcessor.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"`{field}`"):
        AutoImageProcessor.from_pretrained(tmp_path, trust_remote_code=True)


@pytest.mark.parametrize("top_k", [0, -3, float("nan"), 2.5])
def test_a_bad_image_score_top_k_is_named(top_k):
    processor = CLIPADAImageProcessor(size=32, tile_size=32)
    inputs = processor(images=np.zeros((40, 40, 3), np.uint8))
    outputs = {"anomaly_map": torch.zeros(inputs["pixel_values"].shape[0], 32, 32)}
    with pytest.raises(ValueError, match="image_score_top_k"):
        processor.post_process_anomaly_detection(
            outputs, image_layouts=inputs["image_layouts"], image_score_top_k=top_k
        )


def test_sane_settings_at_the_bounds_are_accepted():
    CLIPADAImageProcessor(size=4096, tile_size=16, tile_overlap=0.75)
    CLIPADAImageProcessor(size=32, tile_size=4096, tile_overlap=0.0, image_std=0.5, image_mean=0.5)


def test_model_inputs_name_the_image_cut_into_too_many_tiles():
    processor = CLIPADAImageProcessor(size=224, tile_size=16, tile_overlap=0.5)
    pixels = processor.process_image(np.zeros((600, 600, 3), np.uint8), "line3/part.png")
    with pytest.raises(ValueError, match=r"line3/part\.png: .*600x600.*tiles"):
        processor.model_inputs([pixels], names=["line3/part.png"])


def test_an_exif_rotated_thin_jpeg_is_read_upright(processor, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: 3 pixels high on disk, 3 pixels wide upright
    Image.fromarray(_ramp(3, 120)).save(tmp_path / "thin.jpg", exif=exif, quality=95)
    assert processor.process_image(tmp_path / "thin.jpg", "thin").shape == (3, 120, 3)
