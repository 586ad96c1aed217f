"""Write tiny fake MVTec-AD, VisA and own-image folder trees (optionally with one injected defect) for offline tests.

Example:
    >>> tree = write_mvtec_tree(tmp_path / "mvtec", bad_case="missing_mask")
    >>> tree.bad_file  # the file the loader's error message must name
    PosixPath('.../mvtec/bottle/test/crack/001.png')
"""

from __future__ import annotations

import csv
import dataclasses
import shutil
import struct
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

MVTEC_BAD_CASES = (
    "missing_mask",  # an anomalous image without its ground-truth mask
    "orphan_mask",  # a mask whose test image is missing
    "mask_size",  # a mask whose size differs from its image
    "corrupt_image",  # an image file holding garbage
    "truncated_image",  # a PNG cut in half
    "empty_train",  # train/good holds no image (only a .DS_Store)
    "no_test",  # the category has no test/ folder
    "empty_image",  # an image file of 0 bytes
    "zero_size_image",  # a PNG whose header says 0x0 pixels
)
VISA_BAD_CASES = (
    "missing_file",  # a csv row pointing at an image that does not exist
    "missing_mask_file",  # a csv row pointing at a mask that does not exist
    "missing_mask",  # an anomaly row with an empty mask column
    "mask_size",  # a mask whose size differs from its image
    "corrupt_image",  # an image file holding garbage
    "truncated_image",  # a JPEG cut in half
    "empty_train",  # an object without train rows
    "csv_not_utf8",  # the split csv holds a Latin-1 byte
    "absolute_path",  # a csv row naming an image outside the root by its absolute path
    "parent_path",  # a csv row naming an image outside the root through ../
)
VISA_HEADER = ("object", "split", "label", "image", "mask")
FOLDER_BAD_CASES = (
    "missing_train",  # the category has no train/good folder
    "orphan_mask",  # a mask in ground_truth/<defect>/ whose test image does not exist
    "mask_size",  # a mask whose size differs from its image
    "corrupt_image",  # an image file holding garbage
)
FOLDER_MASKS = ("none", "all", "mixed")


@dataclasses.dataclass
class FakeTree:
    """A fake dataset tree on disk.

    Attributes:
        root: The dataset root.
        bad_file: The file or folder an injected defect concerns (its error must name it), else ``None``.
    """

    root: Path
    bad_file: Path | None = None


def counts(dataset_dict) -> dict[str, dict[tuple[str, str], int]]:
    """Rows per split and (category, defect_type) of a built `datasets.DatasetDict`."""
    return {name: dict(Counter(zip(s["category"], s["defect_type"]))) for name, s in dataset_dict.items()}


def write_mvtec_tree(
    root: str | Path,
    categories: Sequence[str] = ("bottle", "grid"),
    *,
    defects: Sequence[str] = ("crack", "scratch"),
    num_train: int = 2,
    num_test_good: int = 1,
    num_per_defect: int = 2,
    size: tuple[int, int] = (20, 16),
    grayscale: Sequence[str] = ("grid",),
    bad_case: str | None = None,
) -> FakeTree:
    """Write a fake MVTec-AD tree with stray files, nested .DS_Store files and grayscale categories.

    Args:
        root: Folder to create.
        categories: Category folders to write.
        defects: Defect folders of every category (numbering restarts at 000 in each).
        num_train: Images in ``train/good``.
        num_test_good: Images in ``test/good``.
        num_per_defect: Images (and masks) per defect.
        size: Image size as (width, height).
        grayscale: Categories whose images are single-channel (mode ``L``), like grid/screw/zipper.
        bad_case: One of `MVTEC_BAD_CASES`, injected into the first category and defect.

    Returns:
        The written tree.
    """
    root = Path(root)
    _write_strays(root, ("readme.txt", "license.txt", ".DS_Store"))
    rng = np.random.default_rng(0)
    for category in categories:
        mode = "L" if category in grayscale else "RGB"
        category_dir = root / category
        _write_strays(category_dir, (".DS_Store", "readme.txt"))
        _write_images(category_dir / "train" / "good", num_train, size, mode, rng)
        _write_images(category_dir / "test" / "good", num_test_good, size, mode, rng)
        for defect in defects:
            _write_images(category_dir / "test" / defect, num_per_defect, size, mode, rng)
            for index in range(num_per_defect):
                _write_mask(category_dir / "ground_truth" / defect / f"{index:03d}_mask.png", size, index, 255)
            _write_strays(category_dir / "ground_truth" / defect, (".DS_Store",))
    bad_file = _inject_mvtec(root / categories[0], defects[0], bad_case) if bad_case else None
    return FakeTree(root, bad_file)


