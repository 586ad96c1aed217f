"""The MPDD (Metal Parts Defect Detection) layout: MVTec-AD's folders, six metal-part categories.

Layout (the MPDD download, as anomalib reads it with its MVTec-AD parser)::

    <category>/train/good/000.png
    <category>/test/{good,<defect>}/000.png
    <category>/ground_truth/<defect>/000_mask.png

The categories are bracket_black, bracket_brown, bracket_white, connector, metal_plate and tubes. The folders are
MVTec-AD's, so this module reads them with `training.data.mvtec` (every rule of that layout holds: masks paired by
stem, orphan masks refused, stray files ignored); it names MPDD in the errors and checks the category names, so a
typo in ``--categories`` lists MPDD's categories and a tree of other categories is not taken for MPDD silently.

Example:
    >>> from training.data.mpdd import build_mpdd
    >>> dataset = build_mpdd("/data/MPDD", categories=["tubes"])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import datasets

from .mvtec import build_mvtec_ad
from .schema import DatasetFormatError, existing_dir, subdirs

logger = logging.getLogger(__name__)

MPDD_CATEGORIES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")


def build_mpdd(
    data_dir: str | os.PathLike,
    categories: Sequence[str] | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.DatasetDict:
    """Build the `DatasetDict` of a raw MPDD folder (MVTec-AD's layout).

    Args:
        data_dir: The MPDD root (one folder per category) or a single category folder.
        categories: Keep only these categories (all when ``None``).
        cache_dir: Where `datasets` caches the Arrow files (defaults to the `datasets` cache).

    Returns:
        A `DatasetDict` with the splits ``train`` and ``test``.

    Raises:
        DatasetFormatError: A folder holding none of MPDD's categories, and every error of `build_mvtec_ad`.
    """
    root = existing_dir(data_dir)
    found = [root.resolve().name] if (root / "train" / "good").is_dir() else [d.name for d in subdirs(root)]
    if not set(found) & set(MPDD_CATEGORIES):
        raise DatasetFormatError(
            f"{root}: none of MPDD's categories ({', '.join(MPDD_CATEGORIES)}) found here; for MVTec-AD's own "
            "categories use --dataset mvtec_ad, for your own images --dataset folder"
        )
    others = sorted(set(found) - set(MPDD_CATEGORIES))
    if others:
        logger.warning("%s: folders that are not MPDD categories are read too: %s", root, ", ".join(others))
    return build_mvtec_ad(Path(root), categories, cache_dir=cache_dir)


__all__ = ["MPDD_CATEGORIES", "build_mpdd"]
