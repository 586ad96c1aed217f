"""The MVTec AD 2 layout: eight scenarios, five official splits, private test sets without labels.

Layout (from the dataset's own loader and submission checker, ``MVTecAD2_public_code_utils``)::

    <scenario>/train/good/000_regular.png                      normal training images
    <scenario>/validation/good/000_regular.png                 normal validation images (SegF1's threshold)
    <scenario>/test_public/good/*.png                          normal test images
    <scenario>/test_public/bad/*.png                           anomalous test images
    <scenario>/test_public/ground_truth/bad/<stem>_mask.png    their masks (0/255)
    <scenario>/test_private/000_regular.png                    no labels, no masks (scored by the server)
    <scenario>/test_private_mixed/000_mixed.png                no labels, no masks (seen and unseen lighting)

The scenarios are can, fabric, fruit_jelly, rice, sheet_metal, vial, wallplugs and walnuts. The built `DatasetDict`
has the splits ``train``, ``validation``, ``test`` (the official ``test_public``, so training and ``clipada eval``
use it as any test split), ``test_private`` and ``test_private_mixed``; the column ``split_name`` keeps the official
folder name of every row. Private rows have ``label`` -1 (`UNKNOWN_LABEL`, `datasets.ClassLabel`'s "no label"),
``defect_type`` ``"unknown"`` and no mask. MVTec AD 2 names no defect types: anomalous rows are ``"bad"``.

Example:
    >>> from training.data.mvtec_ad2 import build_mvtec_ad2
    >>> dataset = build_mvtec_ad2("/data/mvtec_ad_2", categories=["can"])
    >>> list(dataset)
    ['train', 'validation', 'test', 'test_private', 'test_private_mixed']
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import datasets

from .build import build_dataset_dict
from .mvtec import MASK_SUFFIX, category_root, list_images, mvtec_sample, reject_orphan_masks
from .schema import (
    NORMAL_DEFECT_TYPE,
    UNKNOWN_DEFECT_TYPE,
    UNKNOWN_LABEL,
    DatasetFormatError,
    Sample,
    checked_name,
    existing_dir,
    reject_repeated_images,
    select_categories,
    subdirs,
)

logger = logging.getLogger(__name__)

MVTEC_AD2_SCENARIOS = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")
# The official split folders, and the `DatasetDict` split each becomes.
LABELLED_SPLITS = {"train": "train", "validation": "validation", "test_public": "test"}
PRIVATE_SPLITS = {"test_private": "test_private", "test_private_mixed": "test_private_mixed"}
MVTEC_AD2_SPLITS = tuple(LABELLED_SPLITS.values()) + tuple(PRIVATE_SPLITS.values())
# The defect folder of test_public (MVTec AD 2 does not name defect types).
ANOMALOUS_FOLDER = "bad"
SPLIT_NAME_COLUMN = "split_name"


def build_mvtec_ad2(
    data_dir: str | os.PathLike,
    categories: Sequence[str] | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.DatasetDict:
    """Build the `DatasetDict` of a raw MVTec AD 2 folder (see the module docstring for the layout).

    Args:
        data_dir: The MVTec AD 2 root (one folder per scenario) or a single scenario folder.
        categories: Keep only these scenarios (all when ``None``).
        cache_dir: Where `datasets` caches the Arrow files (defaults to the `datasets` cache).

    Returns:
        A `DatasetDict` with the splits ``train``, ``validation``, ``test``, ``test_private`` and
        ``test_private_mixed`` (a private split the download lacks is empty, with a warning).

    Raises:
        DatasetFormatError: A missing or empty ``train/good``, ``validation/good`` or ``test_public``, a folder in
            ``test_public`` other than ``good``, ``bad`` and ``ground_truth``, an anomalous image without its mask (or
            the reverse), sub-folders in a private test set, an image listed twice, a corrupt image or a mask whose
            size differs from its image.
    """
    root, available = _root_and_scenarios(existing_dir(data_dir))
    selected = select_categories(available, categories, root)
    samples = [sample for scenario in selected for sample in _scenario_samples(root, scenario)]
    reject_repeated_images(samples)
    return build_dataset_dict(samples, cache_dir, MVTEC_AD2_SPLITS)


def is_mvtec_ad2_scenario(folder: Path) -> bool:
    """Whether ``folder`` looks like one MVTec AD 2 scenario (it holds ``test_public/`` or ``validation/``)."""
    return (folder / "test_public").is_dir() or (folder / "validation" / "good").is_dir()


def _root_and_scenarios(data_dir: Path) -> tuple[Path, list[str]]:
    """The root and its scenario names; a scenario folder given as ``data_dir`` is its own one scenario."""
    if is_mvtec_ad2_scenario(data_dir):
        return category_root(data_dir)
    scenarios = [d.name for d in subdirs(data_dir) if is_mvtec_ad2_scenario(d)]
    if not scenarios:
        raise DatasetFormatError(
            f"{data_dir}: no MVTec AD 2 scenario folders; expected <scenario>/train/good/, <scenario>/validation/good/ "
            f"and <scenario>/test_public/ (scenarios: {', '.join(MVTEC_AD2_SCENARIOS)})"
        )
    return data_dir, scenarios


def _scenario_samples(root: Path, scenario: str) -> list[Sample]:
    """Every image of one scenario, in the official split order."""
    checked_name(scenario, f"{root}: scenario folder name")
    folder = root / scenario
    samples = []
    for official in ("train", "validation"):
        good_dir = folder / official / NORMAL_DEFECT_TYPE
        if not good_dir.is_dir():
            raise DatasetFormatError(f"{good_dir}: folder not found; an MVTec AD 2 scenario needs {official}/good/")
        images = list_images(good_dir).values()
        if not images:
            raise DatasetFormatError(f"{good_dir}: empty {official} split (no images)")
        samples += [_labelled(root, official, scenario, NORMAL_DEFECT_TYPE, image, None) for image in images]
    samples += _public_test_samples(root, scenario)
    for official in PRIVATE_SPLITS:
        samples += _private_samples(root, scenario, official)
    return samples


def _public_test_samples(root: Path, scenario: str) -> list[Sample]:
    """``test_public/{good,bad}`` with the masks of ``test_public/ground_truth/bad``."""
    test_dir = root / scenario / "test_public"
    if not test_dir.is_dir():
        raise DatasetFormatError(f"{test_dir}: folder not found; an MVTec AD 2 scenario needs test_public/")
    truth_dir = test_dir / "ground_truth"
    unknown = [
        d.name for d in subdirs(test_dir) if d.name not in (NORMAL_DEFECT_TYPE, ANOMALOUS_FOLDER, truth_dir.name)
    ]
    if unknown:
        raise DatasetFormatError(
            f"{test_dir / unknown[0]}: unexpected folder in test_public/; MVTec AD 2 has good/, bad/ and ground_truth/"
        )
    samples = []
    for defect in (NORMAL_DEFECT_TYPE, ANOMALOUS_FOLDER):
        images = list_images(test_dir / defect)
        masks = {} if defect == NORMAL_DEFECT_TYPE else _list_masks(truth_dir / defect)
        for stem, image in images.items():
            if defect != NORMAL_DEFECT_TYPE and stem not in masks:
                expected = truth_dir / defect / f"{stem}{MASK_SUFFIX}.png"
                raise DatasetFormatError(f"{image}: anomalous image without its mask (expected {expected})")
            samples.append(_labelled(root, "test_public", scenario, defect, image, masks.get(stem)))
        reject_orphan_masks(masks, images, test_dir / defect)
    for defect in sorted({d.name for d in subdirs(truth_dir)} - {ANOMALOUS_FOLDER}):
        reject_orphan_masks(_list_masks(truth_dir / defect), {}, test_dir / defect)
    if not samples:
        raise DatasetFormatError(f"{test_dir}: empty test_public split (no images in good/ or bad/)")
    return samples


def _private_samples(root: Path, scenario: str, official: str) -> list[Sample]:
    """The images directly in a private test folder: no label, no mask (an absent folder gives none)."""
    folder = root / scenario / official
    if not folder.is_dir():
        logger.warning("%s: not found; the %s split of %s stays empty", folder, official, scenario)
        return []
    nested = subdirs(folder)
    if nested:
        raise DatasetFormatError(
            f"{nested[0]}: folder inside {official}/; the private test images lie directly in it (no labels)"
        )
    samples = []
    for image in list_images(folder).values():
        sample = mvtec_sample(root, PRIVATE_SPLITS[official], scenario, UNKNOWN_DEFECT_TYPE, image, None)
        samples.append(dataclasses.replace(sample, label=UNKNOWN_LABEL, extra=((SPLIT_NAME_COLUMN, official),)))
    return samples


def _labelled(root: Path, official: str, scenario: str, defect: str, image: Path, mask: Path | None) -> Sample:
    """One image of a labelled split (train, validation, test_public)."""
    sample = mvtec_sample(root, LABELLED_SPLITS[official], scenario, defect, image, mask)
    return dataclasses.replace(sample, extra=((SPLIT_NAME_COLUMN, official),))


def _list_masks(folder: Path) -> dict[str, Path]:
    """Map image stem to mask path for the ``<stem>_mask.*`` files in ``folder``; any other name is refused."""
    masks = {}
    for stem, path in list_images(folder).items():
        if not stem.endswith(MASK_SUFFIX):
            raise DatasetFormatError(f"{path}: mask name without the {MASK_SUFFIX} suffix (expected <image stem>_mask)")
        masks[stem.removesuffix(MASK_SUFFIX)] = path
    return masks


__all__ = [
    "MVTEC_AD2_SCENARIOS",
    "MVTEC_AD2_SPLITS",
    "PRIVATE_SPLITS",
    "SPLIT_NAME_COLUMN",
    "build_mvtec_ad2",
    "is_mvtec_ad2_scenario",
]
