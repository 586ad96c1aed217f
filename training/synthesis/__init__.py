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

from .augmentations import AUGMENTATIONS, augment_sources
from .generator import SyntheticAnomalyGenerator
from .perlin import perlin_masks, perlin_noise_2d, rotate_images
from .sources import load_texture_bank, procedural_textures, shift_images

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
