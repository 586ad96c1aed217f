"""Training batches: the normal images of the train split, decoded and resized once, as uint8 tensors.

Example:
    ```python
    >>> loader = build_train_dataloader(dataset["train"], CLIPADAImageProcessor(size=224), batch_size=16)
    >>> next(iter(loader)).shape  # (16, 3, 224, 224) uint8
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
) -> DataLoader:
    """Shuffled batches `(B, 3, H, W)` uint8 of the split's normal images at the processor's size.

    Images are decoded and resized once, before the first epoch, and cached by `datasets`: decoding a 900 px PNG
    every step would cost more than a GPU training step. Anomalous rows are dropped: training sees no real anomaly.

    Raises:
        ValueError: If the split holds no normal image.
    """
    labels = np.asarray(train_split["label"])
    if (labels != 0).any():
        train_split = train_split.select(np.flatnonzero(labels == 0))
    if len(train_split) == 0:
        raise ValueError("the train split has no normal images")
    return DataLoader(
        resize_once(train_split, processor),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=_stack_pixels,
        num_workers=num_workers,
        drop_last=False,
    )


def resize_once(dataset: datasets.Dataset, processor: CLIPADAImageProcessor) -> datasets.Dataset:
    """`image` column -> `pixels` column, uint8 `(3, H, W)` at the processor's size, as torch tensors."""
    height, width = processor.size["height"], processor.size["width"]

    def resize(batch: dict) -> dict:
        pixels = processor(images=batch["image"], do_normalize=False)["pixel_values"]
        return {"pixels": (pixels * 255).round().to(torch.uint8).numpy()}

    features = datasets.Features({"pixels": datasets.Array3D(shape=(3, height, width), dtype="uint8")})
    resized = dataset.map(
        resize,
        batched=True,
        batch_size=32,
        remove_columns=dataset.column_names,
        features=features,
        desc=f"Resizing training images to {height}x{width} once",
    )
    return resized.with_format("torch")


def _stack_pixels(examples: list[dict]) -> torch.Tensor:
    return torch.stack([example["pixels"] for example in examples])


__all__ = ["build_train_dataloader", "resize_once"]
