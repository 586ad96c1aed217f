"""The plain folder layout of your own data: ``train/good``, optional ``test/<defect>``, masks where you have them.

Layout (one category; its name is the folder's name)::

    widget/train/good/*.png            normal training images (required)
    widget/test/good/*.png             normal test images (optional)
    widget/test/<defect>/*.png         anomalous test images (optional)
    widget/ground_truth/<defect>/*     masks (optional): <stem>_mask.<ext> or <stem>.<ext>, paired by stem

Several categories are ``root/<category>/train/good/...``. Images are paired with masks as in MVTec-AD; an
anomalous image without a mask is kept with ``mask`` ``None`` (pixel metrics then leave it out), and a
folder without ``test/`` gives an empty test split (train-only).

Example:
    >>> from training.data.folder import build_folder_dataset
    >>> dataset = build_folder_dataset("/data/widget")  # widget/train/good, widget/test/{good,scratch}
    >>> dataset["test"].unique("defect_type")
    ['good', 'scratch']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import datasets

from .build import build_dataset_dict
from .mvtec import MASK_SUFFIX, category_root, list_images, mvtec_sample, reject_orphan_masks
from .schema import (
    NORMAL_DEFECT_TYPE,
    DatasetFormatError,
    Sample,
    checked_name,
    existing_dir,
    reject_repeated_images,
    select_categories,
    subdirs,
)

_LAYOUT_HINT = "expected train/good/ (one category) or <category>/train/good/ (several)"


def build_folder_dataset(
    data_dir: str | os.PathLike,
    categories: Sequence[str] | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.DatasetDict:
    """Build the `DatasetDict` of a plain folder of your own images (see the module docstring for the layout).

    Args:
        data_dir: A category folder (holding ``train/good``) or a folder of category folders.
        categories: Keep only these categories (all when ``None``).
        cache_dir: Where `datasets` caches the Arrow files (defaults to the `datasets` cache).

    Returns:
        A `DatasetDict` with the splits ``train`` and ``test`` (empty when no category has ``test/``).

    Raises:
        DatasetFormatError: A missing or empty ``train/good``, an empty ``test/``, an image directly in
            ``test/``, a mask without its image, a mask for a normal image, two masks for one image, a
            corrupt image or a mask whose size differs from its image.
    """
    root, available = _folder_root_and_categories(existing_dir(data_dir))
    selected = select_categories(available, categories, root)
    samples = [sample for category in selected for sample in _folder_category_samples(root, category)]
    reject_repeated_images(samples)
    return build_dataset_dict(samples, cache_dir)


def _folder_root_and_categories(data_dir: Path) -> tuple[Path, list[str]]:
    """Return the root and the category names; a folder holding ``train/good`` is its own one category."""
    if (data_dir / "train" / "good").is_dir():
        return category_root(data_dir)
    if (data_dir / "train").is_dir() or (data_dir / "test").is_dir():
        raise DatasetFormatError(f"{data_dir / 'train' / 'good'}: folder not found; {_LAYOUT_HINT}")
    categories = [d.name for d in subdirs(data_dir)]
    if not categories:
        raise DatasetFormatError(f"{data_dir}: no category folders; {_LAYOUT_HINT}")
    return data_dir, categories


def _folder_category_samples(root: Path, category: str) -> list[Sample]:
    """Locate the train images and the (optional) test images of one category."""
    checked_name(category, f"{root}: category folder name")
    train_dir = root / category / "train" / "good"
    if not train_dir.is_dir():
        raise DatasetFormatError(f"{train_dir}: folder not found; every category needs train/good/ (normal images)")
    images = list_images(train_dir).values()
    train = [mvtec_sample(root, "train", category, NORMAL_DEFECT_TYPE, image, None) for image in images]
    if not train:
        raise DatasetFormatError(f"{train_dir}: empty train split (no images)")
    return train + _folder_test_samples(root, category)


def _folder_test_samples(root: Path, category: str) -> list[Sample]:
    """Pair ``test/<defect>/<stem>.*`` with an optional mask in ``ground_truth/<defect>/``; none without test/."""
    test_dir, truth_dir = root / category / "test", root / category / "ground_truth"
    defects = [d.name for d in subdirs(test_dir)]
    loose = list(list_images(test_dir).values())
    if loose:
        raise DatasetFormatError(
            f"{loose[0]}: image directly in test/; put normal test images in test/good/ and anomalous ones in "
            "test/<defect>/"
        )
    samples = []
    for defect in defects:
        checked_name(defect, f"{test_dir}: defect folder name")
        images = list_images(test_dir / defect)
        masks = {} if defect == NORMAL_DEFECT_TYPE else _list_folder_masks(truth_dir / defect)
        for stem, image in images.items():
            samples.append(mvtec_sample(root, "test", category, defect, image, masks.get(stem)))
        reject_orphan_masks(masks, images, test_dir / defect)
    for defect in sorted({d.name for d in subdirs(truth_dir)} - set(defects) | {NORMAL_DEFECT_TYPE}):
        reject_orphan_masks(_list_folder_masks(truth_dir / defect), {}, test_dir / defect)
    if test_dir.is_dir() and not samples:
        raise DatasetFormatError(f"{test_dir}: empty test split (no images); remove it for a train-only dataset")
    return samples


def _list_folder_masks(folder: Path) -> dict[str, Path]:
    """Map image stem to mask path for ``<stem>_mask.*`` or ``<stem>.*`` files in ``folder``; never two per stem."""
    masks: dict[str, Path] = {}
    for stem, path in list_images(folder).items():
        image_stem = stem.removesuffix(MASK_SUFFIX)
        if image_stem in masks:
            raise DatasetFormatError(
                f"{path}: two masks for the image stem {image_stem!r} (other: {masks[image_stem]})"
            )
        masks[image_stem] = path
    return masks


__all__ = ["build_folder_dataset"]
