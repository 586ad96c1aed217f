"""DRAEM's ten colour/geometry augmentations of the anomaly sources, batched, with per-sample parameters."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .perlin import rotate_images
from .rng import CPU, per_sample, rand, to_device, uniform


def augment_gamma(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per-channel gamma, log-uniform in [0.5, 2] (DRAEM: ``GammaContrast((0.5, 2.0), per_channel=True)``).

    Args:
        images: Float tensor (N, 3, H, W) in [0, 1].
        u: Uniform numbers (N, K), K >= 3: ``u[:, c]`` sets the gamma of channel c.

    Returns:
        Augmented images (N, 3, H, W) in [0, 1].
    """
    gamma = torch.exp(uniform(u[:, :3], math.log(0.5), math.log(2.0)))
    return images.pow(per_sample(gamma))


def augment_brightness(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Multiply by U(0.8, 1.2) and add U(-30, 30) / 255 (DRAEM: ``MultiplyAndAddToBrightness``).

    Args:
        images: Float tensor (N, 3, H, W) in [0, 1].
        u: Uniform numbers (N, K), K >= 3: ``u[:, 0]`` sets the factor, ``u[:, 1]`` the offset.

    Returns:
        Augmented images (N, 3, H, W) in [0, 1].
    """
    multiply = uniform(u[:, 0], 0.8, 1.2)
    add = uniform(u[:, 1], -30.0 / 255.0, 30.0 / 255.0)
    return (images * per_sample(multiply) + per_sample(add)).clamp(0.0, 1.0)


def augment_sharpness(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """PIL-style sharpness: blend with a 3x3 smoothed copy, factor U(0, 2) (< 1 blurs, > 1 sharpens).

    The border is smoothed with replicated edges (PIL leaves its 1-pixel border unfiltered), so this equals PIL's
    ``ImageEnhance.Sharpness`` on an edge-padded copy.

    Args:
        images: Float tensor (N, 3, H, W) in [0, 1].
        u: Uniform numbers (N, K), K >= 3: ``u[:, 0]`` sets the factor.

    Returns:
        Augmented images (N, 3, H, W) in [0, 1].
    """
    # PIL's smoothing kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 = (9 * 3x3 mean + 4 * centre) / 13
    box = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel_size=3, stride=1)
    smooth = (9.0 * box + 4.0 * images) / 13.0
    factor = uniform(u[:, 0], 0.0, 2.0)
    return torch.lerp(smooth, images, per_sample(factor)).clamp(0.0, 1.0)


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
    """Hue rotation by U(-50, 50) * 360 / 255 degrees and saturation x U(0.5, 1.5), via a per-sample YIQ matrix.

    Args:
        images: Float tensor (N, 3, H, W) in [0, 1].
        u: Uniform numbers (N, K), K >= 3: ``u[:, 0]`` sets the hue angle, ``u[:, 1]`` the saturation factor.

    Returns:
        Augmented images (N, 3, H, W) in [0, 1].
    """
    angle = uniform(u[:, 0], -50.0, 50.0) * (2.0 * math.pi / 255.0)
    saturation = uniform(u[:, 1], 0.5, 1.5)
    weights = torch.stack([torch.ones_like(angle), torch.cos(angle) * saturation, torch.sin(angle) * saturation], 1)
    matrix = torch.einsum("nk,kij->nij", weights, to_device(_HUE_BASIS, images.device))  # (N, 3, 3)
    return torch.einsum("nij,njhw->nihw", matrix, images).clamp(0.0, 1.0)


def augment_solarize(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Invert pixels above a threshold U(32, 128) / 255 (DRAEM: ``Solarize(threshold=(32, 128))``).

    Args:
        images: Float tensor (N, 3, H, W) in [0, 1].
        u: Uniform numbers (N, K), K >= 3: ``u[:, 0]`` sets the threshold.

    Returns:
        Augmented images (N, 3, H, W) in [0, 1].
    """
    threshold = per_sample(uniform(u[:, 0], 32.0 / 255.0, 128.0 / 255.0))
    return torch.where(images >= threshold, 1.0 - images, images)


def augment_posterize(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Keep 1 to 7 bits per channel (uniform).

    Args:
        images: Float tensor (N, 3, H, W) in [0, 1].
        u: Uniform numbers (N, K), K >= 3: ``u[:, 0]`` sets the number of bits.

    Returns:
        Augmented images (N, 3, H, W) in [0, 1].
    """
    bits = (u[:, 0] * 7).floor() + 1.0
    levels = per_sample(torch.pow(2.0, bits))
    return torch.floor(images * 255.0 / (256.0 / levels)) * (256.0 / levels) / 255.0


def augment_invert(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``1 - x``.

    Args:
        images: Float tensor (N, 3, H, W) in [0, 1].
        u: Uniform numbers (N, K), K >= 3: unused.

    Returns:
        Augmented images (N, 3, H, W) in [0, 1].
    """
    return 1.0 - images


def augment_autocontrast(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Stretch every channel of every image to span [0, 1].

    Args:
        images: Float tensor (N, 3, H, W) in [0, 1].
        u: Uniform numbers (N, K), K >= 3: unused.

    Returns:
        Augmented images (N, 3, H, W) in [0, 1].
    """
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    spread = high - low
    return torch.where(spread > 0, (images - low) / spread, images)  # a constant channel stays as it is


def augment_equalize(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageOps.equalize`` per channel on the 256 grey levels, batched with one ``bincount``.

    PIL's rule: with ``step = (pixels - pixels of the highest level) // 255``, level ``i`` maps to
    ``(step // 2 + pixels below i) // step``; a channel with ``step == 0`` (e.g. a constant one) is unchanged.

    Args:
        images: Float tensor (N, C, H, W) in [0, 1]; rounded to 256 levels first.
        u: Uniform numbers (N, K), unused.

    Returns:
        Equalised images (N, C, H, W), multiples of 1/255 in [0, 1].
    """
    n, c, h, w = images.shape
    levels = (images * 255.0).round().long().clamp(0, 255).reshape(n * c, h * w)
    offsets = torch.arange(n * c, device=images.device)[:, None] * 256
    histograms = torch.bincount((levels + offsets).view(-1), minlength=n * c * 256).view(n * c, 256)
    grey_levels = torch.arange(256, device=images.device)
    highest = torch.where(histograms > 0, grey_levels, 0).amax(dim=1, keepdim=True)
    step = (h * w - histograms.gather(1, highest)) // 255  # (N * C, 1)
    below = histograms.cumsum(dim=1) - histograms  # pixels strictly below each level
    lut = ((step // 2 + below) // step.clamp_min(1)).clamp_max(255)
    lut = torch.where(step > 0, lut, grey_levels)
    return torch.gather(lut, 1, levels).view(n, c, h, w).float() / 255.0


def augment_rotation(images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Rotate by U(-45, 45) degrees (DRAEM: ``Affine(rotate=(-45, 45))``), reflecting at the borders.

    Args:
        images: Float tensor (N, 3, H, W) in [0, 1].
        u: Uniform numbers (N, K), K >= 3: ``u[:, 0]`` sets the angle.

    Returns:
        Augmented images (N, 3, H, W) in [0, 1].
    """
    return rotate_images(images, uniform(u[:, 0], -45.0, 45.0), padding_mode="reflection")


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
    choices = rand((n, len(names)), generator, CPU).argsort(dim=1)[:, :num_augmentations]
    chosen = torch.zeros(n, len(names), dtype=torch.bool).scatter_(1, choices, True)  # (N, 10), on the CPU
    uniforms = rand((n, len(names), _UNIFORMS_PER_AUGMENTATION), generator, device)
    chosen_on_device = to_device(chosen, device)
    sources = sources.clone()  # updated in place below
    for index, name in enumerate(names):
        samples = chosen[:, index].nonzero().squeeze(1)
        if samples.numel() == 0:
            continue
        if device.type == "cpu":
            sources.index_copy_(0, samples, AUGMENTATIONS[name](sources[samples], uniforms[samples, index]))
        else:
            augmented = AUGMENTATIONS[name](sources, uniforms[:, index])
            sources = torch.where(per_sample(chosen_on_device[:, index]), augmented, sources)
    return sources.clamp_(0.0, 1.0)  # bilinear rotation may overshoot 1 by a rounding error


__all__ = [
    "AUGMENTATIONS",
    "augment_autocontrast",
    "augment_brightness",
    "augment_equalize",
    "augment_gamma",
    "augment_hue_saturation",
    "augment_invert",
    "augment_posterize",
    "augment_rotation",
    "augment_sharpness",
    "augment_solarize",
    "augment_sources",
]