def write_visa_tree(
    root: str | Path,
    objects: Sequence[str] = ("candle", "pcb1"),
    *,
    num_train: int = 2,
    num_test_normal: int = 1,
    num_anomaly: int = 2,
    size: tuple[int, int] = (24, 16),
    missing_rows: int = 0,
    bad_case: str | None = None,
) -> FakeTree:
    """Write a fake VisA tree: a CRLF ``split_csv/1cls.csv``, upper-case ``.JPG`` images, defect-id masks.

    Args:
        root: Folder to create.
        objects: Object folders to write.
        num_train: Normal train images per object.
        num_test_normal: Normal test images per object.
        num_anomaly: Anomalous test images per object (masks hold the defect ids 1 and 2).
        size: Image size as (width, height).
        missing_rows: Extra csv rows per object (and for an object ``absent`` without any folder) whose
            files do not exist, as in a partial download.
        bad_case: One of `VISA_BAD_CASES`, injected into the first object.

    Returns:
        The written tree.
    """
    root = Path(root)
    rng = np.random.default_rng(1)
    rows = []
    for obj in objects:
        rows += _write_visa_object(root, obj, num_train, num_test_normal, num_anomaly, size, rng)
        rows += _missing_rows(obj, missing_rows)
    rows += _missing_rows("absent", missing_rows)
    bad_file = _inject_visa(root, objects[0], rows, bad_case) if bad_case else None
    encoding = "latin-1" if bad_case == "csv_not_utf8" else "utf-8"
    _write_csv(root / "split_csv" / "1cls.csv", VISA_HEADER, rows, encoding)
    return FakeTree(root, bad_file)


def write_folder_tree(
    root: str | Path,
    categories: Sequence[str] | None = None,
    *,
    defects: Sequence[str] = ("scratch", "dent"),
    num_train: int = 3,
    num_test_good: int = 2,
    num_per_defect: int = 2,
    masks: str = "none",
    with_test: bool = True,
    size: tuple[int, int] = (20, 16),
    bad_case: str | None = None,
) -> FakeTree:
    """Write a plain folder of your own images: ``train/good``, ``test/{good,<defect>}``, optional ``ground_truth``.

    Masks of the first defect are named ``<stem>_mask.png``, those of the others ``<stem>.png`` (both are accepted).

    Args:
        root: Folder to create; a single category (named after ``root``) when ``categories`` is ``None``, else one
            sub-folder per category.
        categories: Category folders to write under ``root``, or ``None`` for a one-category folder.
        defects: Defect folders under ``test/``.
        num_train: Images in ``train/good``.
        num_test_good: Images in ``test/good``.
        num_per_defect: Images per defect.
        masks: ``"none"`` (no ``ground_truth/``), ``"all"`` or ``"mixed"`` (only image ``000`` of each defect).
        with_test: Write ``test/`` (``False``: a train-only folder).
        size: Image size as (width, height).
        bad_case: One of `FOLDER_BAD_CASES`, injected into the first category (needs ``with_test``).

    Returns:
        The written tree.
    """
    if masks not in FOLDER_MASKS:
        raise ValueError(f"unknown masks {masks!r}; expected one of {FOLDER_MASKS}")
    root = Path(root)
    rng = np.random.default_rng(2)
    category_dirs = [root] if categories is None else [root / category for category in categories]
    for category_dir in category_dirs:
        _write_images(category_dir / "train" / "good", num_train, size, "RGB", rng)
        if not with_test:
            continue
        _write_images(category_dir / "test" / "good", num_test_good, size, "RGB", rng)
        for position, defect in enumerate(defects):
            _write_images(category_dir / "test" / defect, num_per_defect, size, "RGB", rng)
            suffix = "_mask" if position == 0 else ""
            for index in range(num_per_defect if masks == "all" else 1 if masks == "mixed" else 0):
                _write_mask(category_dir / "ground_truth" / defect / f"{index:03d}{suffix}.png", size, index, 255)
    bad_file = _inject_folder(category_dirs[0], defects[0], bad_case) if bad_case else None
    return FakeTree(root, bad_file)


