"""Tests of the DRAEM-style synthetic anomaly generator (`training/synthesis/`)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from training.synthesis import (
    AUGMENTATIONS,
    SyntheticAnomalyGenerator,
    augment_sources,
    load_texture_bank,
    perlin_masks,
    perlin_noise_2d,
    procedural_textures,
    rotate_images,
    shift_images,
)
from training.synthesis.augmentations import (
    augment_autocontrast,
    augment_brightness,
    augment_equalize,
    augment_gamma,
    augment_hue_saturation,
    augment_invert,
    augment_posterize,
    augment_rotation,
    augment_sharpness,
    augment_solarize,
)


@pytest.fixture(autouse=True)
def single_thread():
    """These tensors are small: one thread is fastest, and avoids OpenMP stalls when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_images(batch: int = 8, height: int = 64, width: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth random colour images in [0, 1], shape (B, 3, H, W)."""
    lattice = torch.rand(batch, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(lattice, size=(height, width), mode="bilinear", align_corners=False)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def has_anomaly(masks: torch.Tensor) -> torch.Tensor:
    """(B,) bool: whether each (B, 1, H, W) mask is non-empty."""
    return masks.flatten(1).amax(dim=1) > 0


def draem_perlin_reference(shape: tuple[int, int], res: tuple[int, int], angles: np.ndarray) -> np.ndarray:
    """DRAEM's `rand_perlin_2d_np` (perlin.py), with the gradient angles passed in instead of drawn."""
    delta = (res[0] / shape[0], res[1] / shape[1])
    d = (shape[0] // res[0], shape[1] // res[1])
    grid = np.mgrid[0 : res[0] : delta[0], 0 : res[1] : delta[1]].transpose(1, 2, 0) % 1
    gradients = np.stack((np.cos(angles), np.sin(angles)), axis=-1)

    def tile_grads(rows, cols):
        return np.repeat(np.repeat(gradients[rows[0] : rows[1], cols[0] : cols[1]], d[0], axis=0), d[1], axis=1)

    def dot(grad, shift):
        offsets = np.stack((grid[..., 0] + shift[0], grid[..., 1] + shift[1]), axis=-1)
        return (offsets * grad).sum(axis=-1)

    n00 = dot(tile_grads([0, -1], [0, -1]), [0, 0])
    n10 = dot(tile_grads([1, None], [0, -1]), [-1, 0])
    n01 = dot(tile_grads([0, -1], [1, None]), [0, -1])
    n11 = dot(tile_grads([1, None], [1, None]), [-1, -1])
    t = 6 * grid**5 - 15 * grid**4 + 10 * grid**3
    lerp = lambda a, b, w: a + w * (b - a)  # noqa: E731
    return math.sqrt(2) * lerp(lerp(n00, n10, t[..., 0]), lerp(n01, n11, t[..., 0]), t[..., 1])


# ----------------------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_shapes_dtypes_device_and_binary_masks(dtype):
    images = make_images().to(dtype)
    augmented, masks = SyntheticAnomalyGenerator()(images, seeded(0))
    assert augmented.shape == images.shape and masks.shape == (8, 1, 64, 64)
    assert augmented.dtype == dtype and masks.dtype == dtype
    assert augmented.device == images.device and masks.device == images.device
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert augmented.min() >= 0 and augmented.max() <= 1


def test_normal_samples_and_pixels_outside_the_mask_are_bit_exact():
    images = make_images(batch=16)
    augmented, masks = SyntheticAnomalyGenerator()(images, seeded(1))
    anomalous = has_anomaly(masks)
    assert 0 < anomalous.sum() < 16
    assert torch.equal(augmented[~anomalous], images[~anomalous])
    outside = masks.expand_as(images) == 0
    assert torch.equal(augmented[outside], images[outside])
    inside = masks.expand_as(images) == 1
    assert (augmented[inside] != images[inside]).float().mean() > 0.9  # the mask marks what changed


def test_blend_formula_with_a_solid_texture(tmp_path):
    Image.new("RGB", (32, 32), (255, 0, 128)).save(tmp_path / "solid.png")
    synthesizer = SyntheticAnomalyGenerator(
        tmp_path, image_size=32, anomaly_ratio=1.0, beta_range=(0.25, 0.25), num_augmentations=0,
        perlin_scale_range=(3, 5),
    )  # fmt: skip
    images = make_images(batch=4)
    augmented, masks = synthesizer(images, seeded(2))
    assert has_anomaly(masks).all()
    colour = torch.tensor([1.0, 0.0, 128 / 255])[None, :, None, None]
    expected = 0.75 * colour + 0.25 * images
    inside = masks.expand_as(images) == 1
    torch.testing.assert_close(augmented[inside], expected.expand_as(images)[inside], atol=1e-6, rtol=0)


def test_anomaly_ratio_zero_and_one():
    images = make_images(batch=16)
    augmented, masks = SyntheticAnomalyGenerator(anomaly_ratio=0.0)(images, seeded(3))
    assert torch.equal(augmented, images) and not masks.any()
    _, masks = SyntheticAnomalyGenerator(anomaly_ratio=1.0, perlin_scale_range=(2, 5))(images, seeded(3))
    assert has_anomaly(masks).all()


def test_about_half_of_the_samples_are_normal():
    synthesizer = SyntheticAnomalyGenerator(num_augmentations=1)
    generator = seeded(4)
    anomalous = sum(
        int(has_anomaly(synthesizer(make_images(40, 32, 32, seed=i), generator)[1]).sum()) for i in range(10)
    )
    # binomial(400, 0.5): mean 200, sd 10; 4 sd either side
    assert 160 <= anomalous <= 240


def test_batch_of_one_and_non_square_images():
    images = make_images(batch=1, height=48, width=80)
    augmented, masks = SyntheticAnomalyGenerator(anomaly_ratio=1.0, perlin_scale_range=(3, 5))(images, seeded(5))
    assert augmented.shape == (1, 3, 48, 80) and masks.shape == (1, 1, 48, 80)
    assert has_anomaly(masks).all()


def test_rejects_bad_images_and_arguments():
    with pytest.raises(ValueError, match="images"):
        SyntheticAnomalyGenerator()(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="images"):
        SyntheticAnomalyGenerator()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    for name, value in [
        ("anomaly_ratio", 1.5),
        ("beta_range", (0.5, 0.2)),
        ("perlin_scale_range", (-1, 3)),
        ("threshold", -0.1),
        ("num_augmentations", 11),
        ("max_mask_attempts", 0),
        ("texture_from_batch_ratio", 2.0),
    ]:
        with pytest.raises(ValueError, match=name):
            SyntheticAnomalyGenerator(**{name: value})


# ----------------------------------------------------------------------------------------------- randomness


def test_same_seed_same_batch_different_seed_different_batch():
    images = make_images(batch=16)
    synthesizer = SyntheticAnomalyGenerator()
    first = synthesizer(images, seeded(7))
    second = synthesizer(images, seeded(7))
    other = synthesizer(images, seeded(8))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[1], other[1])


def test_seed_argument_and_global_rng_untouched():
    images = make_images(batch=8)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = SyntheticAnomalyGenerator(seed=11)(images)
    second = SyntheticAnomalyGenerator(seed=11)(images)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(torch.get_rng_state(), state)


def test_consecutive_calls_draw_fresh_anomalies():
    images = make_images(batch=8)
    synthesizer = SyntheticAnomalyGenerator(seed=0)
    assert not torch.equal(synthesizer(images)[1], synthesizer(images)[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("generator_device", ["cpu", "cuda"])
def test_cuda_images_with_cpu_or_cuda_generator(generator_device):
    images = make_images(batch=8).cuda()
    synthesizer = SyntheticAnomalyGenerator()
    augmented, masks = synthesizer(images, torch.Generator(generator_device).manual_seed(0))
    again = synthesizer(images, torch.Generator(generator_device).manual_seed(0))
    assert augmented.is_cuda and masks.is_cuda
    assert torch.equal(augmented, again[0]) and torch.equal(masks, again[1])
    outside = masks.expand_as(images) == 0
    assert torch.equal(augmented[outside], images[outside])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_and_cpu_agree_for_the_same_cpu_generator():
    images = make_images(batch=16)
    synthesizer = SyntheticAnomalyGenerator()
    cpu_augmented, cpu_masks = synthesizer(images, seeded(17))
    cuda_augmented, cuda_masks = synthesizer(images.cuda(), seeded(17))
    # the same random draws; only floating-point rounding differs (a few pixels at mask edges at most)
    assert (cuda_masks.cpu() != cpu_masks).float().mean() < 1e-3
    agree = (cuda_masks.cpu() == cpu_masks).expand_as(images)
    torch.testing.assert_close(cuda_augmented.cpu()[agree], cpu_augmented[agree], atol=2e-3, rtol=0)


# ----------------------------------------------------------------------------------------------- Perlin noise


def test_perlin_noise_matches_draem_reference():
    scales = torch.tensor([[4, 8], [2, 2], [1, 16]])
    noise = perlin_noise_2d(3, 64, 64, scales, seeded(9))
    # the function draws its gradient angles as 2*pi*U(0,1) of shape (B, max_y + 1, max_x + 1)
    angles = (2 * math.pi * torch.rand(3, 5, 17, generator=seeded(9))).double().numpy()
    for b, (rows, cols) in enumerate(scales.tolist()):
        reference = draem_perlin_reference((64, 64), (rows, cols), angles[b, : rows + 1, : cols + 1])
        np.testing.assert_allclose(noise[b].double().numpy(), reference, atol=1e-5)


def test_perlin_frequency_is_per_sample_and_scale_one_is_smooth():
    noise = perlin_noise_2d(2, 224, 224, torch.tensor([[1, 1], [32, 32]]), seeded(10))
    step = (noise[:, 1:, :] - noise[:, :-1, :]).abs().amax(dim=(1, 2))
    assert step[0] < 0.02 < step[1]  # one cell over 224 px changes slowly; 32 cells change fast
    assert noise.abs().max() <= math.sqrt(2)


def test_perlin_works_for_sizes_not_divisible_by_the_scale():
    noise = perlin_noise_2d(2, 50, 70, torch.tensor([8, 32]), seeded(11))
    assert noise.shape == (2, 50, 70) and torch.isfinite(noise).all()


def test_perlin_mask_scale_range_is_respected():
    def boundary(scale_range):
        masks = perlin_masks(16, 128, 128, seeded(12), torch.device("cpu"), scale_range, threshold=0.3).float()
        return (masks[..., 1:, :] != masks[..., :-1, :]).float().sum() / masks.sum().clamp_min(1)

    # boundary length per masked pixel: small blobs (k = 5) have far more edge than smooth ones (k = 0)
    assert boundary((0, 0)) * 4 < boundary((5, 5))


def test_rotation_is_rigid_on_non_square_images():
    height, width = 40, 80
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    blob = torch.exp(-((ys - height / 2) ** 2 + (xs - width / 2 - 12) ** 2) / 4.0)[None, None]
    rotated = rotate_images(blob, torch.tensor([90.0]))[0, 0]
    weight = rotated / rotated.sum()
    centre_y, centre_x = float((weight * ys).sum()) - height / 2, float((weight * xs).sum()) - width / 2
    assert abs(centre_x) < 0.5 and abs(abs(centre_y) - 12) < 0.5  # 12 px right of centre -> 12 px above/below
    torch.testing.assert_close(rotate_images(blob, torch.tensor([0.0])), blob, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------- sources


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_each_augmentation_keeps_shape_and_range(name):
    images = make_images(batch=4, height=32, width=48)
    images[0] = 0.0  # constant and extreme images too
    images[1] = 1.0
    for uniforms in (torch.rand(4, 3, generator=seeded(13)), torch.zeros(4, 3), torch.full((4, 3), 0.9999)):
        out = AUGMENTATIONS[name](images, uniforms)
        assert out.shape == images.shape and torch.isfinite(out).all()
        assert out.min() >= 0 and out.max() <= 1 + 1e-6
    out = AUGMENTATIONS[name](images[2:], torch.rand(2, 3, generator=seeded(13)))
    if name not in ("brightness", "sharpness"):  # these two may be close to the identity
        assert not torch.allclose(out, images[2:], atol=1e-3)


def uint8_images(batch: int = 4, height: int = 24, width: int = 32) -> np.ndarray:
    """uint8 images (B, H, W, 3) with varied histograms: full-range noise, a narrow band, 4 levels, a gradient."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    images[1] = rng.integers(60, 90, (height, width, 3))
    images[2] = images[2] // 64 * 64
    images[3] = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    images[3, :, :, 2] = 77  # a constant channel
    return images


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).contiguous()


def to_grey_levels(images: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [0, 1] -> float64 (B, H, W, 3) in [0, 255], unrounded."""
    return images.permute(0, 2, 3, 1).double().numpy() * 255


def pil_reference(images: np.ndarray, operation) -> np.ndarray:
    """Applies ``operation`` (PIL image, sample index) -> PIL image to every uint8 image (B, H, W, 3)."""
    return np.stack([np.asarray(operation(Image.fromarray(image), i)) for i, image in enumerate(images)])


# PIL works on uint8 and rounds its intermediate images; each tolerance below (in grey levels) is the largest
# rounding PIL can add: ImageEnhance blends truncate (< 1); autocontrast truncates its lookup table (< 1);
# sharpness and colour also round their degenerate image to uint8 first (0.5, times |1 - factor| <= 1).


def test_brightness_matches_pil_and_its_formula():
    images = uint8_images()
    u = torch.rand(4, 3, generator=seeded(20))
    out = augment_brightness(to_tensor(images), u)
    multiply, add = 0.8 + 0.4 * u[:, 0].double(), (-30 + 60 * u[:, 1].double()) / 255
    expected = (to_tensor(images).double() * multiply[:, None, None, None] + add[:, None, None, None]).clamp(0, 1)
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=0)
    u[:, 1] = 0.5  # no offset: PIL's Brightness is the multiplication alone
    out = to_grey_levels(augment_brightness(to_tensor(images), u))
    factors = (0.8 + 0.4 * u[:, 0].double()).tolist()
    reference = pil_reference(images, lambda image, i: ImageEnhance.Brightness(image).enhance(factors[i]))
    assert np.abs(out - reference).max() < 1


def test_sharpness_matches_pil_on_an_edge_padded_image():
    images = uint8_images()
    u = torch.rand(4, 3, generator=seeded(21))
    out = to_grey_levels(augment_sharpness(to_tensor(images), u))
    # PIL leaves the 1-pixel border unfiltered; ours smooths it with replicated edges, as PIL does on a padded copy
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    factors = (2 * u[:, 0].double()).tolist()
    reference = pil_reference(padded, lambda image, i: ImageEnhance.Sharpness(image).enhance(factors[i]))
    assert np.abs(out - reference[:, 1:-1, 1:-1]).max() <= 1.5


def test_saturation_matches_pil_color_and_hue_rotates_in_yiq():
    images = uint8_images()
    u = torch.rand(4, 3, generator=seeded(22))
    u[:, 0] = 0.5  # hue angle 0: saturation alone is PIL's Color enhancement (blend with the ITU-R 601 luma)
    out = to_grey_levels(augment_hue_saturation(to_tensor(images), u))
    factors = (0.5 + u[:, 1].double()).tolist()
    reference = pil_reference(images, lambda image, i: ImageEnhance.Color(image).enhance(factors[i]))
    assert np.abs(out - reference).max() <= 1.5

    u = torch.rand(4, 3, generator=seeded(23))
    out = augment_hue_saturation(to_tensor(images), u).double().numpy()
    rgb_to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    angles = (-50 + 100 * u[:, 0].double().numpy()) * 2 * math.pi / 255
    saturations = 0.5 + u[:, 1].double().numpy()
    for i, image in enumerate(to_tensor(images).double().numpy()):
        y, in_phase, quadrature = np.einsum("ij,jhw->ihw", rgb_to_yiq, image)
        cos, sin = math.cos(angles[i]) * saturations[i], math.sin(angles[i]) * saturations[i]
        rotated = np.stack([y, cos * in_phase - sin * quadrature, sin * in_phase + cos * quadrature])
        expected = np.clip(np.einsum("ij,jhw->ihw", np.linalg.inv(rgb_to_yiq), rotated), 0, 1)
        np.testing.assert_allclose(out[i], expected, atol=1e-6)


def test_gamma_matches_its_formula_per_channel():
    images = to_tensor(uint8_images())
    u = torch.rand(4, 3, generator=seeded(24))
    gamma = torch.exp(math.log(0.5) + math.log(4.0) * u.double())  # log-uniform in [0.5, 2]
    expected = images.double() ** gamma[:, :, None, None]
    torch.testing.assert_close(augment_gamma(images, u).double(), expected, atol=1e-6, rtol=0)


def test_solarize_posterize_invert_equalize_match_pil_exactly():
    images = uint8_images()
    # thresholds half-way between grey levels, so float and integer comparisons agree: 32.5 + j -> PIL's 33 + j
    steps = torch.tensor([0, 10, 40, 95])
    u = torch.zeros(4, 3)
    u[:, 0] = (steps + 0.5) / 96
    out = to_grey_levels(augment_solarize(to_tensor(images), u))
    reference = pil_reference(images, lambda image, i: ImageOps.solarize(image, 33 + int(steps[i])))
    assert np.abs(out - reference).max() < 1e-3
    for bits in range(1, 8):
        out = to_grey_levels(augment_posterize(to_tensor(images), torch.full((4, 3), (bits - 0.5) / 7)))
        reference = pil_reference(images, lambda image, i, bits=bits: ImageOps.posterize(image, bits))
        assert np.abs(out - reference).max() < 1e-3, bits
    out = to_grey_levels(augment_invert(to_tensor(images), torch.rand(4, 3)))
    assert np.abs(out - pil_reference(images, lambda image, i: ImageOps.invert(image))).max() < 1e-3
    out = to_grey_levels(augment_equalize(to_tensor(images), torch.rand(4, 3)))
    assert np.abs(out - pil_reference(images, lambda image, i: ImageOps.equalize(image))).max() < 1e-3


def test_autocontrast_matches_pil():
    images = uint8_images()
    out = to_grey_levels(augment_autocontrast(to_tensor(images), torch.rand(4, 3)))
    reference = pil_reference(images, lambda image, i: ImageOps.autocontrast(image))
    assert 0 <= (out - reference).min() and (out - reference).max() < 1  # PIL truncates the exact stretch


def test_equalize_accepts_non_contiguous_images():
    images = torch.rand(2, 16, 16, 3, generator=seeded(25)).permute(0, 3, 1, 2)
    torch.testing.assert_close(
        augment_equalize(images, torch.rand(2, 3)), augment_equalize(images.contiguous(), torch.rand(2, 3))
    )


def test_rotation_matches_pil():
    images = uint8_images(height=24, width=24)
    for angle, transpose in [(90, Image.Transpose.ROTATE_90), (-90, Image.Transpose.ROTATE_270)]:
        out = to_grey_levels(rotate_images(to_tensor(images), torch.full((4,), float(angle)), "reflection"))
        assert np.abs(out - pil_reference(images, lambda image, i, op=transpose: image.transpose(op))).max() < 1e-2, (
            angle
        )
    u = torch.full((4, 3), 75 / 90)  # augment_rotation's angle is U(-45, 45): 75 / 90 -> 30 degrees
    out = to_grey_levels(augment_rotation(to_tensor(images), u))
    reference = pil_reference(images, lambda image, i: image.rotate(30, Image.Resampling.BILINEAR))
    ys, xs = np.mgrid[:24, :24]
    inside = (ys - 11.5) ** 2 + (xs - 11.5) ** 2 < 10**2  # PIL fills the corners black, ours reflects
    assert np.abs(out - reference)[:, inside].max() < 1.5  # PIL's bilinear output is rounded to uint8


def test_augment_sources_range_and_determinism():
    sources = make_images(batch=6)
    first = augment_sources(sources, 3, seeded(14))
    assert first.shape == sources.shape and first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, augment_sources(sources, 3, seeded(14)))
    assert torch.equal(augment_sources(sources, 0, seeded(14)), sources)


def test_procedural_textures_and_shift():
    textures = procedural_textures(5, 40, 56, seeded(15), torch.device("cpu"))
    assert textures.shape == (5, 3, 40, 56) and textures.min() >= 0 and textures.max() <= 1
    assert textures.flatten(1).std(dim=1).min() > 0.05
    images = make_images(batch=2, height=8, width=8)
    shifted = shift_images(images, torch.tensor([[1, 2], [0, -3]]))
    assert torch.equal(shifted[0], images[0].roll((1, 2), dims=(1, 2)))
    assert torch.equal(shifted[1], images[1].roll((0, -3), dims=(1, 2)))


def write_texture_folder(root: Path) -> Path:
    (root / "banded").mkdir(parents=True)
    (root / "dotted" / "deeper").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "banded" / "a.png")
    Image.new("L", (30, 40), 90).save(root / "dotted" / "b.JPG", format="JPEG")
    Image.new("RGBA", (20, 20), (0, 0, 255, 128)).save(root / "dotted" / "deeper" / "c.jpeg", format="PNG")
    (root / "dotted" / "broken.jpg").write_bytes(b"not an image at all")
    (root / "README.txt").write_text("texture credits")
    return root


def test_texture_dir_loads_images_skips_corrupt_files_and_ignores_others(tmp_path):
    folder = write_texture_folder(tmp_path / "textures")
    with pytest.warns(UserWarning, match="broken.jpg"):
        synthesizer = SyntheticAnomalyGenerator(folder, image_size=32, anomaly_ratio=1.0, perlin_scale_range=(3, 5))
    assert synthesizer.textures.shape == (3, 3, 32, 32) and synthesizer.textures.dtype == torch.uint8
    images = make_images(batch=4, height=48, width=40)  # textures are resized to the batch's size
    augmented, masks = synthesizer(images, seeded(16))
    assert augmented.shape == images.shape and has_anomaly(masks).all()
    outside = masks.expand_as(images) == 0
    assert torch.equal(augmented[outside], images[outside])


def test_max_textures_keeps_a_fixed_subset(tmp_path):
    for i in range(6):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    first = load_texture_bank(tmp_path, image_size=8, max_textures=3)
    assert first.shape == (3, 3, 8, 8)
    assert torch.equal(first, load_texture_bank(tmp_path, image_size=8, max_textures=3))


def test_missing_or_empty_texture_dir_raises_with_the_folder_name(tmp_path):
    with pytest.raises(ValueError, match="no_such_folder"):
        SyntheticAnomalyGenerator(tmp_path / "no_such_folder")
    empty = tmp_path / "empty_textures"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing here")
    with pytest.raises(ValueError, match="empty_textures"):
        SyntheticAnomalyGenerator(empty)


def write_broken_png(path: Path) -> Path:
    """A PNG whose header is fine but whose IDAT length is wrong: PIL opens it and fails while decoding."""
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") - 4
    length = int.from_bytes(data[start : start + 4], "big")
    data[start : start + 4] = (length // 2).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


def test_texture_that_fails_while_decoding_is_skipped_with_a_warning(tmp_path):
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "good.png")
    write_broken_png(tmp_path / "broken.png")
    with pytest.warns(UserWarning, match="broken.png"):
        bank = load_texture_bank(tmp_path, image_size=8)
    assert bank.shape == (1, 3, 8, 8)


def test_folder_of_corrupt_images_raises_with_the_folder_name(tmp_path):
    folder = tmp_path / "corrupt_textures"
    folder.mkdir()
    write_broken_png(folder / "broken.png")
    (folder / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.warns(UserWarning) as warned, pytest.raises(ValueError, match="corrupt_textures"):
        load_texture_bank(folder)
    messages = " ".join(str(warning.message) for warning in warned)
    assert "broken.png" in messages and "junk.jpg" in messages  # each skipped file is named
