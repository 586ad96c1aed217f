"""The dataset schema: columns, constants, the `Sample` record, the error type and the checks every layout shares."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import datasets

from inference.output_folder import OutputFolderError, safe_name

LABEL_NAMES = ("good", "anomaly")
DATASET_NAMES = ("mvtec_ad", "visa", "folder", "mvtec_ad2", "real_iad", "btad", "mpdd")
SPLIT_NAMES = ("train", "test")
# The ``label`` of a row whose label the dataset does not publish (MVTec AD 2's private test sets); `ClassLabel`'s
# "no label" value.
UNKNOWN_LABEL = -1
# The ``defect_type`` of such a row.
UNKNOWN_DEFECT_TYPE = "unknown"
REQUIRED_COLUMNS = ("image", "mask", "label", "category", "defect_type")
NORMAL_DEFECT_TYPE = "good"
# The one list of image file suffixes of the project (lower case; compare with `path.suffix.lower()`).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


class DatasetFormatError(ValueError):
    """Raised for any input that cannot be turned into an anomaly-detection dataset, or cannot be saved.

    The message names the offending file or folder and says what is wrong with it.
    """


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image of a raw dataset, located but not yet read.

    Attributes:
        split: ``"train"`` or ``"test"`` (MVTec AD 2 also ``"validation"``, ``"test_private"``,
            ``"test_private_mixed"``).
        image_file: Absolute path of the image file.
        mask_file: Absolute path of the mask file; ``None`` for normal images, and for anomalous images whose
            mask is not available (the folder layout allows them, see `has_ground_truth`).
        label: 0 for normal (``"good"``), 1 for anomalous images, `UNKNOWN_LABEL` (-1) where the dataset publishes
            no label (MVTec AD 2's private test sets).
        category: Category (MVTec-AD) or object (VisA) name.
        defect_type: Defect name, ``"good"`` for normal images.
        image_path: The image's path relative to the dataset root, posix style.
        line: The line of the csv that listed the image (VisA), for errors; ``None`` for folder layouts.
        extra: ``(column, value)`` pairs of the string columns a layout adds (the same names, in the same order, for
            every sample of one dataset): Real-IAD's ``sample_id``, ``view`` and ``anomaly_class``, MVTec AD 2's
            ``split_name``.
    """

    split: str
    image_file: Path
    mask_file: Path | None
    label: int
    category: str
    defect_type: str
    image_path: str
    line: int | None = None
    extra: tuple[tuple[str, str], ...] = ()


def anomaly_features(extra_columns: Sequence[str] = ()) -> datasets.Features:
    """Return the `datasets.Features` shared by every split this package produces.

    Args:
        extra_columns: Names of the string columns a layout adds after the shared ones (Real-IAD's ``sample_id``,
            ``view`` and ``anomaly_class``, MVTec AD 2's ``split_name``; see `Sample.extra`).

    Returns:
        The features of the columns ``image``, ``mask``, ``label``, ``category``, ``defect_type`` and
        ``image_path``, then the ``extra_columns``.
    """
    return datasets.Features(
        {
            "image": datasets.Image(),
            "mask": datasets.Image(),
            "label": datasets.ClassLabel(names=list(LABEL_NAMES)),
            "category": datasets.Value("string"),
            "defect_type": datasets.Value("string"),
            "image_path": datasets.Value("string"),
            **{name: datasets.Value("string") for name in extra_columns},
        }
    )


def has_ground_truth(label: int, mask: object | None) -> bool:
    """Tell whether a row's pixel ground truth is known.

    The schema has no extra column for "no mask available": a normal row's ``mask`` is ``None`` and means
    "no anomalous pixel", while an anomalous row whose ``mask`` is ``None`` has no ground-truth mask (the
    folder layout allows this; MVTec-AD and VisA never produce such rows). Such rows count for the image
    metrics only.

    Args:
        label: The row's ``label``, 0 for normal and 1 for anomalous.
        mask: The row's ``mask`` (an image, encoded bytes, a tensor, ...), or ``None``.

    Returns:
        ``False`` for an anomalous row without a mask, else ``True``.
    """
    return label == 0 or mask is not None