def _inject_folder(category_dir: Path, defect: str, bad_case: str) -> Path:
    """Break a clean own-image folder in the way ``bad_case`` names; return the file the error must name."""
    if bad_case == "missing_train":
        shutil.rmtree(category_dir / "train" / "good")
        return category_dir / "train" / "good"
    if bad_case == "orphan_mask":
        mask = category_dir / "ground_truth" / defect / "099_mask.png"
        _write_mask(mask, (4, 4), 0, 255)
        return mask
    if bad_case == "mask_size":
        mask = category_dir / "ground_truth" / defect / "000_mask.png"
        mask.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (7, 5)).save(mask)
        return mask
    if bad_case == "corrupt_image":
        image = category_dir / "test" / defect / "001.png"
        image.write_bytes(b"this is not a png file at all" * 4)
        return image
    raise ValueError(f"unknown bad_case {bad_case!r}; expected one of {FOLDER_BAD_CASES}")


def _write_visa_object(
    root: Path, obj: str, num_train: int, num_test_normal: int, num_anomaly: int, size: tuple[int, int], rng
) -> list[tuple[str, ...]]:
    """Write one VisA object's images, masks and ``image_anno.csv``; return its split-csv rows."""
    images, masks = f"{obj}/Data/Images", f"{obj}/Data/Masks"
    rows = []
    for index in range(num_train + num_test_normal):
        name = f"{images}/Normal/{index:04d}.JPG"
        _write_image(root / name, size, "RGB", rng, "JPEG")
        rows.append((obj, "train" if index < num_train else "test", "normal", name, ""))
    annotations = []
    for index in range(num_anomaly):
        name, mask = f"{images}/Anomaly/{index:03d}.JPG", f"{masks}/Anomaly/{index:03d}.png"
        _write_image(root / name, size, "RGB", rng, "JPEG")
        _write_mask(root / mask, size, index, 1 + index % 2)
        rows.append((obj, "test", "anomaly", name, mask))
        annotations.append((name, "scratch" if index % 2 == 0 else "chip,scratch", mask))
    _write_csv(root / obj / "image_anno.csv", ("image", "label", "mask"), annotations)
    return rows


def _missing_rows(obj: str, count: int) -> list[tuple[str, ...]]:
    """Csv rows for files that were never written."""
    return [(obj, "test", "normal", f"{obj}/Data/Images/Normal/9{i:03d}.JPG", "") for i in range(count)]


def _inject_mvtec(category_dir: Path, defect: str, bad_case: str) -> Path:
    """Break a clean MVTec-AD category in the way ``bad_case`` names; return the file the error must name."""
    image, mask = category_dir / "test" / defect / "001.png", category_dir / "ground_truth" / defect / "001_mask.png"
    if bad_case == "missing_mask":
        mask.unlink()
        return image
    if bad_case == "orphan_mask":
        image.unlink()
        return mask
    if bad_case == "mask_size":
        with Image.open(mask) as m:
            Image.new("L", (m.width + 3, m.height)).save(mask)
        return mask
    if bad_case == "corrupt_image":
        image.write_bytes(b"this is not a png file at all" * 4)
        return image
    if bad_case == "truncated_image":
        return _truncate(category_dir / "train" / "good" / "000.png")
    if bad_case == "empty_train":
        train_dir = category_dir / "train" / "good"
        for path in train_dir.glob("*.png"):
            path.unlink()
        return train_dir
    if bad_case == "no_test":
        shutil.rmtree(category_dir / "test")
        return category_dir / "test"
    if bad_case == "empty_image":
        image.write_bytes(b"")
        return image
    if bad_case == "zero_size_image":
        image.write_bytes(zero_size_png())
        return image
    raise ValueError(f"unknown bad_case {bad_case!r}; expected one of {MVTEC_BAD_CASES}")


