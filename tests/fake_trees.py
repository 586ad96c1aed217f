"""Write tiny fake MVTec-AD, VisA, MVTec AD 2, Real-IAD, BTAD and own-image folder trees (optionally with one
injected defect) for offline tests.

Example:
    >>> tree = write_mvtec_tree(tmp_path / "mvtec", bad_case="missing_mask")
    >>> tree.bad_file  # the file the loader's error message must name
    PosixPath('.../mvtec/bottle/test/crack/001.png')
"""

from __future__ import annotations

import csv
import dataclasses
import json
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


MVTEC_AD2_BAD_CASES = (
    "missing_mask",  # an image in test_public/bad without its mask
    "orphan_mask",  # a mask in test_public/ground_truth/bad whose image is missing
    "missing_validation",  # a scenario without validation/good
    "nested_private",  # a folder inside test_private (its images carry no labels, so no class folders)
    "mask_size",  # a mask whose size differs from its image
)
REAL_IAD_BAD_CASES = (
    "not_json",  # a split file that is not JSON
    "missing_key",  # an entry without mask_path
    "outside_path",  # an entry whose image path leads out of the root
    "bad_file_name",  # an image name without part and view
    "duplicate_view",  # one view of one part listed twice
    "missing_file",  # an entry whose image does not exist
    "other_category",  # an entry of another object in an object's file
)
BTAD_BAD_CASES = (
    "missing_mask",  # an image in test/ko without its mask
    "orphan_mask",  # a mask in ground_truth/ko whose image is missing
    "same_stem",  # 0000.bmp and 0000.png side by side
    "unknown_folder",  # a test folder other than ok/ko
)


def write_mvtec_ad2_tree(
    root: str | Path,
    scenarios: Sequence[str] = ("can", "vial"),
    *,
    size: tuple[int, int] = (24, 18),
    private: bool = True,
    bad_case: str | None = None,
) -> FakeTree:
    """Write a fake MVTec AD 2 tree: train/validation/test_public with masks, flat private test sets without labels.

    Every scenario has 2 train, 2 validation, 1 test_public/good and 2 test_public/bad images (masks
    ``ground_truth/bad/<stem>_mask.png``), 3 ``test_private/NNN_regular.png`` and 2 ``test_private_mixed/NNN_mixed.png``
    images (``private=False`` leaves the private folders out), plus stray files.

    Args:
        root: Folder to create.
        scenarios: Scenario folders to write.
        size: Image size as (width, height).
        private: Write the private test folders.
        bad_case: One of `MVTEC_AD2_BAD_CASES`, injected into the first scenario.

    Returns:
        The written tree.
    """
    root, rng = Path(root), np.random.default_rng(1)
    _write_strays(root, ("readme.txt", "license.txt"))
    for scenario in scenarios:
        folder = root / scenario
        for split, names in (("train", ("000_regular", "001_regular")), ("validation", ("000_regular", "001_regular"))):
            for name in names:
                _write_image(folder / split / "good" / f"{name}.png", size, "RGB", rng, "PNG")
        _write_image(folder / "test_public" / "good" / "000_regular.png", size, "RGB", rng, "PNG")
        for index, name in enumerate(("000_regular", "001_overexposed")):
            _write_image(folder / "test_public" / "bad" / f"{name}.png", size, "RGB", rng, "PNG")
            _write_mask(folder / "test_public" / "ground_truth" / "bad" / f"{name}_mask.png", size, index, 255)
        if private:
            for index in range(3):
                _write_image(folder / "test_private" / f"{index:03d}_regular.png", size, "RGB", rng, "PNG")
            for index in range(2):
                _write_image(folder / "test_private_mixed" / f"{index:03d}_mixed.png", size, "RGB", rng, "PNG")
        _write_strays(folder, (".DS_Store",))
    bad_file = _inject_mvtec_ad2(root / scenarios[0], bad_case) if bad_case else None
    return FakeTree(root, bad_file)


def _inject_mvtec_ad2(folder: Path, bad_case: str) -> Path:
    """Inject one MVTec AD 2 defect into a scenario folder; return the path its error must name."""
    public = folder / "test_public"
    if bad_case == "missing_mask":
        (public / "ground_truth" / "bad" / "001_overexposed_mask.png").unlink()
        return public / "bad" / "001_overexposed.png"
    if bad_case == "orphan_mask":
        (public / "bad" / "001_overexposed.png").unlink()
        return public / "ground_truth" / "bad" / "001_overexposed_mask.png"
    if bad_case == "missing_validation":
        shutil.rmtree(folder / "validation")
        return folder / "validation" / "good"
    if bad_case == "nested_private":
        _write_image(
            folder / "test_private" / "bad" / "009_regular.png", (24, 18), "RGB", np.random.default_rng(2), "PNG"
        )
        return folder / "test_private" / "bad"
    if bad_case == "mask_size":
        path = public / "ground_truth" / "bad" / "000_regular_mask.png"
        _write_mask(path, (12, 9), 0, 255)
        return path
    raise ValueError(f"unknown bad case {bad_case!r}")


