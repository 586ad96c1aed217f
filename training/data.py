"""Turn raw MVTec-AD / VisA folders, saved folders or Hub ids into an anomaly-detection `DatasetDict`.

Every dataset this module returns has the splits ``train`` and ``test`` and the columns

- ``image`` (`datasets.Image`): RGB, its encoded bytes embedded in the dataset;
- ``mask`` (`datasets.Image`): mode ``L`` with values 0/255, ``None`` for normal images;
- ``label`` (`datasets.ClassLabel`, names ``["good", "anomaly"]``);
- ``category`` (`str`), ``defect_type`` (`str`, ``"good"`` for normal images);
- ``image_path`` (`str`): the image's path relative to the dataset root, posix style.

Raw folders are read in two passes: a cheap pass over the folder layout (or VisA's split csv) that
pairs every image with its mask and checks that the files exist, then `Dataset.from_generator`,
which decodes each file once (rejecting corrupt or truncated files and masks whose size differs from
their image) and writes the rows to an Arrow cache on disk, so the decoded images never sit in RAM
together. Every problem with the input raises `DatasetFormatError` naming the offending file.

Example:
    >>> from training.data import load_anomaly_dataset, save_dataset_atomically
    >>> dataset = load_anomaly_dataset("/data/mvtec_anomaly_detection", categories=["bottle"])
    >>> dataset["train"].features["label"].names
    ['good', 'anomaly']
    >>> save_dataset_atomically(dataset, "/data/mvtec_bottle_hf")
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

import datasets
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

logger = logging.getLogger(__name__)

LABEL_NAMES = ("good", "anomaly")
DATASET_NAMES = ("mvtec_ad", "visa")
SPLIT_NAMES = ("train", "test")
REQUIRED_COLUMNS = ("image", "mask", "label", "category", "defect_type")
NORMAL_DEFECT_TYPE = "good"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
VISA_SPLIT_CSV = PurePosixPath("split_csv/1cls.csv")
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_LABELS = {"normal": 0, "anomaly": 1}
VISA_ANNOTATION_CSV = "image_anno.csv"
# Defect type of a VisA anomaly whose category has no readable `image_anno.csv` entry.
VISA_UNKNOWN_DEFECT_TYPE = "anomaly"
MASK_SUFFIX = "_mask"
# Bump when the encoding of the rows changes, so stale generator caches are not reused.
_ENCODING_VERSION = "1"
# Rows buffered in RAM before they are flushed to the Arrow cache (a row holds one encoded image).
_WRITER_BATCH_SIZE = 16
_PASSTHROUGH_IMAGE_FORMATS = frozenset({"PNG", "JPEG"})
_HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_SKIP_MISSING_HINT = "pass allow_missing_files=True (CLI: --skip_missing_files) to keep only the rows whose files exist"


class DatasetFormatError(ValueError):
    """Raised for any input that cannot be turned into an anomaly-detection dataset.

    The message names the offending file or folder and says what is wrong with it.
    """


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image of a raw dataset, located but not yet read.

    Attributes:
        split: ``"train"`` or ``"test"``.
        image_file: Absolute path of the image file.
        mask_file: Absolute path of the mask file, ``None`` for normal images.
        label: 0 for normal (``"good"``), 1 for anomalous images.
        category: Category (MVTec-AD) or object (VisA) name.
        defect_type: Defect name, ``"good"`` for normal images.
        image_path: The image's path relative to the dataset root, posix style.
    """

    split: str
    image_file: Path
    mask_file: Path | None
    label: int
    category: str
    defect_type: str
    image_path: str


def anomaly_features() -> datasets.Features:
    """Return the `datasets.Features` shared by every split this module produces.

    Returns:
        The features of the columns ``image``, ``mask``, ``label``, ``category``, ``defect_type`` and
        ``image_path``.
    """
    return datasets.Features(
        {
            "image": datasets.Image(),
            "mask": datasets.Image(),
            "label": datasets.ClassLabel(names=list(LABEL_NAMES)),
            "category": datasets.Value("string"),
            "defect_type": datasets.Value("string"),
            "image_path": datasets.Value("string"),
        }
    )


# ----------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------


