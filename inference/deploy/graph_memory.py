"""A checkpoint's few-shot reference memory as constants of an exported graph, each image's bank picked by an index.

The eager model keeps one `(num_layers, num_patches, dim)` bank per category and searches the bank of each image's
category (`modeling_clipada.reference_memory.memory_patch_map`). The graph holds every bank in one constant
`(num_categories, num_layers, max_patches, dim)`, the shorter banks padded with zero rows, and a `(num_categories,
max_patches)` constant that lowers the similarity of a padding row by 4: a cosine similarity is at least -1, so the
highest similarity of each patch is always one of its category's real patches, and the distance is the eager one.
Each image's bank is graph input `memory_index`, an index into the categories (in the memory's sorted order); the
runners fill it from the images' categories and refuse a category without memory, as the eager model does.

Example:
    ```python
    >>> banks = ExportedMemory(model.reference_memory, model.config.reference_distance_scale)
    >>> banks.categories                                   # what memory_index counts
    ['bottle', 'screw']
    >>> banks.patch_map(layer_features, memory_index, grid)   # (batch_size, h, w), the eager memory map
    ```
"""

import torch
from torch import nn

# added to the similarity of a padding row: below -1, the lowest cosine similarity of a real row
PADDING_SIMILARITY = -4.0


class ExportedMemory(nn.Module):
    """Every category's bank of a reference memory as graph constants.

    Args:
        memory: The model's `reference_memory` (not empty).
        scale: `config.reference_distance_scale`.

    Attributes:
        categories: The memory's categories, in the order `memory_index` counts them.
    """

    def __init__(self, memory: nn.Module, scale: float):
        super().__init__()
        if not len(memory):
            raise ValueError("the model's reference memory is empty: there is nothing to export")
        self.categories = list(memory.categories)
        self.scale = float(scale)
        banks = [memory.bank(category).detach().float() for category in self.categories]
        longest = max(bank.shape[1] for bank in banks)
        padded = torch.zeros(len(banks), banks[0].shape[0], longest, banks[0].shape[2], device=banks[0].device)
        padding = torch.full((len(banks), longest), PADDING_SIMILARITY, device=banks[0].device)
        for index, bank in enumerate(banks):
            padded[index, :, : bank.shape[1]] = bank
            padding[index, : bank.shape[1]] = 0
        self.register_buffer("banks", padded)  # (categories, layers, max_patches, dim)
        self.register_buffer("padding", padding)  # (categories, max_patches)

    def patch_map(
        self, layer_features: list[torch.Tensor], memory_index: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """The memory's map on the patch grid: per layer `scale` x (1 - the highest cosine similarity to the image's
        bank of that layer), clamped to [0, 1], averaged over the layers.

        Args:
            layer_features: One `(batch_size, h * w, dim)` per feature layer, L2-normalised.
            memory_index: `(batch_size,)` int64, each image's index into `categories`.
            grid: `(h, w)`.

        Returns:
            `(batch_size, h, w)` float32.
        """
        banks, padding = self.banks[memory_index], self.padding[memory_index][:, None]  # (B, L, P, D), (B, 1, P)
        patch_map = 0
        for layer, features in enumerate(layer_features):
            similarities = features.float() @ banks[:, layer].transpose(1, 2) + padding  # (B, h * w, P)
            patch_map = patch_map + (self.scale * (1 - similarities.amax(dim=2))).clamp(0, 1)
        return (patch_map / len(layer_features)).view(-1, *grid)


__all__ = ["PADDING_SIMILARITY", "ExportedMemory"]
