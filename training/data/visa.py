"""The VisA layout: read ``split_csv/1cls.csv`` (and each object's ``image_anno.csv``) into located samples."""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import datasets

from .build import build_dataset_dict
from .schema import (
    NORMAL_DEFECT_TYPE,
    SPLIT_NAMES,
    DatasetFormatError,
    Sample,
    checked_name,
    existing_dir,
    reject_repeated_images,
    select_categories,
)

logger = logging.getLogger(__name__)

VISA_SPLIT_CSV = PurePosixPath("split_csv/1cls.csv")
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_LABELS = {"normal": 0, "anomaly": 1}
VISA_ANNOTATION_CSV = "image_anno.csv"
# Defect type of a VisA anomaly whose category has no readable `image_anno.csv` entry.
VISA_UNKNOWN_DEFECT_TYPE = "anomaly"
_SKIP_MISSING_HINT = "pass allow_missing_files=True (CLI: --skip_missing_files) to keep only the rows whose files exist"


def build_visa(
    data_dir: str | os.PathLike,
    categories: Sequence[str] | None = None,
    *,
    allow_missing_files: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.DatasetDict:
    """Build the `DatasetDict` of a raw VisA folder through its ``split_csv/1cls.csv``.

    The defect type of an anomaly comes from ``<object>/image_anno.csv`` when it lists the image (VisA's
    own label, e.g. ``"bubble"``), otherwise it is ``"anomaly"``. Every path in the csv must lie inside
    ``data_dir`` once symlinks are resolved, so a csv cannot pull in other files of the machine; objects, defect
    labels and image file names must be single file names (see `checked_name`: they become output file names);
    and no image file may be listed twice (a duplicated row, train/test leakage, or normal and anomalous at once).

    Args:
        data_dir: The VisA root, holding ``split_csv/1cls.csv`` and one folder per object.
        categories: Keep only these objects (all when ``None``).
        allow_missing_files: Drop csv rows whose image or mask file is missing (partial downloads);
            objects left without any row are skipped. Without it a missing file is an error.
        cache_dir: Where `datasets` caches the Arrow files (defaults to the `datasets` cache).

    Returns:
        A `DatasetDict` with the splits ``train`` and ``test``.

    Raises:
        DatasetFormatError: A missing folder or csv, a csv that is not UTF-8 text, a malformed csv row, a
            path outside ``data_dir``, a name that is not a single file name, an image listed twice, a missing
            file, an unknown object, an empty split, a corrupt image or a mask whose size differs from its image.
    """
    root = existing_dir(data_dir)
    csv_file = root / VISA_SPLIT_CSV
    if not csv_file.is_file():
        raise DatasetFormatError(f"{csv_file}: VisA split csv not found")
    rows = _read_visa_rows(csv_file)
    available = sorted({row["object"] for row in rows})
    selected = select_categories(available, categories, csv_file)
    samples = [_visa_sample(root, csv_file, row) for row in rows if row["object"] in selected]
    samples = _drop_missing_files(samples) if allow_missing_files else _require_files(samples, csv_file)
    if not samples:
        raise DatasetFormatError(f"{csv_file}: none of the files listed for {', '.join(selected)} exist under {root}")
    if allow_missing_files and categories is None:
        selected = [c for c in selected if any(s.category == c for s in samples)]
    reject_repeated_images(samples, csv_file)
    samples = _with_visa_defect_types(root, samples)
    for category in selected:
        _check_category_splits(samples, category, csv_file)
    return build_dataset_dict(samples, cache_dir)


def _read_csv(csv_file: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Read a UTF-8 csv (BOM allowed) into its header and rows; each row gets the 1-based file ``line`` it starts
    on (a quoted field may span lines)."""
    try:
        with open(csv_file, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])  # reads the header line(s)
            rows, start = [], reader.line_num + 1
            for row in reader:
                rows.append({**row, "line": str(start)})
                start = reader.line_num + 1
            return header, rows
    except UnicodeDecodeError as error:
        raise DatasetFormatError(
            f"{csv_file}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start})"
        ) from error
    except csv.Error as error:
        raise DatasetFormatError(f"{csv_file}: not a readable csv file ({error})") from error


def _read_visa_rows(csv_file: Path) -> list[dict[str, str]]:
    """Read and check the VisA split csv; each row gets its 1-based file ``line`` number."""
    header, rows = _read_csv(csv_file)
    missing = [c for c in VISA_COLUMNS if c not in header]
    if missing:
        raise DatasetFormatError(f"{csv_file}: missing columns {', '.join(missing)}; expected {','.join(VISA_COLUMNS)}")
    rows = [{**{k: (row[k] or "").strip() for k in VISA_COLUMNS}, "line": row["line"]} for row in rows]
    for row in rows:
        _check_visa_row(csv_file, row)
    return rows


def _check_visa_row(csv_file: Path, row: dict[str, str]) -> None:
    """Raise when a split-csv row has an unknown split or label, an object or image name that is not a single
    file name, or a mask that does not fit its label."""
    where = f"{csv_file} line {row['line']}"
    if row["split"] not in SPLIT_NAMES:
        raise DatasetFormatError(f"{where}: unknown split {row['split']!r}; expected train or test")
    if row["label"] not in VISA_LABELS:
        raise DatasetFormatError(f"{where}: unknown label {row['label']!r}; expected normal or anomaly")
    if not row["object"] or not row["image"]:
        raise DatasetFormatError(f"{where}: empty object or image field")
    checked_name(row["object"], f"{where}: column 'object'")
    checked_name(PurePosixPath(row["image"].replace("\\", "/")).name, f"{where}: column 'image', file name")
    if row["label"] == "anomaly" and not row["mask"]:
        raise DatasetFormatError(f"{csv_file.parents[1] / row['image']}: anomalous image without its mask ({where})")
    if row["label"] == "normal" and row["mask"]:
        raise DatasetFormatError(f"{csv_file.parents[1] / row['mask']}: mask given for a normal image ({where})")


def _visa_sample(root: Path, csv_file: Path, row: dict[str, str]) -> Sample:
    """Describe the image of one split-csv row (its defect type is filled in later)."""
    image = _path_inside(root, row["image"].replace("\\", "/"), csv_file, row)
    mask = _path_inside(root, row["mask"].replace("\\", "/"), csv_file, row) if row["mask"] else None
    image_path = _relative_path(root, image)
    label = VISA_LABELS[row["label"]]
    defect = NORMAL_DEFECT_TYPE if label == 0 else VISA_UNKNOWN_DEFECT_TYPE
    return Sample(row["split"], image, mask, label, row["object"], defect, image_path, int(row["line"]))


def _path_inside(root: Path, relative: str, csv_file: Path, row: dict[str, str]) -> Path:
    """Return ``root / relative``, raising unless it lies inside ``root`` once symlinks are resolved."""
    path = root / relative
    if not path.resolve().is_relative_to(root.resolve()):
        raise DatasetFormatError(
            f"{csv_file} line {row['line']}: path {relative!r} lies outside the data_dir {root}; "
            "csv paths must be relative to it and stay inside it"
        )
    return path


def _relative_path(root: Path, path: Path) -> str:
    """``path`` (inside ``root``) relative to ``root``, posix style, without ``.`` or ``..`` parts: lexically when
    it stays inside ``root`` so, else (an absolute path reached through a link) after resolving links."""
    normal, base = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    if normal.is_relative_to(base):
        return normal.relative_to(base).as_posix()
    return path.resolve().relative_to(root.resolve()).as_posix()


def _require_files(samples: list[Sample], csv_file: Path) -> list[Sample]:
    """Raise for the first sample whose image or mask file is missing."""
    for sample in samples:
        for path in (sample.image_file, sample.mask_file):
            if path is not None and not path.is_file():
                raise DatasetFormatError(
                    f"{path}: file not found (listed in {csv_file}); for a partial download {_SKIP_MISSING_HINT}"
                )
    return samples


def _drop_missing_files(samples: list[Sample]) -> list[Sample]:
    """Keep the samples whose image (and mask, if any) exist."""
    kept = [s for s in samples if s.image_file.is_file() and (s.mask_file is None or s.mask_file.is_file())]
    if len(kept) < len(samples):
        logger.warning("Skipped %d of %d csv rows whose files are missing.", len(samples) - len(kept), len(samples))
    return kept


def _with_visa_defect_types(root: Path, samples: list[Sample]) -> list[Sample]:
    """Replace the placeholder defect type of anomalies by the label in ``<object>/image_anno.csv``."""
    names: dict[str, dict[str, str]] = {}
    result = []
    for sample in samples:
        if sample.label == 1:
            if sample.category not in names:
                names[sample.category] = _read_visa_annotations(root / sample.category / VISA_ANNOTATION_CSV)
            defect = names[sample.category].get(sample.image_path, VISA_UNKNOWN_DEFECT_TYPE)
            sample = dataclasses.replace(sample, defect_type=defect)
        result.append(sample)
    return result


def _read_visa_annotations(anno_file: Path) -> dict[str, str]:
    """Map image path to defect label from a VisA ``image_anno.csv`` (empty when the file is absent); every
    label must be a single file name (it becomes one, see `checked_name`)."""
    if not anno_file.is_file():
        return {}
    header, rows = _read_csv(anno_file)
    if not {"image", "label"} <= set(header):
        raise DatasetFormatError(f"{anno_file}: expected the columns image,label,mask")
    return {
        posixpath.normpath(row["image"].strip().replace("\\", "/")): checked_name(
            row["label"].strip(), f"{anno_file} line {row['line']}: column 'label'"
        )
        for row in rows
        if row["image"] and row["label"] and row["label"].strip() != "normal"
    }


def _check_category_splits(samples: list[Sample], category: str, source: Path) -> None:
    """Raise when a category has no train or no test image."""
    for split in SPLIT_NAMES:
        if not any(s.category == category and s.split == split for s in samples):
            raise DatasetFormatError(f"{source}: empty {split} split for category {category!r}")


__all__ = ["VISA_SPLIT_CSV", "build_visa"]