def load_anomaly_dataset(
    dataset_name: str,
    dataset: str | None = None,
    categories: Sequence[str] | None = None,
    *,
    allow_missing_files: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.DatasetDict:
    """Load an anomaly-detection `DatasetDict` from a raw folder, a saved folder or the Hub.

    Args:
        dataset_name: A raw MVTec-AD folder (or one of its category folders), a raw VisA folder (holds
            ``split_csv/1cls.csv``), a folder written by `DatasetDict.save_to_disk`, or a Hub dataset id.
            The Hub is only tried when the string is not an existing local path.
        dataset: ``"mvtec_ad"``, ``"visa"`` or ``None`` to infer the layout of a raw folder.
        categories: Keep only these categories (all when ``None``); an unknown one is an error that lists
            the available ones.
        allow_missing_files: VisA only: drop split-csv rows whose files are missing instead of failing.
        cache_dir: Where `datasets` caches the Arrow files built from a raw folder (defaults to the
            `datasets` cache).

    Returns:
        A `DatasetDict` with the splits ``train`` and ``test`` and the columns of `anomaly_features`.

    Raises:
        DatasetFormatError: The input is missing, of an unknown layout, or malformed.
    """
    if dataset is not None and dataset not in DATASET_NAMES:
        raise DatasetFormatError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASET_NAMES)} or None")
    name = os.fspath(dataset_name)
    path = Path(name).expanduser()
    if path.is_dir() and not _is_saved_dataset(path):
        layout = dataset or infer_dataset_layout(path)
        if layout == "visa":
            return build_visa(path, categories, allow_missing_files=allow_missing_files, cache_dir=cache_dir)
        return build_mvtec_ad(path, categories, cache_dir=cache_dir)
    if path.is_dir():
        dataset_dict = _load_saved_dataset(path)
    elif path.exists():
        raise DatasetFormatError(f"{path}: is a file; expected a dataset folder")
    elif not _HUB_ID_PATTERN.match(name):
        raise DatasetFormatError(f"{path}: folder not found")
    else:
        dataset_dict = _load_hub_dataset(name)
    _check_schema(dataset_dict, name)
    return filter_categories(dataset_dict, categories, name)


def infer_dataset_layout(data_dir: str | os.PathLike) -> str:
    """Tell whether a raw folder is laid out as VisA or MVTec-AD.

    Args:
        data_dir: The folder to inspect.

    Returns:
        ``"visa"`` when ``split_csv/1cls.csv`` exists, ``"mvtec_ad"`` when the folder (or one of its
        sub-folders) holds ``train/good``.

    Raises:
        DatasetFormatError: The folder is missing or matches neither layout.
    """
    root = _existing_dir(data_dir)
    if (root / VISA_SPLIT_CSV).is_file():
        return "visa"
    if (root / "train" / "good").is_dir() or any((d / "train" / "good").is_dir() for d in _subdirs(root)):
        return "mvtec_ad"
    raise DatasetFormatError(
        f"{root}: cannot tell the dataset layout; expected {VISA_SPLIT_CSV} (VisA), <category>/train/good/ "
        "(MVTec-AD) or a folder written by DatasetDict.save_to_disk (dataset_dict.json)"
    )


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
    root, available = _mvtec_root_and_categories(_existing_dir(data_dir))
    selected = select_categories(available, categories, root)
    samples = [sample for category in selected for sample in _mvtec_category_samples(root, category)]
    return _build_dataset_dict(samples, cache_dir)