REAL_IAD_VIEWS = ("C1", "C2", "C3", "C4", "C5")


def write_real_iad_tree(
    root: str | Path,
    objects: Sequence[str] = ("audiojack", "toy_brick"),
    *,
    size: tuple[int, int] = (16, 12),
    views: Sequence[str] = REAL_IAD_VIEWS,
    bad_case: str | None = None,
) -> FakeTree:
    """Write a fake Real-IAD tree: per-view image files under ``realiad_256/<object>/{OK,NG/<class>}/S<id>/``, masks
    beside the defective views, and the JSON split files of three protocols.

    Per object: train parts S0001, S0002 (normal); test parts S0003 (normal) and S0004 (class ``AK``) whose views
    C1 and C2 show the defect (with masks) while the other views have no mask (normal views of a defective part); a
    part S0005 (class ``HS``) only the noisy protocol lists, among its training entries. ``realiad_jsons`` lists all
    ``views`` (multi-view), ``realiad_jsons_sv`` the first view only, ``realiad_jsons_fuiad_0.4`` adds S0005 to train.

    Args:
        root: Folder to create (the Real-IAD root).
        objects: Object folders to write.
        size: Image size as (width, height).
        views: The camera views written per part.
        bad_case: One of `REAL_IAD_BAD_CASES`, injected into the first object's multi-view file.

    Returns:
        The written tree.
    """
    root, rng = Path(root), np.random.default_rng(3)
    for obj in objects:
        folder = root / "realiad_256" / obj
        entries: dict[str, list[dict]] = {"train": [], "test": [], "noisy": []}
        parts = (("train", 1, "OK"), ("train", 2, "OK"), ("test", 3, "OK"), ("test", 4, "AK"), ("noisy", 5, "HS"))
        for split, number, anomaly_class in parts:
            kind = "OK" if anomaly_class == "OK" else "NG"
            part_dir = Path(kind, *(() if kind == "OK" else (anomaly_class,)), f"S{number:04d}")
            for index, view in enumerate(views):
                label = kind if kind == "OK" else f"NG_{anomaly_class}"  # the dataset's names: ..._NG_AK_C1_...
                stem = f"{obj}_{number:04d}_{label}_{view}_2023102113{index:04d}"
                _write_image(folder / part_dir / f"{stem}.jpg", size, "RGB", rng, "JPEG")
                mask = None
                if kind == "NG" and view in ("C1", "C2"):
                    mask = (part_dir / f"{stem}_mask.png").as_posix()
                    _write_mask(folder / mask, size, index, 255)
                image = (part_dir / f"{stem}.jpg").as_posix()
                entry = {"category": obj, "anomaly_class": anomaly_class, "image_path": image, "mask_path": mask}
                entries[split].append(entry)
        meta = {"prefix": f"{obj}/", "normal_class": "OK"}
        splits = {"train": entries["train"], "test": entries["test"]}
        _write_json(root / "realiad_jsons" / f"{obj}.json", {"meta": meta, **splits})
        single = {split: [e for e in rows if f"_{views[0]}_" in e["image_path"]] for split, rows in splits.items()}
        _write_json(root / "realiad_jsons_sv" / f"{obj}.json", {"meta": meta, **single})
        noisy = {"train": entries["train"] + entries["noisy"], "test": entries["test"]}
        _write_json(root / "realiad_jsons_fuiad_0.4" / f"{obj}.json", {"meta": meta, **noisy})
    bad_file = _inject_real_iad(root, objects[0], objects[-1], bad_case) if bad_case else None
    return FakeTree(root, bad_file)


