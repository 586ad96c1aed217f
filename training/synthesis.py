"""DRAEM-style synthetic anomalies (Perlin masks, textured sources, blending), batched in torch on any device.

Every training step turns a batch of normal images into a batch of images with pasted-in anomalies and the
binary masks that say exactly where (DRAEM, Zavrtanik et al., ICCV 2021):

1. Mask: 2D Perlin noise with ``2**k`` lattice cells per axis (``k`` uniform in ``perlin_scale_range``,
   drawn independently per axis and per sample), rotated by an angle uniform in ``[-max_rotation,
   max_rotation]`` degrees (``affine_grid`` + ``grid_sample``), thresholded at ``threshold``.
2. Source: an anomaly texture (a random image of ``texture_dir``, or the default source below), changed
   by ``num_augmentations`` random augmentations drawn without replacement from DRAEM's ten (gamma,
   brightness, sharpness, hue/saturation, solarize, posterize, invert, autocontrast, equalize, rotation),
   applied in that fixed order (DRAEM: in the drawn order) so each runs once per batch.
3. Blend: ``x' = x * (1 - m) + (1 - beta) * src * m + beta * x * m`` with ``beta ~ U(beta_range)``.

A sample is anomalous with probability ``anomaly_ratio``; the others come back bit-for-bit unchanged with
an all-zero mask. An anomalous sample whose thresholded noise is empty gets new noise (up to
``max_mask_attempts`` draws) and counts as normal if it stays empty, so a mask always describes exactly
the pixels that changed. All work is in ``[0, 1]`` pixel space, before CLIP normalisation.

Default anomaly source (``texture_dir=None``): half of the anomalous samples take another image of the
same batch (rolled by a random offset along the batch and circularly shifted in space), the other half a
procedural texture (multi-octave coloured value noise or soft/hard stripes); both then get the random
augmentations. Rationale: DRAEM used DTD, which is a separate ~600 MB download; the procedural textures
give the high-frequency, out-of-distribution patterns that DTD provides without any download, and other
normal images give realistic, in-domain "wrong content" (the pieces of other objects a unified
multi-category model must flag), so the default works offline and covers both kinds of defects. Point
``texture_dir`` at DTD (``dtd/images``) to reproduce the paper's recipe.

Randomness and devices: all randomness comes from the ``torch.Generator`` passed to the call (or from
the object's own generator, seeded by ``seed``); no global random state is used. Random numbers are only
drawn for small tensors (noise lattices, angles, per-sample parameters), on the generator's device, and
then moved to the images' device, where all pixel-sized work runs. So any generator works with any batch,
and the same seed on the same device gives exactly the same batch. Per-sample decisions stay on the CPU,
so a CUDA batch with a CPU generator (recommended) synchronises only once per mask draw (to see which
masks are empty); a CUDA generator adds a synchronisation per decision.

Example:
    ```python
    >>> import torch
    >>> from training.synthesis import SyntheticAnomalyGenerator
    >>> synthesizer = SyntheticAnomalyGenerator(image_size=224)
    >>> images = torch.rand(16, 3, 224, 224)
    >>> augmented, masks = synthesizer(images, generator=torch.Generator().manual_seed(0))
    >>> augmented.shape, masks.shape
    (torch.Size([16, 3, 224, 224]), torch.Size([16, 1, 224, 224]))
    ```
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Decisions (which samples, which augmentation, which source) are kept on the CPU, so that a CUDA batch
# needs no device-to-host synchronisation except the one that checks which masks came out empty.
_CPU = torch.device("cpu")

# --------------------------------------------------------------------------------------------------
# Random numbers: drawn on the generator's device, then moved to where the pixels are.
# --------------------------------------------------------------------------------------------------


def _generator_device(generator: torch.Generator | None) -> torch.device:
    """Where ``generator`` draws (torch's default generator, for ``None``, draws on the CPU)."""
    return generator.device if generator is not None else _CPU


def _to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Moves a small tensor; host-to-device copies don't wait for the device (a blocking one synchronises).

    Device-to-host copies stay blocking: their values must be ready when this returns.
    """
    return tensor.to(device, non_blocking=tensor.device.type == "cpu")


def _rand(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform ``[0, 1)`` float32 numbers of ``shape``, drawn on the generator's device, returned on ``device``."""
    values = torch.rand(tuple(shape), generator=generator, device=_generator_device(generator))
    return _to(values, device)


def _randint(
    low: int, high: int, shape: Sequence[int], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Integers uniform in ``[low, high)`` (int64), drawn on the generator's device, returned on ``device``."""
    values = torch.randint(low, high, tuple(shape), generator=generator, device=_generator_device(generator))
    return _to(values, device)


def _uniform(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Maps uniform ``[0, 1)`` numbers to ``[low, high)``."""
    return low + (high - low) * u


# --------------------------------------------------------------------------------------------------
# Perlin noise and masks
# --------------------------------------------------------------------------------------------------


def _fade(t: torch.Tensor) -> torch.Tensor:
    """Perlin's quintic fade curve ``6t^5 - 15t^4 + 10t^3``."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _lattice_weights(positions: torch.Tensor, lattice_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-axis Perlin interpolation matrices for pixel positions given in lattice units.

    Perlin noise is separable into per-axis factors: with ``fade`` weights ``w`` and offsets ``d`` from the
    two lattice lines around a pixel, ``noise(y, x) = sum_jk w_j(y) w_k(x) (g_y[j, k] d_j(y) + g_x[j, k] d_k(x))``.
    Since ``1 - fade(t) = fade(1 - t)``, the weight of line ``j`` is ``fade(max(0, 1 - |p - j|))``: the two
    lines around ``p`` get ``1 - fade(frac)`` and ``fade(frac)``, all others 0.

    Args:
        positions: Pixel positions in lattice units, shape (B, S), in ``[0, lattice_size - 1)``.
        lattice_size: Number of lattice lines L along this axis (cells + 1).

    Returns:
        ``weights`` (B, S, L) and ``offset_weights`` (B, S, L), the weights times the signed offset
        ``p - j`` of each pixel from each line.
    """
    offsets = positions[..., None] - torch.arange(lattice_size, device=positions.device, dtype=positions.dtype)
    weights = _fade((1.0 - offsets.abs()).clamp_min(0.0))
    return weights, weights * offsets


def perlin_noise_2d(
    batch: int,
    height: int,
    width: int,
    scales: torch.Tensor | Sequence[int] | Sequence[Sequence[int]],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Batched 2D gradient (Perlin) noise, each sample with its own lattice frequency.

    Follows DRAEM's ``rand_perlin_2d_np``: random unit gradients on a ``(scale_y + 1, scale_x + 1)``
    lattice, quintic fade, output multiplied by ``sqrt(2)`` so it lies in about ``[-1, 1]``. Pixel ``i``
    sits at lattice coordinate ``i * scale / size``, so any image size works (no divisibility needed).
    The noise is separable into per-axis interpolation matrices, so the whole batch is two batched
    matrix products (no per-pixel gathers); samples with fewer cells leave the extra lattice unused.

    Args:
        batch: Number of noise fields B.
        height: Field height H in pixels.
        width: Field width W in pixels.
        scales: Number of lattice cells along (height, width): an int tensor/sequence of shape (B, 2),
            or (2,) for the same frequency in every sample. DRAEM uses ``2**k`` with ``k`` in 0..5.
        generator: Source of the random gradient angles (drawn on its device).
        device: Device of the returned noise; defaults to the generator's device.

    Returns:
        Noise of shape (B, H, W), float32, on ``device``.
    """
    device = torch.device(device) if device is not None else _generator_device(generator)
    scales = torch.as_tensor(scales, dtype=torch.long).to("cpu").expand(batch, 2)
    if bool((scales < 1).any()):
        raise ValueError(f"scales must be >= 1 lattice cell per axis, got {scales.tolist()}")
    lattice_h, lattice_w = int(scales[:, 0].max()) + 1, int(scales[:, 1].max()) + 1

    # step 1: random unit gradients (g_y, g_x) on each sample's lattice
    angles = 2.0 * math.pi * _rand((batch, lattice_h, lattice_w), generator, device)
    gradients_y, gradients_x = torch.cos(angles), torch.sin(angles)

    # step 2: per-axis interpolation matrices; pixel i sits at i * scale / size in lattice units
    scales = _to(scales.float(), device)
    rows = torch.arange(height, device=device, dtype=torch.float32)[None, :] * (scales[:, :1] / height)
    cols = torch.arange(width, device=device, dtype=torch.float32)[None, :] * (scales[:, 1:] / width)
    row_weights, row_offsets = _lattice_weights(rows, lattice_h)  # (B, H, Ly)
    col_weights, col_offsets = _lattice_weights(cols, lattice_w)  # (B, W, Lx)

    # step 3: sum over the four corners of fade weight x (gradient . offset), as matrix products
    noise = row_offsets @ gradients_y @ col_weights.transpose(1, 2)
    noise = noise + row_weights @ gradients_x @ col_offsets.transpose(1, 2)
    return math.sqrt(2.0) * noise


def _rotation_grid(angles_deg: torch.Tensor, size: tuple[int, int, int, int], device: torch.device) -> torch.Tensor:
    """Sampling grid that rotates images of ``size`` (N, C, H, W) about their centre, in pixel space.

    ``affine_grid`` works in normalised coordinates where both axes span [-1, 1]; the aspect-ratio terms
    keep the rotation rigid (no shear) when H != W.

    Args:
        angles_deg: Rotation angles in degrees, shape (N,), on any device (the small affine matrices are
            built there, so CPU angles save kernel launches on an accelerator).
        size: Target size (N, C, H, W).
        device: Device of the grid.

    Returns:
        Grid of shape (N, H, W, 2) for ``grid_sample``.
    """
    height, width = size[2], size[3]
    radians = angles_deg.float() * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zeros = torch.zeros_like(cos)
    theta = torch.stack(
        [
            torch.stack([cos, -sin * (height / width), zeros], dim=-1),
            torch.stack([sin * (width / height), cos, zeros], dim=-1),
        ],
        dim=1,
    )
    return F.affine_grid(_to(theta, device), list(size), align_corners=False)


def rotate_images(images: torch.Tensor, angles_deg: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Rotates each image of a batch by its own angle (bilinear), keeping the size.

    Args:
        images: Float tensor of shape (N, C, H, W).
        angles_deg: Angles in degrees, shape (N,), on the images' device or the CPU.
        padding_mode: ``grid_sample`` padding for the uncovered corners ("zeros", "border", "reflection").

    Returns:
        Rotated images, shape (N, C, H, W).
    """
    grid = _rotation_grid(angles_deg, tuple(images.shape), images.device)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def perlin_masks(
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator | None,
    device: torch.device,
    scale_range: tuple[int, int] = (0, 5),
    max_rotation: float = 90.0,
    threshold: float = 0.5,
) -> torch.Tensor:
    """DRAEM masks: Perlin noise at ``2**k`` cells per axis, randomly rotated, thresholded.

    Args:
        batch: Number of masks N.
        height: Mask height H.
        width: Mask width W.
        generator: Source of randomness.
        device: Device of the returned masks.
        scale_range: Inclusive range of the exponent ``k``, drawn independently per axis and sample.
        max_rotation: Angles are uniform in ``[-max_rotation, max_rotation]`` degrees.
        threshold: A pixel is anomalous where the rotated noise is strictly above it.

    Returns:
        Boolean masks of shape (N, 1, H, W) (possibly empty for some samples).
    """
    exponents = _randint(scale_range[0], scale_range[1] + 1, (batch, 2), generator, _CPU)
    noise = perlin_noise_2d(batch, height, width, 2**exponents, generator, device)
    angles = _uniform(_rand((batch,), generator, _CPU), -max_rotation, max_rotation)
    noise = rotate_images(noise[:, None], angles, padding_mode="zeros")
    return noise > threshold


# --------------------------------------------------------------------------------------------------
# Source augmentations: each maps (N, 3, H, W) in [0, 1] and per-sample uniforms (N, K) to (N, 3, H, W).
# --------------------------------------------------------------------------------------------------


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    """Reshapes per-sample values (N,) or (N, C) to broadcast against (N, C, H, W)."""
    return values.reshape(values.shape[0], -1, 1, 1)


def augment_gamma(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per-channel gamma, log-uniform in [0.5, 2] (DRAEM: ``GammaContrast((0.5, 2.0), per_channel=True)``)."""
    gamma = torch.exp(_uniform(u[:, :3], math.log(0.5), math.log(2.0)))
    return images.pow(_per_sample(gamma))


def augment_brightness(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Multiply by U(0.8, 1.2) and add U(-30, 30) / 255 (DRAEM: ``MultiplyAndAddToBrightness``)."""
    multiply = _uniform(u[:, 0], 0.8, 1.2)
    add = _uniform(u[:, 1], -30.0 / 255.0, 30.0 / 255.0)
    return (images * _per_sample(multiply) + _per_sample(add)).clamp(0.0, 1.0)


def augment_sharpness(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """PIL-style sharpness: blend with a 3x3 smoothed copy, factor U(0, 2) (< 1 blurs, > 1 sharpens)."""
    # PIL's smoothing kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 = (9 * 3x3 mean + 4 * centre) / 13
    box = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel_size=3, stride=1)
    smooth = (9.0 * box + 4.0 * images) / 13.0
    factor = _uniform(u[:, 0], 0.0, 2.0)
    return torch.lerp(smooth, images, _per_sample(factor)).clamp(0.0, 1.0)


# YIQ colour space: hue is the angle in the (I, Q) plane, saturation its radius. A hue rotation by angle a
# with saturation factor r is, in RGB, LUMA + r cos(a) CHROMA + r sin(a) TURN (three constant 3x3 matrices).
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_HUE_BASIS = torch.stack(
    [
        _YIQ_TO_RGB @ torch.diag(torch.tensor([1.0, 0.0, 0.0])) @ _RGB_TO_YIQ,  # LUMA
        _YIQ_TO_RGB @ torch.diag(torch.tensor([0.0, 1.0, 1.0])) @ _RGB_TO_YIQ,  # CHROMA
        _YIQ_TO_RGB @ torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]) @ _RGB_TO_YIQ,  # TURN
    ]
)


def augment_hue_saturation(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Hue rotation by U(-50, 50) * 360 / 255 degrees and saturation x U(0.5, 1.5), via a per-sample YIQ matrix."""
    angle = _uniform(u[:, 0], -50.0, 50.0) * (2.0 * math.pi / 255.0)
    saturation = _uniform(u[:, 1], 0.5, 1.5)
    weights = torch.stack([torch.ones_like(angle), torch.cos(angle) * saturation, torch.sin(angle) * saturation], 1)
    matrix = torch.einsum("nk,kij->nij", weights, _to(_HUE_BASIS, images.device))  # (N, 3, 3)
    return torch.einsum("nij,njhw->nihw", matrix, images).clamp(0.0, 1.0)


def augment_solarize(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Invert pixels above a threshold U(32, 128) / 255 (DRAEM: ``Solarize(threshold=(32, 128))``)."""
    threshold = _per_sample(_uniform(u[:, 0], 32.0 / 255.0, 128.0 / 255.0))
    return torch.where(images >= threshold, 1.0 - images, images)


def augment_posterize(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Keep 1 to 7 bits per channel (uniform)."""
    bits = (u[:, 0] * 7).floor() + 1.0
    levels = _per_sample(torch.pow(2.0, bits))
    return torch.floor(images * 255.0 / (256.0 / levels)) * (256.0 / levels) / 255.0


def augment_invert(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``1 - x``."""
    return 1.0 - images


def augment_autocontrast(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Stretch every channel of every image to span [0, 1]."""
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    spread = high - low
    return torch.where(spread > 0, (images - low) / spread, images)  # a constant channel stays as it is


def augment_equalize(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram equalisation over 256 bins, batched with one ``bincount``."""
    n, c, h, w = images.shape
    levels = (images * 255.0).round().long().clamp(0, 255).view(n * c, h * w)
    offsets = torch.arange(n * c, device=images.device)[:, None] * 256
    histograms = torch.bincount((levels + offsets).view(-1), minlength=n * c * 256).view(n * c, 256)
    cdf = histograms.cumsum(dim=1).float()
    cdf_min = torch.where(histograms > 0, cdf, torch.full_like(cdf, float(h * w))).amin(dim=1, keepdim=True)
    lut = ((cdf - cdf_min) / (h * w - cdf_min).clamp_min(1.0)).clamp(0.0, 1.0)
    return torch.gather(lut, 1, levels).view(n, c, h, w)


def augment_rotation(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Rotate by U(-45, 45) degrees (DRAEM: ``Affine(rotate=(-45, 45))``), reflecting at the borders."""
    return rotate_images(images, _uniform(u[:, 0], -45.0, 45.0), padding_mode="reflection")


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gamma": augment_gamma,
    "brightness": augment_brightness,
    "sharpness": augment_sharpness,
    "hue_saturation": augment_hue_saturation,
    "solarize": augment_solarize,
    "posterize": augment_posterize,
    "invert": augment_invert,
    "autocontrast": augment_autocontrast,
    "equalize": augment_equalize,
    "rotation": augment_rotation,
}
"""DRAEM's ten source augmentations: each maps (N, 3, H, W) in [0, 1] and uniforms (N, 3) to (N, 3, H, W) in [0, 1]."""

_UNIFORMS_PER_AUGMENTATION = 3


def augment_sources(sources: torch.Tensor, num_augmentations: int, generator: torch.Generator | None) -> torch.Tensor:
    """Applies ``num_augmentations`` distinct random augmentations to every source.

    Each sample draws its own augmentations (DRAEM: 3 of its 10, without replacement); they are applied in
    the order of ``AUGMENTATIONS`` (DRAEM applies them in the drawn order), so each augmentation runs once
    per batch. On a CPU it runs on the samples that chose it (least arithmetic); on an accelerator it runs
    on the whole batch and the result is kept where chosen (fewest kernel launches, no index transfers).

    Args:
        sources: Anomaly sources, float tensor (N, 3, H, W) in [0, 1].
        num_augmentations: Augmentations per sample (at most ``len(AUGMENTATIONS)``).
        generator: Source of randomness.

    Returns:
        Augmented sources, float tensor (N, 3, H, W) clamped to [0, 1].
    """
    n, device = sources.shape[0], sources.device
    if n == 0 or num_augmentations == 0:
        return sources
    names = list(AUGMENTATIONS)
    # a random permutation per sample; its first num_augmentations entries are the sample's augmentations
    choices = _rand((n, len(names)), generator, _CPU).argsort(dim=1)[:, :num_augmentations]
    chosen = torch.zeros(n, len(names), dtype=torch.bool).scatter_(1, choices, True)  # (N, 10), on the CPU
    uniforms = _rand((n, len(names), _UNIFORMS_PER_AUGMENTATION), generator, device)
    chosen_on_device = _to(chosen, device)
    sources = sources.clone()  # updated in place below
    for index, name in enumerate(names):
        samples = chosen[:, index].nonzero().squeeze(1)
        if samples.numel() == 0:
            continue
        if device.type == "cpu":
            sources.index_copy_(0, samples, AUGMENTATIONS[name](sources[samples], uniforms[samples, index]))
        else:
            augmented = AUGMENTATIONS[name](sources, uniforms[:, index])
            sources = torch.where(_per_sample(chosen_on_device[:, index]), augmented, sources)
    return sources.clamp_(0.0, 1.0)  # bilinear rotation may overshoot 1 by a rounding error


# --------------------------------------------------------------------------------------------------
# Anomaly sources
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _bicubic_upsampling_matrix(size: int, cells: int, device: torch.device) -> torch.Tensor:
    """Matrix U (size, cells) such that ``U @ v`` is the bicubic upsampling of a length-``cells`` signal.

    Built by upsampling the identity along one axis with ``F.interpolate`` (bicubic, align_corners=False),
    so ``U_h @ lattice @ U_w.T`` equals ``F.interpolate(lattice, (H, W), mode="bicubic")``.
    """
    identity = torch.eye(cells, device=device)[None, None]
    return F.interpolate(identity, size=(size, cells), mode="bicubic", align_corners=False)[0, 0]


def fractal_noise_textures(
    batch: int, height: int, width: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Coloured multi-octave value noise: random lattices of 4 to 64 cells, bicubically upsampled and summed.

    The amplitude of octave ``o`` is ``persistence**o`` with persistence U(0.3, 0.9) per sample (smooth
    blotches to fine grain); each channel is then stretched to [0, 1]. The upsampling is separable, so all
    octaves are upsampled and summed by two matrix products.

    Args:
        batch: Number of textures N.
        height: Texture height H.
        width: Texture width W.
        generator: Source of randomness.
        device: Device of the returned textures.

    Returns:
        Float tensor (N, 3, H, W) in [0, 1].
    """
    octave_cells = (4, 8, 16, 32, 64)
    persistence = _uniform(_rand((batch, 1), generator, _CPU), 0.3, 0.9)
    amplitudes = persistence ** torch.arange(len(octave_cells))  # (N, octaves)
    row_amplitudes = amplitudes.repeat_interleave(torch.tensor(octave_cells), dim=1)  # (N, sum of cells)
    lattices = _rand((batch, 3, sum(cells * cells for cells in octave_cells)), generator, device)
    lattices = lattices.split([cells * cells for cells in octave_cells], dim=2)
    columns_upsampled = torch.cat(
        [
            lattice.view(batch, 3, cells, cells) @ _bicubic_upsampling_matrix(width, cells, device).T
            for cells, lattice in zip(octave_cells, lattices)
        ],
        dim=2,
    )  # (N, 3, sum of cells, W)
    columns_upsampled = columns_upsampled * _to(row_amplitudes, device)[:, None, :, None]
    rows_matrix = torch.cat([_bicubic_upsampling_matrix(height, cells, device) for cells in octave_cells], dim=1)
    texture = rows_matrix @ columns_upsampled  # (N, 3, H, W): the amplitude-weighted sum of all octaves
    return augment_autocontrast(texture, texture.new_empty(batch, 0))


def stripe_textures(
    batch: int, height: int, width: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Two-colour stripes: random direction, 2 to 24 periods per image, soft (sine) to hard edges.

    Args:
        batch: Number of textures N.
        height: Texture height H.
        width: Texture width W.
        generator: Source of randomness.
        device: Device of the returned textures.

    Returns:
        Float tensor (N, 3, H, W) in [0, 1].
    """
    u = _rand((batch, 10), generator, device)
    angle = u[:, 0] * math.pi
    periods = torch.exp(_uniform(u[:, 1], math.log(2.0), math.log(24.0)))
    phase, hardness = u[:, 2] * 2.0 * math.pi, torch.exp(_uniform(u[:, 3], 0.0, math.log(30.0)))
    colours = u[:, 4:10].view(batch, 2, 3)
    ys = torch.linspace(0.0, 1.0, height, device=device)[None, :, None]
    xs = torch.linspace(0.0, 1.0, width, device=device)[None, None, :]
    position = xs * torch.cos(angle)[:, None, None] + ys * torch.sin(angle)[:, None, None]
    wave = torch.sin(2.0 * math.pi * periods[:, None, None] * position + phase[:, None, None])
    weight = torch.sigmoid(hardness[:, None, None] * wave)[:, None]  # (N, 1, H, W)
    return torch.lerp(_per_sample(colours[:, 0]), _per_sample(colours[:, 1]), weight)


def procedural_textures(
    batch: int, height: int, width: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Default download-free textures: fractal value noise (3/4 of samples) or stripes (1/4).

    Args:
        batch: Number of textures N.
        height: Texture height H.
        width: Texture width W.
        generator: Source of randomness.
        device: Device of the returned textures.

    Returns:
        Float tensor (N, 3, H, W) in [0, 1].
    """
    if batch == 0:
        return torch.zeros(0, 3, height, width, device=device)
    use_stripes = _rand((batch,), generator, device) < 0.25
    noise = fractal_noise_textures(batch, height, width, generator, device)
    stripes = stripe_textures(batch, height, width, generator, device)
    return torch.where(_per_sample(use_stripes), stripes, noise)


def shift_images(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Circularly shifts every image by its own (rows, cols) offset (a batched ``torch.roll``).

    Args:
        images: Tensor (N, C, H, W).
        shifts: Integer offsets (N, 2) along (H, W).

    Returns:
        Shifted images (N, C, H, W).
    """
    n, c, h, w = images.shape
    rows = (torch.arange(h, device=images.device)[None, :] - shifts[:, :1]) % h
    cols = (torch.arange(w, device=images.device)[None, :] - shifts[:, 1:]) % w
    images = torch.gather(images, 2, rows[:, None, :, None].expand(n, c, h, w))
    return torch.gather(images, 3, cols[:, None, None, :].expand(n, c, h, w))


def load_texture_bank(
    texture_dir: str | Path, image_size: int = 224, max_textures: int | None = None, seed: int = 0
) -> torch.Tensor:
    """Loads every image under ``texture_dir`` (recursive) as one uint8 tensor.

    Files are matched by extension (case-insensitive: jpg, jpeg, png, bmp, tif, tiff, webp); other files
    and hidden files are ignored, unreadable images are skipped with a warning naming them. Each image is
    converted to RGB, centre-cropped to a square and resized to ``image_size``.

    Args:
        texture_dir: Folder tree of texture images (e.g. DTD's ``images/``).
        image_size: Side of the stored square textures.
        max_textures: Keep at most this many files (a random subset fixed by ``seed``), to bound memory:
            each texture takes ``3 * image_size**2`` bytes.
        seed: Seed of the subset choice.

    Returns:
        uint8 tensor of shape (N, 3, image_size, image_size) on the CPU.

    Raises:
        ValueError: If the folder does not exist or holds no readable image.
    """
    folder = Path(texture_dir)
    if not folder.is_dir():
        raise ValueError(f"texture_dir {str(folder)!r} does not exist or is not a folder")
    files = sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()
    )
    if max_textures is not None and len(files) > max_textures:
        keep = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:max_textures]
        files = [files[i] for i in sorted(keep.tolist())]
    textures = []
    for path in files:
        try:
            with Image.open(path) as image:
                image.draft("RGB", (image_size, image_size))  # JPEGs decode at a reduced scale, still >= size
                image = ImageOps.fit(image.convert("RGB"), (image_size, image_size), Image.Resampling.BILINEAR)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            warnings.warn(f"Skipping unreadable texture file {path}: {error}", stacklevel=2)
            continue
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        textures.append(pixels.view(image_size, image_size, 3))
    if not textures:
        extensions = ", ".join(IMAGE_EXTENSIONS)
        raise ValueError(f"texture_dir {str(folder)!r} contains no readable image (looked for {extensions})")
    return torch.stack(textures).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------------


class SyntheticAnomalyGenerator:
    """Turns a batch of normal images into DRAEM-style synthetic anomalies and their masks.

    Args:
        texture_dir: Folder tree of anomaly-source images (DTD in DRAEM). ``None`` uses the default
            download-free source: other images of the batch and procedural textures (see module docs).
        image_size: Side of the stored texture images (resized to the batch size when it differs).
        anomaly_ratio: Probability that a sample gets an anomaly.
        beta_range: Range of the blending weight ``beta`` of the original image inside the mask.
        perlin_scale_range: Inclusive range of the exponent ``k``; the noise has ``2**k`` cells per axis.
        threshold: Noise threshold of the mask.
        max_rotation: Masks are rotated by an angle uniform in ``[-max_rotation, max_rotation]`` degrees.
        num_augmentations: Random augmentations applied to every anomaly source (0 to 10).
        max_textures: At most this many texture files are loaded (a fixed random subset); ``None`` loads
            all. The bank is kept in memory (and once on each device used) as uint8: 1000 textures at
            224 px take 150 MB; loading decodes every file once, at construction (up to ~10 ms a file).
        texture_from_batch_ratio: Without ``texture_dir``, the share of sources taken from other images of
            the batch (the rest are procedural textures).
        max_mask_attempts: Noise draws for an anomalous sample before an empty mask makes it normal.
        seed: Seed of the generator used when a call passes none; ``None`` seeds it from
            ``torch.initial_seed()``, so ``transformers.set_seed`` makes it reproducible.

    Example:
        ```python
        >>> synthesizer = SyntheticAnomalyGenerator(texture_dir="dtd/images", image_size=224)
        >>> augmented, masks = synthesizer(pixels_01, generator=torch.Generator().manual_seed(0))
        ```
    """

    def __init__(
        self,
        texture_dir: str | Path | None = None,
        image_size: int = 224,
        anomaly_ratio: float = 0.5,
        beta_range: tuple[float, float] = (0.0, 0.8),
        perlin_scale_range: tuple[int, int] = (0, 5),
        threshold: float = 0.5,
        max_rotation: float = 90.0,
        num_augmentations: int = 3,
        max_textures: int | None = 1000,
        texture_from_batch_ratio: float = 0.5,
        max_mask_attempts: int = 3,
        seed: int | None = None,
    ) -> None:
        self._validate(anomaly_ratio, beta_range, perlin_scale_range, threshold, num_augmentations, max_mask_attempts)
        if not 0.0 <= texture_from_batch_ratio <= 1.0:
            raise ValueError(f"texture_from_batch_ratio must be in [0, 1], got {texture_from_batch_ratio}")
        self.texture_dir = Path(texture_dir) if texture_dir is not None else None
        self.image_size = image_size
        self.anomaly_ratio = anomaly_ratio
        self.beta_range = (float(beta_range[0]), float(beta_range[1]))
        self.perlin_scale_range = (int(perlin_scale_range[0]), int(perlin_scale_range[1]))
        self.threshold = threshold
        self.max_rotation = max_rotation
        self.num_augmentations = num_augmentations
        self.max_textures = max_textures
        self.texture_from_batch_ratio = texture_from_batch_ratio
        self.max_mask_attempts = max_mask_attempts
        self.generator = torch.Generator().manual_seed(seed if seed is not None else torch.initial_seed())
        self.textures = (
            load_texture_bank(self.texture_dir, image_size, max_textures) if self.texture_dir is not None else None
        )
        self._textures_on_device: dict[torch.device, torch.Tensor] = {}

    @staticmethod
    def _validate(
        anomaly_ratio: float,
        beta_range: tuple[float, float],
        perlin_scale_range: tuple[int, int],
        threshold: float,
        num_augmentations: int,
        max_mask_attempts: int,
    ) -> None:
        if not 0.0 <= anomaly_ratio <= 1.0:
            raise ValueError(f"anomaly_ratio must be in [0, 1], got {anomaly_ratio}")
        if not 0.0 <= beta_range[0] <= beta_range[1] <= 1.0:
            raise ValueError(f"beta_range must satisfy 0 <= low <= high <= 1, got {beta_range}")
        if not 0 <= perlin_scale_range[0] <= perlin_scale_range[1] <= 10:
            raise ValueError(f"perlin_scale_range must satisfy 0 <= low <= high <= 10, got {perlin_scale_range}")
        if not 0.0 <= threshold < 1.0:  # >= 0 keeps the zero-padded corners of rotated noise out of the mask
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        if not 0 <= num_augmentations <= len(AUGMENTATIONS):
            raise ValueError(f"num_augmentations must be in [0, {len(AUGMENTATIONS)}], got {num_augmentations}")
        if max_mask_attempts < 1:
            raise ValueError(f"max_mask_attempts must be >= 1, got {max_mask_attempts}")

    def __repr__(self) -> str:
        source = "batch images + procedural textures"
        if self.textures is not None:
            source = f"{len(self.textures)} textures from {str(self.texture_dir)!r}"
        return (
            f"{type(self).__name__}(source={source}, anomaly_ratio={self.anomaly_ratio}, "
            f"beta_range={self.beta_range}, perlin_scale_range={self.perlin_scale_range}, threshold={self.threshold}, "
            f"max_rotation={self.max_rotation}, num_augmentations={self.num_augmentations})"
        )

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adds synthetic anomalies to a random subset of the batch.

        Args:
            images: Normal images, float tensor (B, 3, H, W) in [0, 1], on any device.
            generator: Source of all randomness (any device; numbers are drawn on its device). Defaults to
                this object's own generator (see ``seed``).

        Returns:
            A tuple ``(augmented, masks)`` on the images' device: ``augmented`` (B, 3, H, W) with the images'
            dtype, in [0, 1], equal to ``images`` bit for bit wherever the mask is 0; ``masks`` (B, 1, H, W)
            with the images' dtype, values in {0., 1.}, all zero for normal samples.
        """
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"images must be a float tensor of shape (B, 3, H, W), got {tuple(images.shape)} {images.dtype}"
            )
        generator = generator if generator is not None else self.generator
        batch, _, height, width = images.shape
        device = images.device

        # step 1: choose the anomalous samples and give each a non-empty Perlin mask
        anomalous = (_rand((batch,), generator, _CPU) < self.anomaly_ratio).nonzero().squeeze(1)
        anomalous, masks = self._draw_masks(anomalous, height, width, generator, device)
        if anomalous.numel() == 0:
            return images.clone(), images.new_zeros(batch, 1, height, width)
        anomalous_on_device = _to(anomalous, device)

        # step 2: make one augmented anomaly source per anomalous sample
        sources = self._draw_sources(images, anomalous, generator)
        sources = augment_sources(sources, self.num_augmentations, generator)

        # step 3: blend inside the mask, x' = (1 - beta) * src + beta * x; outside it keep x untouched
        betas = _uniform(_rand((anomalous.numel(),), generator, device), *self.beta_range)
        originals = images[anomalous_on_device]
        blended = torch.lerp(sources, originals.float(), _per_sample(betas)).clamp(0.0, 1.0).to(images.dtype)
        augmented = images.index_copy(0, anomalous_on_device, torch.where(masks, blended, originals))
        full_masks = images.new_zeros(batch, 1, height, width)
        full_masks = full_masks.index_copy(0, anomalous_on_device, masks.to(images.dtype))
        return augmented, full_masks

    def _draw_masks(
        self, candidates: torch.Tensor, height: int, width: int, generator: torch.Generator | None, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws Perlin masks for ``candidates`` (CPU indices (N,)); empty ones are redrawn (``max_mask_attempts``).

        Returns:
            The CPU indices (M,) that got a non-empty mask, in increasing order, and their masks (M, 1, H, W)
            (bool, on ``device``).
        """
        kept_indices, kept_masks = [], []
        for _ in range(self.max_mask_attempts):
            if candidates.numel() == 0:
                break
            masks = perlin_masks(
                candidates.numel(), height, width, generator, device,
                self.perlin_scale_range, self.max_rotation, self.threshold,
            )  # fmt: skip
            non_empty = masks.flatten(1).any(dim=1).cpu()  # the one synchronisation with a CUDA device
            kept_indices.append(candidates[non_empty])
            kept_masks.append(masks[_to(non_empty.nonzero().squeeze(1), device)])
            candidates = candidates[~non_empty]
        if not kept_indices:
            return candidates, torch.zeros(0, 1, height, width, dtype=torch.bool, device=device)
        indices, masks = torch.cat(kept_indices), torch.cat(kept_masks)
        order = indices.argsort()
        return indices[order], masks[_to(order, device)]

    def _draw_sources(
        self, images: torch.Tensor, anomalous: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Picks the un-augmented anomaly source of every anomalous sample.

        Args:
            images: The batch (B, 3, H, W).
            anomalous: CPU indices (N,) of the anomalous samples.
            generator: Source of randomness.

        Returns:
            Float32 sources (N, 3, H, W) in [0, 1].
        """
        n, device = anomalous.numel(), images.device
        height, width = images.shape[2:]
        if n == 0:
            return torch.zeros(0, 3, height, width, device=device)
        if self.textures is not None:
            textures = self._textures_for(device)
            picks = _randint(0, textures.shape[0], (n,), generator, _CPU)
            picks = _to(picks, device)
            sources = textures[picks].float() / 255.0
            if sources.shape[2:] != (height, width):
                sources = F.interpolate(sources, size=(height, width), mode="bilinear", antialias=True).clamp(0.0, 1.0)
            return sources

        batch = images.shape[0]
        ratio = self.texture_from_batch_ratio if batch > 1 else 0.0
        from_batch = _rand((n,), generator, _CPU) < ratio
        offsets = _randint(1, max(batch, 2), (n,), generator, _CPU)
        shifts = (_rand((n, 2), generator, _CPU) * torch.tensor([height, width])).long()
        sources = torch.empty(n, 3, height, width, device=device)
        # other images of the batch: a different sample (batch offset >= 1), circularly shifted in space
        batch_picks = from_batch.nonzero().squeeze(1)
        others = images[_to((anomalous[batch_picks] + offsets[batch_picks]) % batch, device)].float()
        sources[_to(batch_picks, device)] = shift_images(others, _to(shifts[batch_picks], device))
        # procedural textures for the rest
        texture_picks = (~from_batch).nonzero().squeeze(1)
        textures = procedural_textures(texture_picks.numel(), height, width, generator, device)
        sources[_to(texture_picks, device)] = textures
        return sources

    def _textures_for(self, device: torch.device) -> torch.Tensor:
        """The texture bank (N, 3, S, S) uint8 on ``device``, moved there once and cached."""
        if device not in self._textures_on_device:
            self._textures_on_device[device] = self.textures.to(device)
        return self._textures_on_device[device]


__all__ = [
    "AUGMENTATIONS",
    "SyntheticAnomalyGenerator",
    "augment_sources",
    "load_texture_bank",
    "perlin_masks",
    "perlin_noise_2d",
    "procedural_textures",
    "rotate_images",
    "shift_images",
]