def build_visa(
    data_dir: str | os.PathLike,
    categories: Sequence[str] | None = None,
    *,
    allow_missing_files: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.DatasetDict:
    """Build the `DatasetDict` of a raw VisA folder through its ``split_csv/1cls.csv``.

    The defect type of an anomaly comes from ``<object>/image_anno.csv`` when it lists the image (VisA's
    own label, e.g. ``"bubble"``), otherwise it is ``"anomaly"``.

    Args:
        data_dir: The VisA root, holding ``split_csv/1cls.csv`` and one folder per object.
        categories: Keep only these objects (all when ``None``).
        allow_missing_files: Drop csv rows whose image or mask file is missing (partial downloads);
            objects left without any row are skipped. Without it a missing file is an error.
        cache_dir: Where `datasets` caches the Arrow files (defaults to the `datasets` cache).

    Returns:
        A `DatasetDict` with the splits ``train`` and ``test``.

    Raises:
        DatasetFormatError: A missing folder or csv, a malformed csv row, a missing file, an unknown
            object, an empty split, a corrupt image or a mask whose size differs from its image.
    """
    root = _existing_dir(data_dir)
    csv_file = root / VISA_SPLIT_CSV
    if not csv_file.is_file():
        raise DatasetFormatError(f"{csv_file}: VisA split csv not found")
    rows = _read_visa_rows(csv_file)
    available = sorted({row["object"] for row in rows})
    selected = select_categories(available, categories, csv_file)
    samples = [_visa_sample(root, row) for row in rows if row["object"] in selected]
    samples = _drop_missing_files(samples) if allow_missing_files else _require_files(samples, csv_file)
    if not samples:
        raise DatasetFormatError(f"{csv_file}: none of the files listed for {', '.join(selected)} exist under {root}")
    if allow_missing_files and categories is None:
        selected = [c for c in selected if any(s.category == c for s in samples)]
    samples = _with_visa_defect_types(root, samples)
    for category in selected:
        _check_category_splits(samples, category, csv_file)
    return _build_dataset_dict(samples, cache_dir)


def filter_categories(
    dataset_dict: datasets.DatasetDict, categories: Sequence[str] | None, source: str | os.PathLike
) -> datasets.DatasetDict:
    """Keep only the rows of the given categories in every split of a built dataset.

    Args:
        dataset_dict: A dataset with a ``category`` column in every split.
        categories: The categories to keep; ``None`` keeps everything.
        source: Where the dataset came from, for error messages.

    Returns:
        The filtered `DatasetDict` (the input itself when ``categories`` is ``None``).

    Raises:
        DatasetFormatError: An unknown category, or a category without training images.
    """
    if categories is None:
        return dataset_dict
    available = sorted({c for split in dataset_dict.values() for c in split.unique("category")})
    wanted = set(select_categories(available, categories, source))
    filtered = datasets.DatasetDict()
    for name, split in dataset_dict.items():
        indices = [i for i, category in enumerate(split["category"]) if category in wanted]
        filtered[name] = split.select(indices, keep_in_memory=True)
    missing_train = sorted(wanted - set(filtered["train"].unique("category")))
    if missing_train:
        raise DatasetFormatError(f"{source}: empty train split for categories {', '.join(missing_train)}")
    return filtered


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


def save_dataset_atomically(dataset_dict: datasets.DatasetDict, output_dir: str | os.PathLike) -> Path:
    """Save a `DatasetDict` with `save_to_disk` so that ``output_dir`` is either complete or untouched.

    The dataset is written to a temporary folder beside ``output_dir`` and renamed into place. An existing
    ``output_dir`` is replaced only once the new one is complete, and only when it is empty or itself a
    saved dataset (so a mistyped path never wipes an unrelated folder).

    Args:
        dataset_dict: The dataset to save.
        output_dir: The folder to create or replace.

    Returns:
        The path of the saved dataset.

    Raises:
        DatasetFormatError: ``output_dir`` is a file or a non-empty folder that is not a saved dataset.
    """
    output_dir = Path(output_dir).expanduser().absolute()
    _check_replaceable(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling_dir(output_dir, "tmp")
    try:
        dataset_dict.save_to_disk(str(staging))
        _replace_dir(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


# ----------------------------------------------------------------------------------------------------
# MVTec-AD layout
# ----------------------------------------------------------------------------------------------------


def _mvtec_root_and_categories(data_dir: Path) -> tuple[Path, list[str]]:
    """Return the MVTec-AD root and its category names; a category folder is its own one-category root."""
    if (data_dir / "train" / "good").is_dir():
        data_dir = data_dir.absolute()  # so that "." has a parent and a name
        return data_dir.parent, [data_dir.name]
    categories = [d.name for d in _subdirs(data_dir)]
    if not categories:
        raise DatasetFormatError(f"{data_dir}: no category folders; expected <category>/train/good/ (MVTec-AD)")
    return data_dir, categories


def _mvtec_category_samples(root: Path, category: str) -> list[Sample]:
    """Locate every train and test image of one MVTec-AD category and pair test images with masks."""
    category_dir = root / category
    train_dir, test_dir = category_dir / "train" / "good", category_dir / "test"
    if not train_dir.is_dir():
        raise DatasetFormatError(f"{train_dir}: folder not found; an MVTec-AD category needs train/good/")
    train = [_mvtec_sample(root, "train", category, "good", image, None) for image in _list_images(train_dir).values()]
    if not train:
        raise DatasetFormatError(f"{train_dir}: empty train split (no images)")
    if not test_dir.is_dir():
        raise DatasetFormatError(
            f"{test_dir}: folder not found; an MVTec-AD category needs train/good/, test/ and ground_truth/ "
            "(is this a complete download?)"
        )
    test = _mvtec_test_samples(root, category)
    if not test:
        raise DatasetFormatError(f"{test_dir}: empty test split (no images)")
    return train + test


def _mvtec_test_samples(root: Path, category: str) -> list[Sample]:
    """Pair ``test/<defect>/<stem>.*`` with ``ground_truth/<defect>/<stem>_mask.*`` for one category."""
    test_dir, truth_dir = root / category / "test", root / category / "ground_truth"
    defects = [d.name for d in _subdirs(test_dir)]
    samples = []
    for defect in defects:
        images = _list_images(test_dir / defect)
        masks = {} if defect == NORMAL_DEFECT_TYPE else _list_masks(truth_dir / defect)
        for stem, image in images.items():
            if defect != NORMAL_DEFECT_TYPE and stem not in masks:
                expected = truth_dir / defect / f"{stem}{MASK_SUFFIX}.png"
                raise DatasetFormatError(f"{image}: anomalous image without its mask (expected {expected})")
            samples.append(_mvtec_sample(root, "test", category, defect, image, masks.get(stem)))
        _reject_orphan_masks(masks, images, test_dir / defect)
    without_images = {d.name for d in _subdirs(truth_dir)} - set(defects)
    for defect in sorted(without_images | {NORMAL_DEFECT_TYPE}):  # masks of missing folders or of normal images
        _reject_orphan_masks(_list_masks(truth_dir / defect), {}, test_dir / defect)
    return samples


def _reject_orphan_masks(masks: dict[str, Path], images: dict[str, Path], image_dir: Path) -> None:
    """Raise for the first mask whose stem has no image in ``image_dir``."""
    for stem, mask in masks.items():
        if stem not in images:
            if image_dir.name == NORMAL_DEFECT_TYPE:
                raise DatasetFormatError(f"{mask}: mask for normal ('good') images; only defects have masks")
            raise DatasetFormatError(f"{mask}: mask without its image (expected {image_dir / stem}.png)")


def _mvtec_sample(root: Path, split: str, category: str, defect: str, image: Path, mask: Path | None) -> Sample:
    """Describe one MVTec-AD image."""
    label = 0 if defect == NORMAL_DEFECT_TYPE else 1
    relative = image.relative_to(root).as_posix()
    return Sample(split, image, mask, label, category, defect, relative)


def _list_images(folder: Path) -> dict[str, Path]:
    """Map file stem to image path for the image files directly in ``folder`` (sorted, strays ignored)."""
    images: dict[str, Path] = {}
    if not folder.is_dir():
        return images
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.stem in images:
            raise DatasetFormatError(f"{path}: two images share the stem {path.stem!r} (other: {images[path.stem]})")
        images[path.stem] = path
    return images


def _list_masks(folder: Path) -> dict[str, Path]:
    """Map image stem to mask path for ``<stem>_mask.*`` files in ``folder`` (a missing folder is empty)."""
    return {
        (stem[: -len(MASK_SUFFIX)] if stem.endswith(MASK_SUFFIX) else stem): path
        for stem, path in _list_images(folder).items()
    }


# ----------------------------------------------------------------------------------------------------
# VisA layout
# ----------------------------------------------------------------------------------------------------


def _read_visa_rows(csv_file: Path) -> list[dict[str, str]]:
    """Read and check the VisA split csv; each row gets its 1-based file ``line`` number."""
    with open(csv_file, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in VISA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetFormatError(
                f"{csv_file}: missing columns {', '.join(missing)}; expected {','.join(VISA_COLUMNS)}"
            )
        rows = [{**{k: (row[k] or "").strip() for k in VISA_COLUMNS}, "line": str(reader.line_num)} for row in reader]
    for row in rows:
        _check_visa_row(csv_file, row)
    return rows


def _check_visa_row(csv_file: Path, row: dict[str, str]) -> None:
    """Raise when a split-csv row has an unknown split or label, or a mask that does not fit its label."""
    where = f"{csv_file} line {row['line']}"
    if row["split"] not in SPLIT_NAMES:
        raise DatasetFormatError(f"{where}: unknown split {row['split']!r}; expected train or test")
    if row["label"] not in VISA_LABELS:
        raise DatasetFormatError(f"{where}: unknown label {row['label']!r}; expected normal or anomaly")
    if not row["object"] or not row["image"]:
        raise DatasetFormatError(f"{where}: empty object or image field")
    if row["label"] == "anomaly" and not row["mask"]:
        raise DatasetFormatError(f"{csv_file.parents[1] / row['image']}: anomalous image without its mask ({where})")
    if row["label"] == "normal" and row["mask"]:
        raise DatasetFormatError(f"{csv_file.parents[1] / row['mask']}: mask given for a normal image ({where})")


def _visa_sample(root: Path, row: dict[str, str]) -> Sample:
    """Describe the image of one split-csv row (its defect type is filled in later)."""
    image_path = PurePosixPath(row["image"].replace("\\", "/")).as_posix()
    mask = root / row["mask"].replace("\\", "/") if row["mask"] else None
    label = VISA_LABELS[row["label"]]
    defect = NORMAL_DEFECT_TYPE if label == 0 else VISA_UNKNOWN_DEFECT_TYPE
    return Sample(row["split"], root / image_path, mask, label, row["object"], defect, image_path)


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
    """Map image path to defect label from a VisA ``image_anno.csv`` (empty when the file is absent)."""
    if not anno_file.is_file():
        return {}
    with open(anno_file, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not {"image", "label"} <= set(reader.fieldnames or []):
            raise DatasetFormatError(f"{anno_file}: expected the columns image,label,mask")
        return {
            PurePosixPath(row["image"].strip().replace("\\", "/")).as_posix(): row["label"].strip()
            for row in reader
            if row["image"] and row["label"] and row["label"].strip() != "normal"
        }


def _check_category_splits(samples: list[Sample], category: str, source: Path) -> None:
    """Raise when a category has no train or no test image."""
    for split in SPLIT_NAMES:
        if not any(s.category == category and s.split == split for s in samples):
            raise DatasetFormatError(f"{source}: empty {split} split for category {category!r}")


# ----------------------------------------------------------------------------------------------------
# Decoding, validation and encoding of one sample
# ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _strict_truncation() -> Iterator[None]:
    """Make PIL raise on truncated files while decoding, whatever the global setting is."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def read_image_file(path: Path) -> tuple[Image.Image, bytes]:
    """Read an image file and decode it fully, so that corrupt and truncated files are caught.

    Args:
        path: The image file.

    Returns:
        The decoded image and the file's bytes.

    Raises:
        DatasetFormatError: The file cannot be read or decoded completely.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DatasetFormatError(f"{path}: cannot read file ({error.strerror or error})") from error
    try:
        with _strict_truncation():
            Image.open(io.BytesIO(data)).verify()  # walks the chunks to the end: catches a cut-off PNG
            image = Image.open(io.BytesIO(data))
            image.load()
    except UnidentifiedImageError as error:
        raise DatasetFormatError(f"{path}: not a readable image file (unknown or corrupt format)") from error
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
        raise DatasetFormatError(
            f"{path}: cannot decode image, the file is corrupt or truncated ({type(error).__name__}: {error})"
        ) from error
    return image, data


def encode_rgb_image(image: Image.Image, data: bytes) -> bytes:
    """Return PNG/JPEG bytes of an RGB version of ``image``, reusing the file's bytes when already RGB.

    Args:
        image: The decoded image.
        data: The bytes of the file it was decoded from.

    Returns:
        Encoded bytes of a 3-channel image.
    """
    if image.mode == "RGB" and image.format in _PASSTHROUGH_IMAGE_FORMATS:
        return data
    return _png_bytes(image.convert("RGB"))


def encode_binary_mask(mask: Image.Image, data: bytes) -> bytes:
    """Return PNG bytes of a mode ``L`` 0/255 version of ``mask`` (any non-zero value is foreground).

    Args:
        mask: The decoded mask.
        data: The bytes of the file it was decoded from (reused when already a 0/255 ``L`` PNG).

    Returns:
        Encoded bytes of a binary mask.
    """
    if mask.mode in ("1", "L", "I", "I;16", "F"):
        values = np.asarray(mask)
        foreground = values > 0
    else:
        values, foreground = None, (np.asarray(mask.convert("RGB")) > 0).any(axis=-1)
    binary = foreground.astype(np.uint8) * 255
    if mask.mode == "L" and mask.format == "PNG" and np.array_equal(values, binary):
        return data
    return _png_bytes(Image.fromarray(binary))


def _png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _encode_sample(sample: Sample) -> dict:
    """Decode, check and encode one sample into a row of `anomaly_features`."""
    image, image_data = read_image_file(sample.image_file)
    mask_bytes = None
    if sample.mask_file is not None:
        mask, mask_data = read_image_file(sample.mask_file)
        if mask.size != image.size:
            raise DatasetFormatError(
                f"{sample.mask_file}: mask size {mask.size[0]}x{mask.size[1]} differs from the size "
                f"{image.size[0]}x{image.size[1]} of its image {sample.image_file}"
            )
        mask_bytes = encode_binary_mask(mask, mask_data)
    return {
        "image": encode_rgb_image(image, image_data),
        "mask": mask_bytes,
        "label": sample.label,
        "category": sample.category,
        "defect_type": sample.defect_type,
        "image_path": sample.image_path,
    }


# ----------------------------------------------------------------------------------------------------
# Building, loading and saving datasets
# ----------------------------------------------------------------------------------------------------


def _generate_rows(samples: tuple[Sample, ...]) -> Iterator[dict]:
    """Yield the encoded rows of ``samples`` one at a time (the `Dataset.from_generator` generator)."""
    for sample in samples:
        yield _encode_sample(sample)


def _build_dataset_dict(samples: list[Sample], cache_dir: str | os.PathLike | None) -> datasets.DatasetDict:
    """Build both splits from located samples."""
    return datasets.DatasetDict(
        {split: _build_split([s for s in samples if s.split == split], split, cache_dir) for split in SPLIT_NAMES}
    )


def _build_split(samples: list[Sample], split: str, cache_dir: str | os.PathLike | None) -> datasets.Dataset:
    """Encode one split through `Dataset.from_generator`, surfacing `DatasetFormatError` unwrapped."""
    try:
        return datasets.Dataset.from_generator(
            _generate_rows,
            features=anomaly_features(),
            gen_kwargs={"samples": tuple(samples)},
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            split=split,
            fingerprint=_fingerprint(samples, split),
            writer_batch_size=_WRITER_BATCH_SIZE,
        )
    except datasets.exceptions.DatasetGenerationError as error:
        cause = _find_cause(error, DatasetFormatError)
        if cause is None:
            raise
        raise cause from None


def _fingerprint(samples: Sequence[Sample], split: str) -> str:
    """Hash the samples and their files' sizes and modification times, so the generator cache is only
    reused for unchanged files."""
    digest = hashlib.sha256(f"clipada-anomaly-v{_ENCODING_VERSION}|{split}".encode())
    for sample in samples:
        files = [p for p in (sample.image_file, sample.mask_file) if p is not None]
        stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        digest.update(repr((sample.label, sample.category, sample.defect_type, sample.image_path, stats)).encode())
    return digest.hexdigest()[:32]


def _find_cause(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """Return the first exception of type ``kind`` in the cause/context chain of ``error``."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` was written by `save_to_disk` (a `DatasetDict` or a single `Dataset`)."""
    return any((path / name).is_file() for name in ("dataset_dict.json", "state.json"))


def _load_saved_dataset(path: Path) -> datasets.DatasetDict:
    """Load a folder written by `DatasetDict.save_to_disk`."""
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:
        raise DatasetFormatError(f"{path}: cannot load the saved dataset ({type(error).__name__}: {error})") from error
    if not isinstance(loaded, datasets.DatasetDict):
        raise DatasetFormatError(f"{path}: holds a single Dataset; expected a DatasetDict with train and test splits")
    return loaded


def _load_hub_dataset(dataset_id: str) -> datasets.DatasetDict:
    """Load a dataset from the Hugging Face Hub."""
    try:
        loaded = datasets.load_dataset(dataset_id)
    except Exception as error:
        raise DatasetFormatError(
            f"{dataset_id}: not an existing folder, and loading it as a Hub dataset failed "
            f"({type(error).__name__}: {error})"
        ) from error
    if not isinstance(loaded, datasets.DatasetDict):
        raise DatasetFormatError(f"{dataset_id}: expected a DatasetDict with train and test splits")
    return loaded


def _check_schema(dataset_dict: datasets.DatasetDict, source: str) -> None:
    """Raise unless ``dataset_dict`` has the splits and columns this module produces."""
    missing_splits = [s for s in SPLIT_NAMES if s not in dataset_dict]
    if missing_splits:
        raise DatasetFormatError(f"{source}: missing splits {', '.join(missing_splits)}; expected train and test")
    for name in SPLIT_NAMES:
        missing = [c for c in REQUIRED_COLUMNS if c not in dataset_dict[name].column_names]
        if missing:
            raise DatasetFormatError(
                f"{source}: split {name!r} lacks the columns {', '.join(missing)}; "
                f"expected {', '.join(REQUIRED_COLUMNS)} (as written by training.prepare_dataset)"
            )


def _check_replaceable(output_dir: Path) -> None:
    """Raise unless ``output_dir`` is absent, empty, or a saved dataset."""
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise DatasetFormatError(f"{output_dir}: output path is a file; expected a folder")
    if any(output_dir.iterdir()) and not _is_saved_dataset(output_dir):
        raise DatasetFormatError(
            f"{output_dir}: output folder is not empty and not a saved dataset; refusing to replace it"
        )


def _replace_dir(staging: Path, output_dir: Path) -> None:
    """Move ``staging`` to ``output_dir``, replacing an existing folder only after the move succeeded."""
    if not output_dir.exists():
        staging.rename(output_dir)
        return
    backup = output_dir.parent / f".{output_dir.name}.old-{uuid.uuid4().hex[:12]}"
    output_dir.rename(backup)
    try:
        staging.rename(output_dir)
    except BaseException:
        backup.rename(output_dir)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _sibling_dir(path: Path, tag: str) -> Path:
    """Create a new hidden folder beside ``path`` (same disk, so it can be renamed onto ``path``).

    Unlike `tempfile.mkdtemp` it gets the default permissions, which the renamed folder keeps.
    """
    folder = path.parent / f".{path.name}.{tag}-{uuid.uuid4().hex[:12]}"
    folder.mkdir()
    return folder


def _existing_dir(data_dir: str | os.PathLike) -> Path:
    """Return ``data_dir`` as a path, raising when it is not an existing folder."""
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DatasetFormatError(f"{path}: data_dir not found")
    if not path.is_dir():
        raise DatasetFormatError(f"{path}: data_dir is a file; expected a folder")
    return path


def _subdirs(folder: Path) -> list[Path]:
    """Sorted non-hidden sub-folders of ``folder`` (none when it does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


__all__ = [
    "DATASET_NAMES",
    "LABEL_NAMES",
    "DatasetFormatError",
    "Sample",
    "anomaly_features",
    "build_mvtec_ad",
    "build_visa",
    "encode_binary_mask",
    "encode_rgb_image",
    "filter_categories",
    "infer_dataset_layout",
    "load_anomaly_dataset",
    "read_image_file",
    "save_dataset_atomically",
    "select_categories",
]
