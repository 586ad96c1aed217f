"""Few-shot reference memory: normal patch features of k images per category, and the map of a test image's distance
to them (1 - the highest cosine similarity), fused with a family's own anomaly map.

Every family stores the patch features it already scores, L2-normalised as it compares them with its text: CLIP-ADA
the coarse stage's projected tokens of `feature_layer`, AnomalyCLIP the DPAM patch embeddings of `feature_layers`,
AdaCLIP the projected patch tokens of `feature_layers`. The memory lives in the checkpoint as one persistent buffer
per category, `reference_memory.bank_<i>` of shape `(num_layers, num_patches, dim)` (categories in sorted order);
`config.reference_memory_sizes` (`{category: num_patches}`) lets `from_pretrained` build the buffers before it loads
them, so a checkpoint with a memory and one without both load strictly.

Example:
    ```python
    >>> model.fit_reference(pixel_values, ["bottle"] * 4)   # pixel_values (4, 3, H, W): 4 normal bottle images
    {'bottle': 4 * h * w}
    >>> model(test_pixel_values, categories=["bottle"]).anomaly_map   # the family's map fused with the memory's
    ```
"""

from collections.abc import Sequence

import torch
from torch import nn

# how many query x memory similarities one matrix product may hold (64 MiB of float32)
MAX_SIMILARITY_ELEMENTS = 2**24
BANK_PREFIX = "bank_"


class ReferenceMemory(nn.Module):
    """The normal patch features of every fitted category, one persistent buffer per category.

    Args:
        sizes: `{category: num_patches}` (from `config.reference_memory_sizes`), or None for an empty memory.
        num_layers: How many feature layers the family scores.
        dim: The width of the stored features.
    """

    def __init__(self, sizes: dict[str, int] | None, num_layers: int, dim: int):
        super().__init__()
        self.num_layers, self.dim = num_layers, dim
        self.categories: list[str] = []
        self._allocate({category: torch.empty(num_layers, size, dim) for category, size in (sizes or {}).items()})

    def _allocate(self, banks: dict[str, torch.Tensor]) -> None:
        """Replaces every buffer by `banks` (category -> `(num_layers, num_patches, dim)`), in sorted order."""
        for index in range(len(self.categories)):
            delattr(self, f"{BANK_PREFIX}{index}")
        self.categories = sorted(banks)
        for index, category in enumerate(self.categories):
            self.register_buffer(f"{BANK_PREFIX}{index}", banks[category], persistent=True)

    def bank(self, category: str) -> torch.Tensor:
        """`(num_layers, num_patches, dim)`: the stored features of `category`."""
        return getattr(self, f"{BANK_PREFIX}{self.categories.index(category)}")

    def sizes(self) -> dict[str, int]:
        """`{category: num_patches}`, as `config.reference_memory_sizes` records it."""
        return {category: int(self.bank(category).shape[1]) for category in self.categories}

    def replace(self, banks: dict[str, torch.Tensor]) -> None:
        """Replaces the whole memory.

        Args:
            banks: category -> `(num_layers, num_patches, dim)` normalised features; {} empties the memory.

        Raises:
            ValueError: A bank of the wrong shape, naming the category.
        """
        for category, bank in banks.items():
            if bank.ndim != 3 or bank.shape[0] != self.num_layers or bank.shape[2] != self.dim or not bank.shape[1]:
                raise ValueError(
                    f"The reference memory of {category!r} must be (num_layers={self.num_layers}, num_patches >= 1, "
                    f"dim={self.dim}), got {tuple(bank.shape)}."
                )
        self._allocate({category: bank.detach().contiguous() for category, bank in banks.items()})

    def __len__(self) -> int:
        return len(self.categories)


