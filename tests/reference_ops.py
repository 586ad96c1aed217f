"""Plain reference operators that tests compare the library's fast forms with.

Example:
    ```python
    >>> smoothed = gaussian_blur(F.interpolate(maps[:, None], size=(224, 224), mode="bilinear"), sigma=4.0)
    ```
"""

import torch
import torch.nn.functional as F


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing, the textbook way: two 1-D convolutions of the padded maps.

    The kernel has radius `max(1, round(4 sigma))`; borders are reflected, or repeated when the map is not wider
    than the radius (reflection needs a narrower border).

    Args:
        images: `(batch_size, 1, H, W)` maps.
        sigma: Standard deviation in pixels; 0 returns `images` unchanged.

    Returns:
        `(batch_size, 1, H, W)`, the smoothed maps.
    """
    if sigma <= 0:
        return images
    radius = max(1, int(4.0 * sigma + 0.5))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.dtype)
    mode = "reflect" if radius < min(images.shape[-2:]) else "replicate"
    images = F.pad(images, (radius, radius, radius, radius), mode=mode)
    images = F.conv2d(images, kernel.view(1, 1, 1, -1))
    return F.conv2d(images, kernel.view(1, 1, -1, 1))


__all__ = ["gaussian_blur"]
