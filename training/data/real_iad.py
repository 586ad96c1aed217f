"""The Real-IAD layout: 30 objects, five camera views per sample, JSON split files for each protocol.

Layout (from the official repository, Tencent/AnomalyDetection_Real-IAD, its README and ``explicit_dataset.py``)::

    realiad_1024/<object>/OK/S0001/<object>_0001_OK_C1_<time>.jpg            images (also realiad_512, _256, _raw)
    realiad_1024/<object>/NG/<class>/S0030/<object>_0030_NG_<class>_C2_<time>.jpg
    realiad_1024/<object>/NG/<class>/S0030/<object>_0030_NG_<class>_C2_<time>_mask.png
    realiad_jsons/<object>.json               multi-view protocol (all five views)
    realiad_jsons_sv/<object>.json            single-view protocol
    realiad_jsons_fuiad_0.1/<object>.json     noisy (fully unsupervised) training, 10 % anomalies among the training
                                              images (also _0.0, _0.2, _0.4)

Each JSON file holds ``{"meta": {"prefix": ..., "normal_class": "OK"}, "train": [...], "test": [...]}``, every
entry ``{"category", "anomaly_class", "image_path", "mask_path"}`` with paths relative to
``realiad_<resolution>/<prefix>``. As the official loader does, every training entry is a normal image for the
protocol (a noisy protocol's anomalies are unknown to the learner), and a test entry is anomalous when its class is
not the normal class and it has a mask (a view of a defective part where the defect is not visible has no mask and
counts as normal for the image metrics). Rows get the columns ``sample_id`` (the part: ``<object>_0030_NG_AK``, the key
the official evaluation groups views by), ``view`` (``C1`` .. ``C5``) and ``anomaly_class`` (the JSON's class, ``OK``
or a defect code such as ``AK``, training rows included, so a noisy protocol's anomalies stay visible). The
sample-level metrics (`training.metrics.sample_level`) take a part's score over its views.

Example:
    >>> from training.data.real_iad import build_real_iad
    >>> dataset = build_real_iad("/data/Real-IAD", ["audiojack"], protocol="multi_view", resolution="1024")
    >>> dataset["test"].column_names[-3:]
    ['sample_id', 'view', 'anomaly_class']
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import datasets

from .build import build_dataset_dict
from .schema import (
    NORMAL_DEFECT_TYPE,
    DatasetFormatError,
    Sample,
    checked_name,
    existing_dir,
    reject_repeated_images,
    select_categories,
)

logger = logging.getLogger(__name__)

# Protocol name -> the folder of its JSON split files.
REAL_IAD_PROTOCOLS = {
    "multi_view": "realiad_jsons",
    "single_view": "realiad_jsons_sv",
    "noisy_0.0": "realiad_jsons_fuiad_0.0",
    "noisy_0.1": "realiad_jsons_fuiad_0.1",
    "noisy_0.2": "realiad_jsons_fuiad_0.2",
    "noisy_0.4": "realiad_jsons_fuiad_0.4",
}
# Image folders `realiad_<resolution>`, in the order tried when none is named.
REAL_IAD_RESOLUTIONS = ("1024", "512", "256", "raw")
ENTRY_KEYS = ("category", "anomaly_class", "image_path", "mask_path")
EXTRA_COLUMNS = ("sample_id", "view", "anomaly_class")
# `<object>_<4 digits>_OK_C<view>_...` or `<object>_<4 digits>_NG_<class>_C<view>_...`: the part (sample, with its
# defect class) and the camera view, as the official evaluation keys them.
_FILE_NAME = re.compile(r"^(?P<sample>.+_\d{4}_(?:OK|NG_[A-Za-z0-9]+))_(?P<view>C\d+)_")
_SKIP_MISSING_HINT = (
    "pass allow_missing_files=True (CLI: --skip_missing_files) to keep only the entries whose files exist"
)


def build_real_iad(
    data_dir: str | os.PathLike,
    categories: Sequence[str] | None = None,
    *,
    protocol: str = "multi_view",
    resolution: str | None = None,
    allow_missing_files: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.DatasetDict:
    """Build the `DatasetDict` of a raw Real-IAD folder through one protocol's JSON split files.

    Args:
        data_dir: The Real-IAD root, holding ``realiad_jsons*/`` and ``realiad_<resolution>/``.
        categories: Keep only these objects (all the protocol lists when ``None``).
        protocol: One of `REAL_IAD_PROTOCOLS`: ``multi_view`` (default), ``single_view`` or ``noisy_<ratio>``.
        resolution: The image folder ``realiad_<resolution>`` (``1024``, ``512``, ``256``, ``raw``); by default the
            first of these that exists.
        allow_missing_files: Drop entries whose image or mask file is missing (a partial download).
        cache_dir: Where `datasets` caches the Arrow files (defaults to the `datasets` cache).

    Returns:
        A `DatasetDict` with the splits ``train`` and ``test`` and the extra columns `EXTRA_COLUMNS`.

    Raises:
        DatasetFormatError: An unknown protocol or resolution, a missing JSON folder or image folder, a JSON file
            that is not valid JSON or not of the official structure (naming the entry), a path outside ``data_dir``,
            an entry of another object, a file name without part and view, one view of a part listed twice, a
            missing file, an empty split, a corrupt image or a mask whose size differs from its image.
    """
    root = existing_dir(data_dir)
    if protocol not in REAL_IAD_PROTOCOLS:
        raise DatasetFormatError(f"unknown Real-IAD protocol {protocol!r}; expected {', '.join(REAL_IAD_PROTOCOLS)}")
    json_dir = root / REAL_IAD_PROTOCOLS[protocol]
    if not json_dir.is_dir():
        raise DatasetFormatError(f"{json_dir}: folder of the {protocol} protocol's JSON split files not found")
    images_dir = _images_dir(root, resolution)
    available = sorted(path.stem for path in json_dir.glob("*.json") if not path.name.startswith("."))
    selected = select_categories(available, categories, json_dir)
    samples = []
    for category in selected:
        checked_name(category, f"{json_dir}: JSON file name")
        found = _category_samples(root, images_dir, json_dir / f"{category}.json", category)
        samples += _drop_missing(found) if allow_missing_files else _require_files(found)
    for category in selected:
        for split in ("train", "test"):
            if not any(s.category == category and s.split == split for s in samples):
                raise DatasetFormatError(f"{json_dir / category}.json: empty {split} split")
    reject_repeated_images(samples)
    return build_dataset_dict(samples, cache_dir)


def is_real_iad_root(folder: Path) -> bool:
    """Whether ``folder`` holds one of Real-IAD's JSON split folders."""
    return any((folder / name).is_dir() for name in REAL_IAD_PROTOCOLS.values())


