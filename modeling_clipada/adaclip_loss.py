"""AdaCLIP's loss: `focal(image) + sum_layers [focal + dice(abnormal, m) + dice(normal, 1 - m)]`.

With `p` the two-channel (normal, abnormal) probability map of one feature layer at the mask's resolution and `m`
the binary mask; focal and dice are AnomalyCLIP's (`anomalyclip_loss.py`: the same official formulas, label
smoothing and epsilon included); the image term is the focal loss of the image's (normal, abnormal) probabilities
against its label. A dice term covers one image row (`dice_unit="row"`, what the official training computes: at its
batch size 1 its masks lose the batch axis and the dice loss treats rows as samples) or one image (`"image"`).
Every term is a mean over images, pixels or rows, so the loss of a batch is the mean of its images' losses.

Example:
    ```python
    >>> loss = adaclip_loss(image_probabilities, layer_probabilities, masks, dice_unit="row")
    ```
"""

import torch

from .anomalyclip_loss import dice_loss, focal_loss


def adaclip_loss(
    image_probabilities: torch.Tensor,
    layer_probabilities: list[torch.Tensor],
    masks: torch.Tensor,
    dice_unit: str,
) -> torch.Tensor:
    """The total loss; an image is anomalous when its mask has an anomalous pixel.

    Args:
        image_probabilities: `(batch_size, 2)`, (normal, abnormal) probabilities of each image.
        layer_probabilities: One `(batch_size, 2, H, W)` probability map per feature layer, at the mask's size.
        masks: `(batch_size, H, W)`, binary.
        dice_unit: `"row"` or `"image"`.

    Returns:
        `()`.
    """
    image_labels = masks.flatten(1).amax(dim=1)
    units = masks.shape[0] * masks.shape[1] if dice_unit == "row" else masks.shape[0]
    masks_per_unit = masks.reshape(units, -1)
    pixel_loss = sum(
        focal_loss(probabilities, masks)
        + dice_loss(probabilities[:, 1].reshape(units, -1), masks_per_unit)
        + dice_loss(probabilities[:, 0].reshape(units, -1), 1 - masks_per_unit)
        for probabilities in layer_probabilities
    )
    return focal_loss(image_probabilities, image_labels) + pixel_loss


__all__ = ["adaclip_loss"]