def nearest_distances(
    queries: torch.Tensor, bank: torch.Tensor, scale: float = 1.0, max_elements: int = MAX_SIMILARITY_ELEMENTS
) -> torch.Tensor:
    """`scale` x (1 - the highest cosine similarity of each query to the bank): exact search by chunked matrix
    products.

    Args:
        queries: `(num_queries, dim)`, L2-normalised.
        bank: `(num_patches, dim)`, L2-normalised.
        scale: `config.reference_distance_scale` (1: APRIL-GAN's distance; 0.5: WinCLIP+'s, in [0, 1] unclamped).
        max_elements: At most this many similarities are held at once (the bank is split into chunks of rows).

    Returns:
        `(num_queries,)` in float32, clamped to [0, 1].
    """
    queries, bank = queries.float(), bank.float()
    chunk = max(1, max_elements // max(1, queries.shape[0]))
    best = torch.full((queries.shape[0],), -1.0, device=queries.device)
    for start in range(0, bank.shape[0], chunk):
        best = torch.maximum(best, (queries @ bank[start : start + chunk].T).amax(dim=1))
    return (scale * (1 - best)).clamp(0, 1)


def image_memory_categories(memory: ReferenceMemory, categories: Sequence[str | None] | None, batch_size: int):
    """Each image's memory category: its own, or the only one in memory when it names none.

    Args:
        memory: The model's memory (not empty).
        categories: One category (or None) per image, or None.
        batch_size: The number of images.

    Returns:
        One category of the memory per image.

    Raises:
        ValueError: An image's category has no memory, or it names none and the memory holds several.
    """
    categories = [None] * batch_size if categories is None else list(categories)
    resolved = []
    for category in categories:
        if category is None and len(memory) == 1:
            category = memory.categories[0]
        if category not in memory.categories:
            shown = "no category" if category is None else f"category {category!r}"
            raise ValueError(
                f"The reference memory holds {memory.categories}, but an image has {shown}: pass `categories=` "
                "with one of them, or fit the memory for it (`model.fit_reference`, `clipada fit-reference`)."
            )
        resolved.append(category)
    return resolved


def memory_patch_map(
    memory: ReferenceMemory,
    layer_features: Sequence[torch.Tensor],
    categories: Sequence[str | None] | None,
    grid: tuple[int, int],
    scale: float = 1.0,
) -> torch.Tensor:
    """The memory's anomaly map on the patch grid: per layer `scale` x (1 - the highest cosine similarity to the
    image's category's memory of that layer), averaged over the layers.

    Args:
        memory: The model's memory (not empty).
        layer_features: One `(batch_size, h * w, dim)` per feature layer, L2-normalised.
        categories: One category (or None) per image, or None (see [`image_memory_categories`]).
        grid: `(h, w)`.
        scale: `config.reference_distance_scale`.

    Returns:
        `(batch_size, h, w)` float32 in [0, 1].
    """
    batch_size = layer_features[0].shape[0]
    resolved = image_memory_categories(memory, categories, batch_size)
    patch_map = torch.zeros(batch_size, grid[0] * grid[1], device=layer_features[0].device)
    for category in dict.fromkeys(resolved):
        rows = torch.tensor([i for i, c in enumerate(resolved) if c == category], device=patch_map.device)
        bank = memory.bank(category)
        for layer, features in enumerate(layer_features):
            queries = features[rows].reshape(-1, features.shape[-1])
            distances = nearest_distances(queries, bank[layer].to(queries.device), scale)
            patch_map[rows] += distances.view(len(rows), -1)
    return (patch_map / len(layer_features)).view(batch_size, *grid)


def fuse_maps(family_map: torch.Tensor, memory_map: torch.Tensor, fusion: str) -> torch.Tensor:
    """The anomaly map with a memory: `"mean"` averages the family's and the memory's maps (as WinCLIP+ and
    APRIL-GAN's few-shot mode combine the zero-shot and the memory map); `"memory"` keeps the memory's alone.

    Args:
        family_map: `(batch_size, H, W)`.
        memory_map: `(batch_size, H, W)`.
        fusion: `config.reference_fusion`.

    Returns:
        `(batch_size, H, W)`.
    """
    if fusion == "memory":
        return memory_map.to(family_map.dtype)
    return (family_map + memory_map.to(family_map.dtype)) / 2


def score_with_global(global_score: torch.Tensor, memory_map: torch.Tensor) -> torch.Tensor:
    """The image score of a family with a global score, with a memory: the mean of that score and the memory map's
    maximum, as WinCLIP+ averages its zero-shot image score with the maximum of its few-shot map.

    Args:
        global_score: `(batch_size,)`.
        memory_map: `(batch_size, H, W)` (or the patch grid).

    Returns:
        `(batch_size,)`.
    """
    return (global_score + memory_map.flatten(1).amax(dim=1).to(global_score.dtype)) / 2


def fit_reference(
    model,
    images,
    categories: Sequence[str],
    image_processor=None,
    batch_size: int = 8,
    max_patches: int | None = None,
    seed: int = 0,
):
    """Fills `model`'s memory with the patch features of normal images, replacing what it held.

    Args:
        model: A model of this library (it has `reference_features` and `reference_memory`).
        images: `(k, 3, H, W)` CLIP-normalised pixel values, a list of `(3, H, W)` tensors, or a list of images
            for `image_processor`. An empty one (k = 0) empties the memory: the family's own maps come back.
        categories: One category name per image.
        image_processor: Turns images that are no tensors into pixel values (the checkpoint's image processor).
        batch_size: Images per forward pass.
        max_patches: Keep at most this many patches per category, a random subset (the same patches in every
            layer), to bound the memory's size and search time; None keeps them all (exact few-shot memory).
        seed: Seeds the subset's draw (with `max_patches`).

    Returns:
        `{category: num_patches}`, also written to `model.config.reference_memory_sizes` (None when empty).

    Raises:
        ValueError: Categories and images differ in number, a category is not a non-empty string, or images that
            are no tensors come without an image processor.
    """
    categories = list(categories)
    count = len(images)
    if count != len(categories):
        raise ValueError(f"`categories` must hold one name per image ({count}), got {len(categories)}.")
    bad = [c for c in categories if not isinstance(c, str) or not c]
    if bad:
        raise ValueError(f"`categories` must be non-empty strings, got {bad[0]!r}.")
    if max_patches is not None and (
        isinstance(max_patches, bool) or not isinstance(max_patches, int) or max_patches < 1
    ):
        raise ValueError(f"`max_patches` must be an integer >= 1 or None, got {max_patches!r}.")
    pixel_values = _pixel_values(images, image_processor) if count else None
    banks: dict[str, list[torch.Tensor]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, count, batch_size):
                batch = pixel_values[start : start + batch_size]
                features = model.reference_features(batch)  # one (b, h * w, dim) per layer
                stacked = torch.stack(features, dim=1).float()  # (b, layers, h * w, dim)
                for image, category in zip(stacked, categories[start : start + batch_size]):
                    banks.setdefault(category, []).append(image)
    finally:
        model.train(was_training)
    dtype = next(model.parameters()).dtype
    merged = {category: torch.cat(parts, dim=1) for category, parts in banks.items()}
    if max_patches is not None:
        merged = {category: _random_patches(bank, max_patches, seed) for category, bank in merged.items()}
    model.reference_memory.replace({category: bank.to(dtype) for category, bank in merged.items()})
    sizes = model.reference_memory.sizes()
    model.config.reference_memory_sizes = sizes or None
    return sizes


def _random_patches(bank: torch.Tensor, max_patches: int, seed: int) -> torch.Tensor:
    """At most `max_patches` patches of `bank` `(layers, patches, dim)`, drawn with `seed`, in their stored order."""
    if bank.shape[1] <= max_patches:
        return bank
    generator = torch.Generator().manual_seed(seed)
    kept = torch.randperm(bank.shape[1], generator=generator)[:max_patches].sort().values
    return bank[:, kept.to(bank.device)]


def _pixel_values(images, image_processor) -> torch.Tensor:
    """`(k, 3, H, W)` pixel values from a tensor, a list of `(3, H, W)` tensors, or images for `image_processor`."""
    if isinstance(images, torch.Tensor):
        return images
    if all(isinstance(image, torch.Tensor) for image in images):
        return torch.stack(list(images))
    if image_processor is None:
        raise ValueError("`images` are no tensors: pass `image_processor=` (the checkpoint's) to make pixel values.")
    return image_processor(images=list(images), return_tensors="pt")["pixel_values"]


__all__ = [
    "ReferenceMemory",
    "fit_reference",
    "fuse_maps",
    "image_memory_categories",
    "memory_patch_map",
    "nearest_distances",
    "score_with_global",
]