def select_categories(
    available: Sequence[str], requested: Sequence[str] | str | None, source: str | os.PathLike
) -> list[str]:
    """Check requested categories against the available ones.

    Args:
        available: The categories the dataset has.
        requested: The categories the user asked for (a single name is accepted); ``None`` means all.
        source: Where the categories were found, for error messages.

    Returns:
        The requested categories in the order given, without duplicates, or all available ones.

    Raises:
        DatasetFormatError: A requested category does not exist, or nothing is selected.
    """
    if requested is None:
        selected = list(available)
    else:
        requested = [requested] if isinstance(requested, str) else list(requested)
        unknown = [c for c in requested if c not in available]
        if unknown:
            raise DatasetFormatError(
                f"{source}: unknown categories {', '.join(map(repr, unknown))}; "
                f"available: {', '.join(available) or '(none)'}"
            )
        selected = list(dict.fromkeys(requested))
    if not selected:
        raise DatasetFormatError(f"{source}: no categories {'found' if requested is None else 'selected'}")
    return selected


def checked_name(value: str, field: str) -> str:
    """Return ``value`` when it can be one file name (categories, defect types and image names become output
    file names, e.g. ``predictions/<category>.npz``); raise naming ``field`` otherwise.

    Args:
        value: The name as the data gives it.
        field: Where it comes from, e.g. ``"<csv> line 12: column 'object'"`` or ``"<folder>: category folder name"``.

    Returns:
        ``value``.

    Raises:
        DatasetFormatError: ``value`` is empty, ``.`` or ``..``, holds a path separator or a control character, or
            is too long for a file name (the rule of `inference.output_folder.safe_name`).
    """
    try:
        return safe_name(value, field)
    except OutputFolderError as error:
        raise DatasetFormatError(str(error)) from None


def reject_repeated_images(samples: Sequence[Sample], listing: Path | None = None) -> None:
    """Raise when two samples are the same image file: a path listed twice, or one file reached again through
    another spelling of its path, a symbolic link or a hard link (train/test leakage, or one image with two labels).

    Args:
        samples: The located samples whose image files exist.
        listing: The csv that listed them (VisA; the error then names its two lines), or ``None`` for a folder
            layout (the error names the two paths).

    Raises:
        DatasetFormatError: Naming both rows (or paths) and what the repetition would do.
    """
    first_of: dict[tuple[int, int], Sample] = {}
    for sample in samples:
        identity = _file_identity(sample.image_file)
        if identity is None:
            continue  # unreadable: reading it reports the problem
        first = first_of.setdefault(identity, sample)
        if first is not sample:
            raise DatasetFormatError(_repetition_message(first, sample, listing))


def _file_identity(path: Path) -> tuple[int, int] | None:
    """The (device, inode) of the file ``path`` leads to, links followed; ``None`` when it cannot be read."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _repetition_message(first: Sample, second: Sample, listing: Path | None) -> str:
    """Say where one image file appears twice and why that is refused."""
    if first.split != second.split:
        problem = (
            f"is in both the {first.split} and {second.split} splits (an evaluation image would leak into training)"
        )
    elif first.label != second.label:
        problem = "is both normal and anomalous"
    else:
        problem = f"is listed twice in the {first.split} split (it would count twice)"
    if listing is not None:
        return (
            f"{listing} lines {first.line} and {second.line}: the same image file {second.image_file} {problem}; "
            "remove one of the rows"
        )
    return (
        f"{first.image_file} and {second.image_file}: the same image file (a link or another path to it) {problem}; "
        "keep one of them"
    )


def existing_dir(data_dir: str | os.PathLike) -> Path:
    """Return ``data_dir`` as a path, raising when it is not an existing folder.

    Args:
        data_dir: The folder given by the user.

    Returns:
        The folder, with ``~`` expanded.

    Raises:
        DatasetFormatError: ``data_dir`` is missing or a file.
    """
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DatasetFormatError(f"{path}: data_dir not found")
    if not path.is_dir():
        raise DatasetFormatError(f"{path}: data_dir is a file; expected a folder")
    return path


def subdirs(folder: Path) -> list[Path]:
    """Return the sorted non-hidden sub-folders of ``folder`` (none when it does not exist).

    Args:
        folder: The folder to list.

    Returns:
        Its sub-folders, sorted by name.
    """
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


__all__ = [
    "DATASET_NAMES",
    "IMAGE_EXTENSIONS",
    "LABEL_NAMES",
    "NORMAL_DEFECT_TYPE",
    "REQUIRED_COLUMNS",
    "SPLIT_NAMES",
    "UNKNOWN_DEFECT_TYPE",
    "UNKNOWN_LABEL",
    "DatasetFormatError",
    "Sample",
    "anomaly_features",
    "checked_name",
    "existing_dir",
    "has_ground_truth",
    "reject_repeated_images",
    "select_categories",
    "subdirs",
]