def _inject_visa(root: Path, obj: str, rows: list[tuple[str, ...]], bad_case: str) -> Path:
    """Break a clean VisA tree (editing ``rows`` in place); return the file the error must name."""
    anomaly = next(i for i, r in enumerate(rows) if r[0] == obj and r[2] == "anomaly")
    image, mask = root / rows[anomaly][3], root / rows[anomaly][4]
    if bad_case == "missing_file":
        image.unlink()
        return image
    if bad_case == "missing_mask_file":
        mask.unlink()
        return mask
    if bad_case == "missing_mask":
        rows[anomaly] = rows[anomaly][:4] + ("",)
        return image
    if bad_case == "mask_size":
        Image.new("L", (7, 5)).save(mask)
        return mask
    if bad_case == "corrupt_image":
        image.write_bytes(b"\xff\xd8\xff garbage")
        return image
    if bad_case == "truncated_image":
        return _truncate(image)
    if bad_case == "empty_train":
        rows[:] = [r for r in rows if not (r[0] == obj and r[1] == "train")]
        return root / "split_csv" / "1cls.csv"
    if bad_case == "csv_not_utf8":  # the csv is written in Latin-1, so this "é" is the single byte 0xe9
        rows[anomaly] = _with_image(rows[anomaly], rows[anomaly][3].replace(".JPG", "\xe9.JPG"))
        return root / "split_csv" / "1cls.csv"
    if bad_case in ("absolute_path", "parent_path"):
        outside = root.parent / "outside.JPG"  # a readable image the csv must not be able to embed
        shutil.copy(image, outside)
        rows[anomaly] = _with_image(rows[anomaly], str(outside) if bad_case == "absolute_path" else "../outside.JPG")
        return root / "split_csv" / "1cls.csv"
    raise ValueError(f"unknown bad_case {bad_case!r}; expected one of {VISA_BAD_CASES}")


def _with_image(row: tuple[str, ...], image: str) -> tuple[str, ...]:
    """A split-csv row with another image path."""
    return row[:3] + (image,) + row[4:]


def _write_images(folder: Path, count: int, size: tuple[int, int], mode: str, rng) -> None:
    """Write ``count`` random PNG images named 000.png, 001.png, ... plus a nested .DS_Store."""
    for index in range(count):
        _write_image(folder / f"{index:03d}.png", size, mode, rng, "PNG")
    _write_strays(folder, (".DS_Store",))


def _write_image(path: Path, size: tuple[int, int], mode: str, rng, image_format: str) -> None:
    """Write one random image of (width, height) ``size``."""
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path, format=image_format)


def _write_mask(path: Path, size: tuple[int, int], index: int, value: int) -> None:
    """Write a mask with one rectangle of ``value`` whose position depends on ``index``."""
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[2 + index % 3 : 7 + index % 3, 3:9] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


def _write_strays(folder: Path, names: Sequence[str]) -> None:
    """Write non-image files the loaders must ignore."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"\x00\x01stray")


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]], encoding: str = "utf-8") -> None:
    """Write a csv with CRLF line endings, as VisA ships it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(header)
        writer.writerows(rows)


def read_visa_rows(root: str | Path) -> list[list[str]]:
    """The rows of a VisA tree's ``split_csv/1cls.csv``, without its header (for tests that edit them)."""
    with open(Path(root) / "split_csv" / "1cls.csv", newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))[1:]


def write_visa_rows(root: str | Path, rows: Sequence[Sequence[str]]) -> Path:
    """Replace the rows of a VisA tree's ``split_csv/1cls.csv``; return the csv's path."""
    csv_file = Path(root) / "split_csv" / "1cls.csv"
    _write_csv(csv_file, VISA_HEADER, rows)
    return csv_file


def zero_size_png() -> bytes:
    """Return a structurally valid PNG whose header says 0x0 pixels (an RGB image without any pixel)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _truncate(path: Path) -> Path:
    """Cut a file to half its length."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


__all__ = [
    "FOLDER_BAD_CASES",
    "FOLDER_MASKS",
    "MVTEC_BAD_CASES",
    "VISA_BAD_CASES",
    "FakeTree",
    "read_visa_rows",
    "write_folder_tree",
    "write_mvtec_tree",
    "write_visa_rows",
    "write_visa_tree",
    "zero_size_png",
]
