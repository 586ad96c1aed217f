"""The BTAD (beanTech Anomaly Detection) layout: three products, ``ok``/``ko`` folders, mixed .bmp and .png files.

Layout (as the BTAD download and anomalib's loader have it)::

    <product>/train/ok/0000.bmp            normal training images (.bmp or .png: product 02 is .png)
    <product>/test/ok/*.bmp|png            normal test images
    <product>/test/ko/*.bmp|png            anomalous test images
    <product>/ground_truth/ko/<stem>.png   their masks, same stem as the image (.png or .bmp)

The products are ``01``, ``02`` and ``03``. ``ok`` becomes the defect type ``"good"``; anomalous images keep their
folder name, ``"ko"`` (BTAD names no defect types). An image and its mask are paired by stem whatever their
suffixes (an image 0000.bmp with the mask 0000.png).

Example:
    >>> from training.data.btad import build_btad
    >>> dataset = build_btad("/data/BTech_Dataset_transformed", categories=["01"])
    >>> dataset["test"].unique("defect_type")
    ['good', 'ko']
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import datasets

from .build import build_dataset_dict
from .mvtec import MASK_SUFFIX, category_root, list_images, mvtec_sample
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

BTAD_PRODUCTS = ("01", "02", "03")
NORMAL_FOLDER = "ok"
ANOMALOUS_FOLDER = "ko"


def build_btad(
    data_dir: str | os.PathLike,
    categories: Sequence[str] | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.DatasetDict:
    """Build the `DatasetDict` of a raw BTAD folder (see the module docstring for the layout).

    Args:
        data_dir: The BTAD root (one folder per product) or a single product folder.
        categories: Keep only these products (all when ``None``).
        cache_dir: Where `datasets` caches the Arrow files (defaults to the `datasets` cache).

    Returns:
        A `DatasetDict` with the splits ``train`` and ``test``.

    Raises:
        DatasetFormatError: A missing or empty ``train/ok`` or ``test``, a test folder other than ``ok`` and ``ko``,
            an anomalous image without its mask (or the reverse), two images or masks sharing a stem (0000.bmp and
            0000.png), an image listed twice, a corrupt image or a mask whose size differs from its image.
    """
    root, available = _root_and_products(existing_dir(data_dir))
    selected = select_categories(available, categories, root)
    samples = [sample for product in selected for sample in _product_samples(root, product)]
    reject_repeated_images(samples)
    return build_dataset_dict(samples, cache_dir)


def is_btad_product(folder: Path) -> bool:
    """Whether ``folder`` looks like one BTAD product (it holds ``train/ok/``)."""
    return (folder / "train" / NORMAL_FOLDER).is_dir()


def _root_and_products(data_dir: Path) -> tuple[Path, list[str]]:
    """The root and its product names; a product folder given as ``data_dir`` is its own one product."""
    if is_btad_product(data_dir):
        return category_root(data_dir)
    products = [d.name for d in subdirs(data_dir) if is_btad_product(d)]
    if not products:
        raise DatasetFormatError(f"{data_dir}: no BTAD product folders; expected <product>/train/ok/ (01, 02, 03)")
    return data_dir, products


def _product_samples(root: Path, product: str) -> list[Sample]:
    """The train and test images of one product, anomalous ones paired with their masks."""
    checked_name(product, f"{root}: product folder name")
    folder = root / product
    train_dir, test_dir, truth_dir = folder / "train" / NORMAL_FOLDER, folder / "test", folder / "ground_truth"
    train = [mvtec_sample(root, "train", product, NORMAL_DEFECT_TYPE, image, None) for image in _images(train_dir)]
    if not train:
        raise DatasetFormatError(f"{train_dir}: empty train split (no images)")
    if not test_dir.is_dir():
        raise DatasetFormatError(f"{test_dir}: folder not found; a BTAD product needs test/ok/ and test/ko/")
    unknown = [d for d in subdirs(test_dir) if d.name not in (NORMAL_FOLDER, ANOMALOUS_FOLDER)]
    if unknown:
        raise DatasetFormatError(f"{unknown[0]}: unexpected folder in test/; BTAD has ok/ and ko/")
    test = [mvtec_sample(root, "test", product, NORMAL_DEFECT_TYPE, i, None) for i in _images(test_dir / NORMAL_FOLDER)]
    anomalous = list_images(test_dir / ANOMALOUS_FOLDER)
    masks = _list_masks(truth_dir / ANOMALOUS_FOLDER)
    for stem, image in anomalous.items():
        if stem not in masks:
            raise DatasetFormatError(
                f"{image}: anomalous image without its mask (expected {truth_dir / ANOMALOUS_FOLDER / stem}.png)"
            )
        test.append(mvtec_sample(root, "test", product, ANOMALOUS_FOLDER, image, masks[stem]))
    for stem, mask in masks.items():
        if stem not in anomalous:
            raise DatasetFormatError(
                f"{mask}: mask without its image (expected {test_dir / ANOMALOUS_FOLDER / stem}.*)"
            )
    stray = [d for d in subdirs(truth_dir) if d.name != ANOMALOUS_FOLDER and list_images(d)]
    if stray:
        raise DatasetFormatError(f"{stray[0]}: masks outside ground_truth/{ANOMALOUS_FOLDER}/; only defects have masks")
    if not test:
        raise DatasetFormatError(f"{test_dir}: empty test split (no images)")
    return train + test


def _images(folder: Path) -> list[Path]:
    """The images directly in ``folder`` (.bmp and .png mixed), sorted by name."""
    return list(list_images(folder).values())


def _list_masks(folder: Path) -> dict[str, Path]:
    """Map image stem to mask path (``<stem>.png``, ``<stem>.bmp`` or ``<stem>_mask.*``; never two per stem)."""
    masks: dict[str, Path] = {}
    for stem, path in list_images(folder).items():
        image_stem = stem.removesuffix(MASK_SUFFIX)
        if image_stem in masks:
            raise DatasetFormatError(
                f"{path}: two masks for the image stem {image_stem!r} (other: {masks[image_stem]})"
            )
        masks[image_stem] = path
    return masks


__all__ = ["BTAD_PRODUCTS", "build_btad", "is_btad_product"]
