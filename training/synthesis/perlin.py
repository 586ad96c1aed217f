"""Perlin noise and DRAEM's anomaly masks: batched 2D gradient noise, rigid rotation, threshold."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .rng import CPU, generator_device, rand, randint, to_device, uniform


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
    device = torch.device(device) if device is not None else generator_device(generator)
    scales = torch.as_tensor(scales, dtype=torch.long).to("cpu").expand(batch, 2)
    if bool((scales < 1).any()):
        raise ValueError(f"scales must be >= 1 lattice cell per axis, got {scales.tolist()}")
    lattice_h, lattice_w = int(scales[:, 0].max()) + 1, int(scales[:, 1].max()) + 1

    # step 1: random unit gradients (g_y, g_x) on each sample's lattice
    angles = 2.0 * math.pi * rand((batch, lattice_h, lattice_w), generator, device)
    gradients_y, gradients_x = torch.cos(angles), torch.sin(angles)

    # step 2: per-axis interpolation matrices; pixel i sits at i * scale / size in lattice units
    scales = to_device(scales.float(), device)
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
    return F.affine_grid(to_device(theta, device), list(size), align_corners=False)


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
    exponents = randint(scale_range[0], scale_range[1] + 1, (batch, 2), generator, CPU)
    noise = perlin_noise_2d(batch, height, width, 2**exponents, generator, device)
    angles = uniform(rand((batch,), generator, CPU), -max_rotation, max_rotation)
    noise = rotate_images(noise[:, None], angles, padding_mode="zeros")
    return noise > threshold


__all__ = ["perlin_masks", "perlin_noise_2d", "rotate_images"]
