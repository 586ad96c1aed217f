"""Training batches, decoded and resized once: normal images (for synthetic anomalies), or images with their masks.

Example:
    ```python
    >>> loader = build_train_dataloader(dataset["train"], CLIPADAImageProcessor(size=224), batch_size=16)
    >>> batch = next(iter(loader))  # {"pixels": (16, 3, 224, 224) uint8, "categories": 16 names}
    >>> loader = build_train_dataloader(dataset["test"], processor, batch_size=8, with_masks=True)
    >>> batch = next(iter(loader))  # and "masks": (8, 224, 224) uint8 in {0, 1}
    ```
"""

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader

from processing import CLIPADAImageProcessor


def build_train_dataloader(
    train_split: datasets.Dataset,
    processor: CLIPADAImageProcessor,
    batch_size: int,
    num_workers: int = 0,
    with_masks: bool = False,
) -> DataLoader:
    """Shuffled training batches at the processor's size.

    Images are decoded and resized once, before the first epoch, and cached by `datasets`: decoding a 900 px PNG
    every step would cost more than a GPU training step.

    Args:
        train_split: Rows with `image`, `mask`, `label`.
        processor: Sets the size.
        batch_size: Images per batch.
        num_workers: DataLoader workers.
        with_masks: False: only the normal images (anomalies are synthesised later); True: every image with its
            mask.

    Returns:
        Batches `{"pixels": (B, 3, H, W) uint8, "categories": list of B names}`, plus `"masks": (B, H, W) uint8
        {0, 1}` with masks.

    Raises:
        ValueError: If the split holds no usable image, or (with masks) an anomalous image has no mask.
    """
    labels = np.asarray(train_split["label"])
    if not with_masks and (labels != 0).any():
        train_split = train_split.select(np.flatnonzero(labels == 0))
    if with_masks and (labels != 0).any():
        anomalous = train_split.select(np.flatnonzero(labels != 0))
        missing = sum(mask is None for mask in anomalous["mask"])
        if missing:
            raise ValueError(f"{missing} anomalous images have no mask; training on real anomalies needs every mask")
    if len(train_split) == 0:
        raise ValueError("the split has no " + ("images" if with_masks else "normal images") + " to train on")
    return DataLoader(
        resize_once(train_split, processor, with_masks),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=_collate,
        num_workers=num_workers,
        drop_last=False,
    )


def resize_once(dataset: datasets.Dataset, processor: CLIPADAImageProcessor, with_masks: bool = False):
    """`image` (and `mask`) -> `pixels` uint8 `(3, H, W)` (and `masks` uint8 `(H, W)`) as torch tensors; the
    `category` column is kept."""
    height, width = processor.size["height"], processor.size["width"]

    def resize(batch: dict) -> dict:
        maps = batch["mask"] if with_masks else None
        inputs = processor(images=batch["image"], segmentation_maps=maps, do_normalize=False)
        resized = {
            "pixels": (inputs["pixel_values"] * 255).round().to(torch.uint8).numpy(),
            "category": batch["category"],
        }
        if with_masks:
            resized["masks"] = inputs["labels"].to(torch.uint8).numpy()
        return resized

    features = {
        "pixels": datasets.Array3D(shape=(3, height, width), dtype="uint8"),
        "category": datasets.Value("string"),
    }
    if with_masks:
        features["masks"] = datasets.Array2D(shape=(height, width), dtype="uint8")
    resized = dataset.map(
        resize,
        batched=True,
        batch_size=32,
        remove_columns=dataset.column_names,
        features=datasets.Features(features),
        desc=f"Resizing training images to {height}x{width} once",
    )
    return resized.with_format("torch")


def _collate(examples: list[dict]) -> dict:
    batch = {
        "pixels": torch.stack([example["pixels"] for example in examples]),
        "categories": [example["category"] for example in examples],
    }
    if "masks" in examples[0]:
        batch["masks"] = torch.stack([example["masks"] for example in examples])
    return batch


__all__ = ["build_train_dataloader", "resize_once"]
