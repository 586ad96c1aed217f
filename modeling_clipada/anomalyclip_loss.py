"""AnomalyCLIP's loss: `ce(image) + pixel_loss_weight * sum_layers [focal + dice(abnormal, m) + dice(normal, 1 - m)]`.

With `p` the two-channel (normal, abnormal) probability map of one layer, upsampled to the mask `m` (binary):
- focal: `mean over pixels of -(1 - q)^2 log q`, `q = (1 - e) p_t + e p_(1-t) + e`, `t` the pixel's class and
  `e = 1e-5` (the official code's label smoothing and epsilon, kept for parity);
- dice(x, y): `1 - mean over images of (2 sum(x y) + 1) / (sum(x) + sum(y) + 1)`;
- ce: cross-entropy of the global embedding's (normal, abnormal) logits against the image label.

Example:
    ```python
    >>> loss = anomalyclip_loss(image_logits, layer_probabilities, masks, pixel_loss_weight=4.0)
    ```
"""

import torch
import torch.nn.functional as F

FOCAL_EPSILON = 1e-5


def focal_loss(probabilities: torch.Tensor, masks: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss of a two-class probability map.

    Args:
        probabilities: `(batch_size, 2, H, W)`, (normal, abnormal) probabilities summing to 1.
        masks: `(batch_size, H, W)`, binary (1 = anomalous).
        gamma: The focusing exponent.

    Returns:
        `()`, the mean over all pixels.
    """
    target = masks.long()[:, None]
    true_class = probabilities.gather(1, target)[:, 0]
    other_class = probabilities.gather(1, 1 - target)[:, 0]
    confidence = (1 - FOCAL_EPSILON) * true_class + FOCAL_EPSILON * other_class + FOCAL_EPSILON
    return (-((1 - confidence) ** gamma) * confidence.log()).mean()


def dice_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft dice loss with smoothing 1, averaged over images.

    Args:
        predictions: `(batch_size, H, W)` in [0, 1].
        targets: `(batch_size, H, W)` in [0, 1].

    Returns:
        `()`.
    """
    predictions, targets = predictions.flatten(1), targets.flatten(1)
    overlap = (predictions * targets).sum(1)
    return 1 - ((2 * overlap + 1) / (predictions.sum(1) + targets.sum(1) + 1)).mean()


def anomalyclip_loss(
    image_logits: torch.Tensor,
    layer_probabilities: list[torch.Tensor],
    masks: torch.Tensor,
    pixel_loss_weight: float,
) -> torch.Tensor:
    """The total loss; an image is anomalous when its mask has an anomalous pixel.

    Args:
        image_logits: `(batch_size, 2)`, (normal, abnormal) logits of the global embedding.
        layer_probabilities: One `(batch_size, 2, H, W)` probability map per feature layer, at the mask's size.
        masks: `(batch_size, H, W)`, binary.
        pixel_loss_weight: Weight of the pixel terms.

    Returns:
        `()`.
    """
    image_labels = masks.flatten(1).amax(dim=1).long()
    pixel_loss = sum(
        focal_loss(probabilities, masks)
        + dice_loss(probabilities[:, 1], masks)
        + dice_loss(probabilities[:, 0], 1 - masks)
        for probabilities in layer_probabilities
    )
    return F.cross_entropy(image_logits, image_labels) + pixel_loss_weight * pixel_loss


__all__ = ["FOCAL_EPSILON", "anomalyclip_loss", "dice_loss", "focal_loss"]
