"""Anomaly sources: procedural textures, a texture bank loaded from an image folder, shifted batch images."""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from training.data import IMAGE_EXTENSIONS

from .augmentations import augment_autocontrast
from .rng import CPU, per_sample, rand, to_device, uniform


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
    persistence = uniform(rand((batch, 1), generator, CPU), 0.3, 0.9)
    amplitudes = persistence ** torch.arange(len(octave_cells))  # (N, octaves)
    row_amplitudes = amplitudes.repeat_interleave(torch.tensor(octave_cells), dim=1)  # (N, sum of cells)
    lattices = rand((batch, 3, sum(cells * cells for cells in octave_cells)), generator, device)
    lattices = lattices.split([cells * cells for cells in octave_cells], dim=2)
    columns_upsampled = torch.cat(
        [
            lattice.view(batch, 3, cells, cells) @ _bicubic_upsampling_matrix(width, cells, device).T
            for cells, lattice in zip(octave_cells, lattices)
        ],
        dim=2,
    )  # (N, 3, sum of cells, W)
    columns_upsampled = columns_upsampled * to_device(row_amplitudes, device)[:, None, :, None]
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
    u = rand((batch, 10), generator, device)
    angle = u[:, 0] * math.pi
    periods = torch.exp(uniform(u[:, 1], math.log(2.0), math.log(24.0)))
    phase, hardness = u[:, 2] * 2.0 * math.pi, torch.exp(uniform(u[:, 3], 0.0, math.log(30.0)))
    colours = u[:, 4:10].view(batch, 2, 3)
    ys = torch.linspace(0.0, 1.0, height, device=device)[None, :, None]
    xs = torch.linspace(0.0, 1.0, width, device=device)[None, None, :]
    position = xs * torch.cos(angle)[:, None, None] + ys * torch.sin(angle)[:, None, None]
    wave = torch.sin(2.0 * math.pi * periods[:, None, None] * position + phase[:, None, None])
    weight = torch.sigmoid(hardness[:, None, None] * wave)[:, None]  # (N, 1, H, W)
    return torch.lerp(per_sample(colours[:, 0]), per_sample(colours[:, 1]), weight)


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
    use_stripes = rand((batch,), generator, device) < 0.25
    noise = fractal_noise_textures(batch, height, width, generator, device)
    stripes = stripe_textures(batch, height, width, generator, device)
    return torch.where(per_sample(use_stripes), stripes, noise)


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

    Files are matched by extension (case-insensitive, ``training.data.IMAGE_EXTENSIONS``); other files
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
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # PIL's broken-file errors
            warnings.warn(f"Skipping unreadable texture file {path}: {error}", stacklevel=2)
            continue
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        textures.append(pixels.view(image_size, image_size, 3))
    if not textures:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ValueError(f"texture_dir {str(folder)!r} contains no readable image (looked for {extensions})")
    return torch.stack(textures).permute(0, 3, 1, 2).contiguous()


__all__ = ["fractal_noise_textures", "load_texture_bank", "procedural_textures", "shift_images", "stripe_textures"]
