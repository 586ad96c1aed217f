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

    Ours means it holds our marker and nothing besides what `save_dataset_atomically` wrote there: a file a user
    added to a saved dataset is never replaced, flag or not.

    Args:
        output_dir: The folder to create or replace.
        overwrite: Allow replacing a dataset folder written earlier by `save_dataset_atomically`.

    Raises:
        DatasetFormatError: ``output_dir`` is a file, a non-empty folder that is not a dataset of ours, a dataset of
            ours holding entries we did not write, or a dataset of ours while ``overwrite`` is false.
    """
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise DatasetFormatError(f"{output_dir}: output path is a file; expected a folder")
    present = sorted(path.name for path in output_dir.iterdir())
    if not present:
        return
    if not is_our_dataset(output_dir):
        raise DatasetFormatError(
            f"{output_dir}: output folder is not empty and not a saved dataset of ours (no {DATASET_MARKER}); "
            "refusing to replace it"
        )
    foreign = [name for name in present if name != DATASET_MARKER and name not in _own_entries(output_dir)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise DatasetFormatError(
            f"{output_dir}: output folder holds files prepare-dataset did not write ({shown}); move them or choose "
            "another folder (nothing is replaced there, even with --overwrite_output_dir)"
        )
    if not overwrite:
        raise DatasetFormatError(f"{output_dir}: output folder holds a dataset saved earlier; {_OVERWRITE_HINT}")


def _own_entries(dataset_dir: Path) -> set[str]:
    """The top-level names `save_dataset_atomically` wrote into ``dataset_dir``: those its marker lists, or (a marker
    written before markers listed them) ``dataset_dict.json`` and the split folders it names; none when unreadable."""
    marker = _read_json(dataset_dir / DATASET_MARKER)
    entries = marker.get("entries") if isinstance(marker, dict) else None
    if isinstance(entries, list) and all(isinstance(entry, str) for entry in entries):
        return set(entries)
    splits = _read_json(dataset_dir / "dataset_dict.json")
    splits = splits.get("splits") if isinstance(splits, dict) else None
    if not isinstance(splits, list) or not all(isinstance(split, str) for split in splits):
        return set()
    return {"dataset_dict.json", *splits}


def _read_json(path: Path) -> object:
    """The JSON value of ``path``; ``None`` when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def save_dataset_atomically(
    dataset_dict: datasets.DatasetDict, output_dir: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Save a `DatasetDict` with `save_to_disk` so that ``output_dir`` is either complete or untouched.

    The dataset and its marker file are written to a staging folder beside ``output_dir`` and swapped into
    place (`inference.atomic.atomic_dir`). An existing ``output_dir`` is replaced only when it is empty, or
    a dataset saved earlier by this function (holding nothing else) and ``overwrite`` is set, so a re-run never
    wipes a folder (or files a user added) by accident.

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
        entries = sorted(path.name for path in staging.iterdir())
        marker = {"format": "clipada-anomaly-dataset", "version": DATASET_FORMAT_VERSION, "entries": entries}
        (staging / DATASET_MARKER).write_text(json.dumps(marker) + "\n")
    return output_dir


__all__ = ["DATASET_MARKER", "check_output_dir", "is_our_dataset", "save_dataset_atomically"]
