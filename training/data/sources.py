"""Choosing the source of a dataset (raw folder, saved folder or Hub id), checking its schema and categories."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import datasets

from .btad import build_btad, is_btad_product
from .folder import build_folder_dataset
from .mpdd import build_mpdd
from .mvtec import build_mvtec_ad
from .mvtec_ad2 import build_mvtec_ad2, is_mvtec_ad2_scenario
from .real_iad import build_real_iad, is_real_iad_root
from .schema import (
    DATASET_NAMES,
    REQUIRED_COLUMNS,
    SPLIT_NAMES,
    DatasetFormatError,
    checked_name,
    existing_dir,
    select_categories,
    subdirs,
)
from .visa import VISA_SPLIT_CSV, build_visa

_HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def load_anomaly_dataset(
    dataset_name: str,
    dataset: str | None = None,
    categories: Sequence[str] | None = None,
    *,
    allow_missing_files: bool = False,
    cache_dir: str | os.PathLike | None = None,
    real_iad_protocol: str = "multi_view",
    real_iad_resolution: str | None = None,
) -> datasets.DatasetDict:
    """Load an anomaly-detection `DatasetDict` from a raw folder, a saved folder or the Hub.

    Args:
        dataset_name: A raw MVTec-AD folder (or one of its category folders), a raw VisA folder (holds
            ``split_csv/1cls.csv``), a plain folder of your own images (``train/good``, optional ``test/`` and
            ``ground_truth/``, see `training.data.folder`), a folder written by `DatasetDict.save_to_disk`,
            or a Hub dataset id. The Hub is only tried when the string is not an existing local path.
        dataset: ``"mvtec_ad"``, ``"visa"``, ``"folder"``, ``"mvtec_ad2"``, ``"real_iad"``, ``"btad"``, ``"mpdd"`` or
            ``None`` to infer the layout of a raw folder (MPDD is MVTec-AD's layout: name it to get its checks).
        categories: Keep only these categories (all when ``None``); an unknown one is an error that lists
            the available ones.
        allow_missing_files: VisA and Real-IAD: drop split-file rows whose files are missing instead of failing.
        cache_dir: Where `datasets` caches the Arrow files built from a raw folder (defaults to the
            `datasets` cache).
        real_iad_protocol: Real-IAD: the protocol whose JSON split files are read (`training.data.real_iad`).
        real_iad_resolution: Real-IAD: the image folder ``realiad_<resolution>``; by default the first of 1024, 512,
            256, raw present.

    Returns:
        A `DatasetDict` with the splits ``train`` and ``test`` and the columns of `anomaly_features` (MVTec AD 2 adds
        the splits ``validation``, ``test_private``, ``test_private_mixed`` and a ``split_name`` column; Real-IAD the
        columns ``sample_id``, ``view`` and ``anomaly_class``).

    Raises:
        DatasetFormatError: The input is missing, of an unknown layout, or malformed; a saved or Hub dataset whose
            ``category`` or ``defect_type`` is not a single file name, or whose ``image_path`` is not a relative
            path inside the dataset (these values become output file names, see `checked_name`).
    """
    if dataset is not None and dataset not in DATASET_NAMES:
        raise DatasetFormatError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASET_NAMES)} or None")
    name = os.fspath(dataset_name)
    path = Path(name).expanduser()
    if path.is_dir() and not _is_saved_dataset(path):
        layout = dataset or infer_dataset_layout(path)
        if layout == "visa":
            return build_visa(path, categories, allow_missing_files=allow_missing_files, cache_dir=cache_dir)
        if layout == "real_iad":
            return build_real_iad(
                path,
                categories,
                protocol=real_iad_protocol,
                resolution=real_iad_resolution,
                allow_missing_files=allow_missing_files,
                cache_dir=cache_dir,
            )
        builders = {
            "folder": build_folder_dataset,
            "mvtec_ad2": build_mvtec_ad2,
            "btad": build_btad,
            "mpdd": build_mpdd,
        }
        return builders.get(layout, build_mvtec_ad)(path, categories, cache_dir=cache_dir)
    if path.is_dir():
        dataset_dict = _load_saved_dataset(path)
    elif path.exists():
        raise DatasetFormatError(f"{path}: is a file; expected a dataset folder")
    elif not _HUB_ID_PATTERN.match(name):
        raise DatasetFormatError(f"{path}: folder not found")
    else:
        dataset_dict = _load_hub_dataset(name)
    _check_schema(dataset_dict, name)
    _check_names(dataset_dict, name)
    return filter_categories(dataset_dict, categories, name)


def infer_dataset_layout(data_dir: str | os.PathLike) -> str:
    """Tell whether a raw folder is laid out as VisA, Real-IAD, MVTec AD 2, BTAD, MVTec-AD or a plain folder of your
    own images (MPDD has MVTec-AD's layout and is only read as MPDD when named).

    A tree of ``train/good`` folders is MVTec-AD when a category holds ``ground_truth/`` (then every
    anomalous image needs its mask and ``test/`` is required, which catches incomplete downloads), and the
    plain folder layout otherwise (no masks, or no ``test/``). Your own data with masks for only some
    anomalous images needs ``dataset="folder"`` (CLI: ``--dataset folder``).

    Args:
        data_dir: The folder to inspect.

    Returns:
        ``"visa"`` when ``split_csv/1cls.csv`` exists, ``"real_iad"`` when a ``realiad_jsons*`` folder does,
        ``"mvtec_ad2"`` when the folder (or a sub-folder) holds ``test_public/``, ``"btad"`` when it holds
        ``train/ok/``, ``"mvtec_ad"`` or ``"folder"`` when it holds ``train/good``.

    Raises:
        DatasetFormatError: The folder is missing or matches no layout.
    """
    root = existing_dir(data_dir)
    if (root / VISA_SPLIT_CSV).is_file():
        return "visa"
    if is_real_iad_root(root):
        return "real_iad"
    children = [root, *subdirs(root)]
    if any(is_mvtec_ad2_scenario(folder) for folder in children):
        return "mvtec_ad2"
    if any(is_btad_product(folder) for folder in children):
        return "btad"
    categories = [root] if (root / "train" / "good").is_dir() else subdirs(root)
    categories = [d for d in categories if (d / "train" / "good").is_dir()]
    if categories:
        return "mvtec_ad" if any((d / "ground_truth").is_dir() for d in categories) else "folder"
    if (root / "train").is_dir() or (root / "test").is_dir():
        raise DatasetFormatError(f"{root / 'train' / 'good'}: folder not found; the normal training images go there")
    raise DatasetFormatError(
        f"{root}: cannot tell the dataset layout; expected {VISA_SPLIT_CSV} (VisA), realiad_jsons/ (Real-IAD), "
        "<scenario>/test_public/ (MVTec AD 2), <product>/train/ok/ (BTAD), <category>/train/good/ (MVTec-AD, MPDD "
        "or your own images), train/good/ (your own images, one category) or a folder written by "
        "DatasetDict.save_to_disk (dataset_dict.json)"
    )


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
    """Raise unless ``dataset_dict`` has the splits and columns this package produces."""
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


def _check_names(dataset_dict: datasets.DatasetDict, source: str) -> None:
    """Raise unless every ``category`` and ``defect_type`` is a single file name and every ``image_path`` a relative
    path inside the dataset, as the raw-folder readers guarantee (a hand-made dataset is checked here)."""
    for split_name, split in dataset_dict.items():
        for column in ("category", "defect_type"):
            for value in split.unique(column):
                checked_name(value, f"{source}: split {split_name!r} column {column!r}")
        if "image_path" in split.column_names:
            for value in split.unique("image_path"):
                _check_relative_path(value, f"{source}: split {split_name!r} column 'image_path'")


def _check_relative_path(value: str | None, field: str) -> None:
    """Raise unless ``value`` is ``None`` or a relative posix path whose every part is a single file name."""
    if value is None:
        return
    try:
        for part in str(value).split("/"):  # an absolute path starts with the empty part
            checked_name(part, field)
    except DatasetFormatError:
        raise DatasetFormatError(
            f"{field} {value!r} is not a relative path inside the dataset (names joined by '/', none of them empty, "
            "'.', '..' or holding a control character)"
        ) from None


__all__ = ["filter_categories", "infer_dataset_layout", "load_anomaly_dataset"]
