"""The MVTec-AD layout: locate every image of a raw folder and pair each anomalous image with its mask."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import datasets

from .build import build_dataset_dict
from .schema import (
    IMAGE_EXTENSIONS,
    NORMAL_DEFECT_TYPE,
    DatasetFormatError,
    Sample,
    checked_name,
    existing_dir,
    reject_repeated_images,
    select_categories,
    subdirs,
)

MASK_SUFFIX = "_mask"
_FOLDER_HINT = "for your own images, where masks and test/ are optional, use dataset='folder' (CLI: --dataset folder)"


def build_mvtec_ad(
    data_dir: str | os.PathLike,
    categories: Sequence[str] | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.DatasetDict:
    """Build the `DatasetDict` of a raw MVTec-AD folder.

    ``train`` holds ``<category>/train/good``; ``test`` holds ``<category>/test/*``, each anomalous image
    paired by file stem with ``<category>/ground_truth/<defect>/<stem>_mask.png``. Stray files
    (readme.txt, license.txt, .DS_Store, anything that is not an image) are ignored at every level.

    Args:
        data_dir: The MVTec-AD root (holding one folder per category) or a single category folder.
        categories: Keep only these categories (all when ``None``).
        cache_dir: Where `datasets` caches the Arrow files (defaults to the `datasets` cache).

    Returns:
        A `DatasetDict` with the splits ``train`` and ``test``.

    Raises:
        DatasetFormatError: A missing folder, an unknown category, an image without its mask (or the
            reverse), an empty split, a corrupt image or a mask whose size differs from its image.
    """
    root, available = _mvtec_root_and_categories(existing_dir(data_dir))
    selected = select_categories(available, categories, root)
    samples = [sample for category in selected for sample in _mvtec_category_samples(root, category)]
    reject_repeated_images(samples)
    return build_dataset_dict(samples, cache_dir)


def _mvtec_root_and_categories(data_dir: Path) -> tuple[Path, list[str]]:
    """Return the MVTec-AD root and its category names; a category folder is its own one-category root."""
    if (data_dir / "train" / "good").is_dir():
        return category_root(data_dir)
    categories = [d.name for d in subdirs(data_dir)]
    if not categories:
        raise DatasetFormatError(f"{data_dir}: no category folders; expected <category>/train/good/ (MVTec-AD)")
    return data_dir, categories


def category_root(category_dir: Path) -> tuple[Path, list[str]]:
    """Return the root of a category folder given as the dataset root, and its one category name.

    The path is made absolute lexically (``"."`` and ``".."`` are resolved, symbolic links are not), so the
    category is the folder's own name, never ``".."``.
    """
    category_dir = Path(os.path.abspath(category_dir))
    return category_dir.parent, [category_dir.name]


def _mvtec_category_samples(root: Path, category: str) -> list[Sample]:
    """Locate every train and test image of one MVTec-AD category and pair test images with masks."""
    checked_name(category, f"{root}: category folder name")
    category_dir = root / category
    train_dir, test_dir = category_dir / "train" / "good", category_dir / "test"
    if not train_dir.is_dir():
        raise DatasetFormatError(f"{train_dir}: folder not found; an MVTec-AD category needs train/good/")
    train = [mvtec_sample(root, "train", category, "good", image, None) for image in list_images(train_dir).values()]
    if not train:
        raise DatasetFormatError(f"{train_dir}: empty train split (no images)")
    if not test_dir.is_dir():
        raise DatasetFormatError(
            f"{test_dir}: folder not found; an MVTec-AD category needs train/good/, test/ and ground_truth/ "
            f"(is this a complete download?); {_FOLDER_HINT}"
        )
    test = _mvtec_test_samples(root, category)
    if not test:
        raise DatasetFormatError(f"{test_dir}: empty test split (no images)")
    return train + test


def _mvtec_test_samples(root: Path, category: str) -> list[Sample]:
    """Pair ``test/<defect>/<stem>.*`` with ``ground_truth/<defect>/<stem>_mask.*`` for one category."""
    test_dir, truth_dir = root / category / "test", root / category / "ground_truth"
    defects = [d.name for d in subdirs(test_dir)]
    samples = []
    for defect in defects:
        checked_name(defect, f"{test_dir}: defect folder name")
        images = list_images(test_dir / defect)
        masks = {} if defect == NORMAL_DEFECT_TYPE else _list_masks(truth_dir / defect)
        for stem, image in images.items():
            if defect != NORMAL_DEFECT_TYPE and stem not in masks:
                expected = truth_dir / defect / f"{stem}{MASK_SUFFIX}.png"
                raise DatasetFormatError(
                    f"{image}: anomalous image without its mask (expected {expected}); {_FOLDER_HINT}"
                )
            samples.append(mvtec_sample(root, "test", category, defect, image, masks.get(stem)))
        reject_orphan_masks(masks, images, test_dir / defect)
    without_images = {d.name for d in subdirs(truth_dir)} - set(defects)
    for defect in sorted(without_images | {NORMAL_DEFECT_TYPE}):  # masks of missing folders or of normal images
        reject_orphan_masks(_list_masks(truth_dir / defect), {}, test_dir / defect)
    return samples


def reject_orphan_masks(masks: dict[str, Path], images: dict[str, Path], image_dir: Path) -> None:
    """Raise for the first mask whose stem has no image in ``image_dir``."""
    for stem, mask in masks.items():
        if stem not in images:
            if image_dir.name == NORMAL_DEFECT_TYPE:
                raise DatasetFormatError(f"{mask}: mask for normal ('good') images; only defects have masks")
            raise DatasetFormatError(f"{mask}: mask without its image (expected {image_dir / stem}.png)")


def mvtec_sample(root: Path, split: str, category: str, defect: str, image: Path, mask: Path | None) -> Sample:
    """Describe one MVTec-AD image (its file name must be a safe file name, see `checked_name`)."""
    checked_name(image.name, f"{image.parent}: image file name")
    label = 0 if defect == NORMAL_DEFECT_TYPE else 1
    relative = image.relative_to(root).as_posix()
    return Sample(split, image, mask, label, category, defect, relative)


def list_images(folder: Path) -> dict[str, Path]:
    """Map file stem to image path for the image files directly in ``folder`` (sorted, strays ignored).

    Raises:
        DatasetFormatError: Two images share a stem, or an image name is a broken symbolic link (its target is
            missing: the image would be left out silently).
    """
    images: dict[str, Path] = {}
    if not folder.is_dir():
        return images
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.is_symlink() and not path.exists():
            raise DatasetFormatError(f"{path}: broken symbolic link (its target {os.readlink(path)} does not exist)")
        if not path.is_file():
            continue
        if path.stem in images:
            raise DatasetFormatError(f"{path}: two images share the stem {path.stem!r} (other: {images[path.stem]})")
        images[path.stem] = path
    return images


def _list_masks(folder: Path) -> dict[str, Path]:
    """Map image stem to mask path for ``<stem>_mask.*`` files in ``folder`` (a missing folder is empty)."""
    return {
        (stem[: -len(MASK_SUFFIX)] if stem.endswith(MASK_SUFFIX) else stem): path
        for stem, path in list_images(folder).items()
    }


__all__ = ["MASK_SUFFIX", "build_mvtec_ad", "category_root", "list_images", "mvtec_sample", "reject_orphan_masks"]
