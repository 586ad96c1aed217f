"""The DRAEM-style synthetic anomaly generator: masks, sources and blending for a whole batch."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .augmentations import AUGMENTATIONS, augment_sources
from .perlin import perlin_masks
from .rng import CPU, per_sample, rand, randint, to_device, uniform
from .sources import load_texture_bank, procedural_textures, shift_images


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
        anomalous = (rand((batch,), generator, CPU) < self.anomaly_ratio).nonzero().squeeze(1)
        anomalous, masks = self._draw_masks(anomalous, height, width, generator, device)
        if anomalous.numel() == 0:
            return images.clone(), images.new_zeros(batch, 1, height, width)
        anomalous_on_device = to_device(anomalous, device)

        # step 2: make one augmented anomaly source per anomalous sample
        sources = self._draw_sources(images, anomalous, generator)
        sources = augment_sources(sources, self.num_augmentations, generator)

        # step 3: blend inside the mask, x' = (1 - beta) * src + beta * x; outside it keep x untouched
        betas = uniform(rand((anomalous.numel(),), generator, device), *self.beta_range)
        originals = images[anomalous_on_device]
        blended = torch.lerp(sources, originals.float(), per_sample(betas)).clamp(0.0, 1.0).to(images.dtype)
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
            kept_masks.append(masks[to_device(non_empty.nonzero().squeeze(1), device)])
            candidates = candidates[~non_empty]
        if not kept_indices:
            return candidates, torch.zeros(0, 1, height, width, dtype=torch.bool, device=device)
        indices, masks = torch.cat(kept_indices), torch.cat(kept_masks)
        order = indices.argsort()
        return indices[order], masks[to_device(order, device)]

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
            picks = randint(0, textures.shape[0], (n,), generator, CPU)
            picks = to_device(picks, device)
            sources = textures[picks].float() / 255.0
            if sources.shape[2:] != (height, width):
                sources = F.interpolate(sources, size=(height, width), mode="bilinear", antialias=True).clamp(0.0, 1.0)
            return sources

        batch = images.shape[0]
        ratio = self.texture_from_batch_ratio if batch > 1 else 0.0
        from_batch = rand((n,), generator, CPU) < ratio
        offsets = randint(1, max(batch, 2), (n,), generator, CPU)
        shifts = (rand((n, 2), generator, CPU) * torch.tensor([height, width])).long()
        sources = torch.empty(n, 3, height, width, device=device)
        # other images of the batch: a different sample (batch offset >= 1), circularly shifted in space
        batch_picks = from_batch.nonzero().squeeze(1)
        others = images[to_device((anomalous[batch_picks] + offsets[batch_picks]) % batch, device)].float()
        sources[to_device(batch_picks, device)] = shift_images(others, to_device(shifts[batch_picks], device))
        # procedural textures for the rest
        texture_picks = (~from_batch).nonzero().squeeze(1)
        textures = procedural_textures(texture_picks.numel(), height, width, generator, device)
        sources[to_device(texture_picks, device)] = textures
        return sources

    def _textures_for(self, device: torch.device) -> torch.Tensor:
        """The texture bank (N, 3, S, S) uint8 on ``device``, moved there once and cached."""
        if device not in self._textures_on_device:
            self._textures_on_device[device] = self.textures.to(device)
        return self._textures_on_device[device]


__all__ = ["SyntheticAnomalyGenerator"]