def _images_dir(root: Path, resolution: str | None) -> Path:
    """The ``realiad_<resolution>`` image folder: the one named, else the first that exists."""
    if resolution is not None:
        if str(resolution) not in REAL_IAD_RESOLUTIONS:
            raise DatasetFormatError(
                f"unknown Real-IAD resolution {resolution!r}; expected {', '.join(REAL_IAD_RESOLUTIONS)}"
            )
        folder = root / f"realiad_{resolution}"
        if not folder.is_dir():
            raise DatasetFormatError(f"{folder}: image folder not found")
        return folder
    for candidate in REAL_IAD_RESOLUTIONS:
        if (root / f"realiad_{candidate}").is_dir():
            return root / f"realiad_{candidate}"
    expected = ", ".join(f"realiad_{r}" for r in REAL_IAD_RESOLUTIONS)
    raise DatasetFormatError(f"{root}: no Real-IAD image folder ({expected})")


def _read_split_file(json_file: Path) -> dict:
    """The checked content of one JSON split file."""
    try:
        content = json.loads(json_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise DatasetFormatError(f"{json_file}: not UTF-8 text (offset {error.start})") from None
    except json.JSONDecodeError as error:
        raise DatasetFormatError(f"{json_file}: not valid JSON ({error.msg}, line {error.lineno})") from None
    except OSError as error:
        raise DatasetFormatError(f"{json_file}: cannot read file ({error.strerror or error})") from None
    if not isinstance(content, dict) or not all(key in content for key in ("meta", "train", "test")):
        raise DatasetFormatError(f"{json_file}: expected an object with the keys meta, train and test")
    meta = content["meta"]
    if not isinstance(meta, dict) or not isinstance(meta.get("normal_class"), str):
        raise DatasetFormatError(f"{json_file}: meta must be an object with a string normal_class")
    if not isinstance(meta.get("prefix", ""), str):
        raise DatasetFormatError(f"{json_file}: meta.prefix must be a string")
    for split in ("train", "test"):
        if not isinstance(content[split], list):
            raise DatasetFormatError(f"{json_file}: {split} must be a list of entries")
        for index, entry in enumerate(content[split]):
            _check_entry(json_file, f"{split}[{index}]", entry)
    return content


def _check_entry(json_file: Path, where: str, entry: object) -> None:
    """Raise unless ``entry`` has the official keys with string values (``mask_path`` may be null)."""
    if not isinstance(entry, dict) or not all(key in entry for key in ENTRY_KEYS):
        raise DatasetFormatError(f"{json_file} {where}: expected an object with the keys {', '.join(ENTRY_KEYS)}")
    for key in ENTRY_KEYS:
        value = entry[key]
        if not (isinstance(value, str) and value) and not (key == "mask_path" and value is None):
            raise DatasetFormatError(f"{json_file} {where}: {key} must be a non-empty string, got {value!r}")


def _category_samples(root: Path, images_dir: Path, json_file: Path, category: str) -> list[Sample]:
    """The samples one JSON split file lists, labelled by the official rule."""
    content = _read_split_file(json_file)
    prefix, normal_class = content["meta"].get("prefix", ""), content["meta"]["normal_class"]
    samples, seen = [], {}
    for split in ("train", "test"):
        for index, entry in enumerate(content[split]):
            where = f"{json_file} {split}[{index}]"
            if entry["category"] != category:
                raise DatasetFormatError(f"{where}: category {entry['category']!r} in the file of {category!r}")
            image = _path_inside(root, images_dir, prefix, entry["image_path"], where)
            match = _FILE_NAME.match(image.name)
            if match is None:
                raise DatasetFormatError(
                    f"{where}: file name {image.name!r} does not name its part and view "
                    "(expected <object>_<4 digits>_OK_C<view>_... or <object>_<4 digits>_NG_<class>_C<view>_...)"
                )
            key = (split, match["sample"], match["view"])
            if key in seen:
                raise DatasetFormatError(
                    f"{where}: view {match['view']} of part {match['sample']} is listed twice in {split} "
                    f"(also {seen[key]})"
                )
            seen[key] = f"{split}[{index}]"
            anomalous = split == "test" and entry["anomaly_class"] != normal_class and entry["mask_path"] is not None
            mask = _path_inside(root, images_dir, prefix, entry["mask_path"], where) if anomalous else None
            defect = checked_name(entry["anomaly_class"], f"{where}: anomaly_class") if anomalous else None
            extra = (("sample_id", match["sample"]), ("view", match["view"]), ("anomaly_class", entry["anomaly_class"]))
            checked_name(image.name, f"{where}: image file name")
            relative = Path(os.path.abspath(image)).relative_to(Path(os.path.abspath(root))).as_posix()
            samples.append(
                Sample(
                    split, image, mask, int(anomalous), category, defect or NORMAL_DEFECT_TYPE, relative, extra=extra
                )
            )
    return samples


def _path_inside(root: Path, images_dir: Path, prefix: str, relative: str, where: str) -> Path:
    """``images_dir / prefix / relative``, refused when it leads outside ``root`` (links followed)."""
    path = images_dir / prefix / relative.replace("\\", "/")
    if Path(relative).is_absolute() or not path.resolve().is_relative_to(root.resolve()):
        raise DatasetFormatError(
            f"{where}: path {relative!r} lies outside the data_dir {root}; JSON paths must stay inside it"
        )
    return path


def _require_files(samples: list[Sample]) -> list[Sample]:
    """Raise for the first sample whose image or mask file is missing."""
    for sample in samples:
        for path in (sample.image_file, sample.mask_file):
            if path is not None and not path.is_file():
                raise DatasetFormatError(
                    f"{path}: file not found (listed in the JSON split file); {_SKIP_MISSING_HINT}"
                )
    return samples


def _drop_missing(samples: list[Sample]) -> list[Sample]:
    """Keep the samples whose image (and mask) exist."""
    kept = [s for s in samples if s.image_file.is_file() and (s.mask_file is None or s.mask_file.is_file())]
    if len(kept) < len(samples):
        logger.warning("Skipped %d of %d JSON entries whose files are missing.", len(samples) - len(kept), len(samples))
    return kept


__all__ = ["EXTRA_COLUMNS", "REAL_IAD_PROTOCOLS", "REAL_IAD_RESOLUTIONS", "build_real_iad", "is_real_iad_root"]