def _inject_real_iad(root: Path, obj: str, other: str, bad_case: str) -> Path:
    """Inject one Real-IAD defect into ``obj``'s multi-view JSON file; return the path its error must name."""
    json_file = root / "realiad_jsons" / f"{obj}.json"
    if bad_case == "not_json":
        json_file.write_text('{"meta": {"prefix": ', encoding="utf-8")
        return json_file
    content = json.loads(json_file.read_text(encoding="utf-8"))
    test = content["test"]
    if bad_case == "missing_key":
        del test[0]["mask_path"]
    elif bad_case == "outside_path":
        test[0]["image_path"] = "../../../../outside.jpg"
        (root.parent / "outside.jpg").write_bytes(b"x")
    elif bad_case == "bad_file_name":
        source = root / "realiad_256" / obj / test[0]["image_path"]
        renamed = source.with_name("picture.jpg")
        source.rename(renamed)
        test[0]["image_path"] = str(Path(test[0]["image_path"]).with_name("picture.jpg"))
    elif bad_case == "duplicate_view":
        test.append(dict(test[0]))
    elif bad_case == "missing_file":
        missing = root / "realiad_256" / obj / test[0]["image_path"]
        missing.unlink()
        _write_json(json_file, content)
        return missing
    elif bad_case == "other_category":
        test[0]["category"] = other if other != obj else "someone_else"
    else:
        raise ValueError(f"unknown bad case {bad_case!r}")
    _write_json(json_file, content)
    return json_file


def _write_json(path: Path, content: object) -> None:
    """Write ``content`` as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content), encoding="utf-8")


def write_btad_tree(
    root: str | Path,
    products: Sequence[str] = ("01", "02", "03"),
    *,
    size: tuple[int, int] = (20, 14),
    bad_case: str | None = None,
) -> FakeTree:
    """Write a fake BTAD tree with BTAD's mixed suffixes: product 01 has .bmp images and .png masks, 02 .png images and
    masks, 03 .bmp images and .bmp masks; ``train/ok``, ``test/{ok,ko}``, ``ground_truth/ko/<stem>.<ext>``.

    Args:
        root: Folder to create.
        products: Product folders to write (their suffixes follow the product name; others take product 01's).
        size: Image size as (width, height).
        bad_case: One of `BTAD_BAD_CASES`, injected into the first product.

    Returns:
        The written tree.
    """
    suffixes = {"01": ("bmp", "png"), "02": ("png", "png"), "03": ("bmp", "bmp")}
    root, rng = Path(root), np.random.default_rng(4)
    _write_strays(root, ("readme.txt",))
    for product in products:
        image_ext, mask_ext = suffixes.get(product, suffixes["01"])
        formats = {"bmp": "BMP", "png": "PNG"}
        folder = root / product
        for split, label, count in (("train", "ok", 3), ("test", "ok", 1), ("test", "ko", 2)):
            for index in range(count):
                _write_image(folder / split / label / f"{index:04d}.{image_ext}", size, "RGB", rng, formats[image_ext])
        for index in range(2):
            mask = np.zeros((size[1], size[0]), dtype=np.uint8)
            mask[2 + index : 6 + index, 3:8] = 255
            path = folder / "ground_truth" / "ko" / f"{index:04d}.{mask_ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(path, format=formats[mask_ext])
    bad_file = _inject_btad(root / products[0], bad_case) if bad_case else None
    return FakeTree(root, bad_file)


def _inject_btad(folder: Path, bad_case: str) -> Path:
    """Inject one BTAD defect into a product folder; return the path its error must name."""
    ko = sorted((folder / "test" / "ko").iterdir())
    masks = sorted((folder / "ground_truth" / "ko").iterdir())
    if bad_case == "missing_mask":
        masks[1].unlink()
        return ko[1]
    if bad_case == "orphan_mask":
        ko[1].unlink()
        return masks[1]
    if bad_case == "same_stem":
        twin = ko[0].with_suffix(".png" if ko[0].suffix == ".bmp" else ".bmp")
        shutil.copy(ko[0], twin)
        return twin if twin.name > ko[0].name else ko[0]
    if bad_case == "unknown_folder":
        target = folder / "test" / "scratch"
        _write_image(target / "0000.png", (20, 14), "RGB", np.random.default_rng(5), "PNG")
        return target
    raise ValueError(f"unknown bad case {bad_case!r}")


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
    "BTAD_BAD_CASES",
    "FOLDER_BAD_CASES",
    "FOLDER_MASKS",
    "MVTEC_AD2_BAD_CASES",
    "MVTEC_BAD_CASES",
    "REAL_IAD_BAD_CASES",
    "REAL_IAD_VIEWS",
    "VISA_BAD_CASES",
    "FakeTree",
    "read_visa_rows",
    "write_btad_tree",
    "write_folder_tree",
    "write_mvtec_ad2_tree",
    "write_mvtec_tree",
    "write_real_iad_tree",
    "write_visa_rows",
    "write_visa_tree",
    "zero_size_png",
]
