"""Heatmap pictures of the evaluation: image | ground truth | anomaly map over the image.

Example:
    ```python
    >>> save_heatmap(Path("heatmaps/bottle_0001.png"), image, mask, anomaly_map)  # (3, H, W), (H, W), (H, W)
    ```
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def save_heatmap(path: Path, image: torch.Tensor, mask: torch.Tensor, anomaly_map: torch.Tensor) -> None:
    """Writes image | ground truth | anomaly map over the image (jet colours, probabilities 0..1 on a fixed scale).

    Args:
        image: `(3, H, W)` in [0, 1]; mask: `(H, W)` {0, 1}; anomaly_map: `(H, W)` in [0, 1].
    """
    rgb = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    truth = np.repeat((mask.numpy()[..., None] > 0).astype(np.uint8) * 255, 3, axis=2)
    overlay = (0.5 * rgb + 0.5 * _jet(anomaly_map.numpy())).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([rgb, truth, overlay], axis=1)).save(path)


def _jet(values: np.ndarray) -> np.ndarray:
    """Jet colour map of values in [0, 1] -> uint8 RGB."""
    values = np.clip(values, 0.0, 1.0)[..., None]
    channels = np.clip(1.5 - np.abs(4.0 * values - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return (channels * 255).astype(np.uint8)


__all__ = ["save_heatmap"]
