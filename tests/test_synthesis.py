"""Tests of the DRAEM-style synthetic anomaly generator (`training/synthesis/`)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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
