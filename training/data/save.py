"""Saving a `DatasetDict` atomically, marked as ours, and refusing to replace any folder that is not."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets

from inference.atomic import atomic_dir

from .schema import DatasetFormatError

# Written into every dataset folder we save; only a folder holding it may be replaced (with overwrite).
DATASET_MARKER = ".clipada_dataset.json"
DATASET_FORMAT_VERSION = 1
_OVERWRITE_HINT = "pass overwrite=True (CLI: --overwrite_output_dir) to replace it"


def is_our_dataset(path: Path) -> bool:
    """Tell whether ``path`` is a dataset folder written by `save_dataset_atomically` (it holds our marker).

    Args:
        path: The folder to inspect.

    Returns:
        Whether ``path/.clipada_dataset.json`` exists.
    """
    return (path / DATASET_MARKER).is_file()


def check_output_dir(output_dir: Path, overwrite: bool = False) -> None:
    """Raise unless ``output_dir`` may be written: absent, an empty folder, or (with ``overwrite``) ours.

    Args:
        output_dir: The folder to create or replace.
        overwrite: Allow replacing a dataset folder written earlier by `save_dataset_atomically`.

    Raises:
        DatasetFormatError: ``output_dir`` is a file, a non-empty folder that is not a dataset of ours, or
            a dataset of ours while ``overwrite`` is false.
    """
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise DatasetFormatError(f"{output_dir}: output path is a file; expected a folder")
    if not any(output_dir.iterdir()):
        return
    if not is_our_dataset(output_dir):
        raise DatasetFormatError(
            f"{output_dir}: output folder is not empty and not a saved dataset of ours (no {DATASET_MARKER}); "
            "refusing to replace it"
        )
    if not overwrite:
        raise DatasetFormatError(f"{output_dir}: output folder holds a dataset saved earlier; {_OVERWRITE_HINT}")


def save_dataset_atomically(
    dataset_dict: datasets.DatasetDict, output_dir: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Save a `DatasetDict` with `save_to_disk` so that ``output_dir`` is either complete or untouched.

    The dataset and its marker file are written to a staging folder beside ``output_dir`` and swapped into
    place (`inference.atomic.atomic_dir`). An existing ``output_dir`` is replaced only when it is empty, or
    a dataset saved earlier by this function and ``overwrite`` is set, so a re-run never wipes a folder
    (or files a user added) by accident.

    Args:
        dataset_dict: The dataset to save.
        output_dir: The folder to create or replace.
        overwrite: Replace a dataset saved earlier by this function.

    Returns:
        The path of the saved dataset.

    Raises:
        DatasetFormatError: ``output_dir`` may not be replaced (see `check_output_dir`).
        OSError: The dataset cannot be written; ``output_dir`` is then left as it was.
    """
    output_dir = Path(output_dir).expanduser().absolute()
    check_output_dir(output_dir, overwrite)
    with atomic_dir(output_dir) as staging:
        # an empty split (a train-only folder) needs one shard: by default `datasets` writes none and cannot reload it
        empty_splits = {name: 1 for name, split in dataset_dict.items() if len(split) == 0}
        dataset_dict.save_to_disk(str(staging), num_shards=empty_splits)
        marker = {"format": "clipada-anomaly-dataset", "version": DATASET_FORMAT_VERSION}
        (staging / DATASET_MARKER).write_text(json.dumps(marker) + "\n")
    return output_dir


__all__ = ["DATASET_MARKER", "check_output_dir", "is_our_dataset", "save_dataset_atomically"]
