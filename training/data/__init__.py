"""Turn raw MVTec-AD / VisA / MVTec AD 2 / Real-IAD / BTAD / MPDD folders, plain folders of your own images, saved
folders or Hub ids into a `DatasetDict`.

Every dataset this package returns has the splits ``train`` and ``test`` and the columns

- ``image`` (`datasets.Image`): 8-bit RGB, upright, its encoded bytes embedded in the dataset;
- ``mask`` (`datasets.Image`): mode ``L`` with values 0/255, ``None`` for normal images; ``None`` for an
  anomalous image means its mask is not available (folder layout only; see `has_ground_truth`);
- ``label`` (`datasets.ClassLabel`, names ``["good", "anomaly"]``);
- ``category`` (`str`), ``defect_type`` (`str`, ``"good"`` for normal images);
- ``image_path`` (`str`): the image's path relative to the dataset root, posix style.

Some layouts add what they need: MVTec AD 2 the splits ``validation``, ``test_private`` and ``test_private_mixed``
(``test`` is its ``test_public``; private rows have ``label`` -1, no label) and a ``split_name`` column; Real-IAD the
columns ``sample_id``, ``view`` and ``anomaly_class``.

Raw folders are read in two passes: a cheap pass over the folder layout (`mvtec`, `folder`) or VisA's
split csv (`visa`) that pairs every image with its mask and checks that the files exist, then `build`, which
decodes each file once through `Dataset.from_generator` (`images`: rejecting corrupt, truncated or empty
files, applying the EXIF orientation, scaling 16-bit data) and writes the rows to an Arrow cache on disk,
so the decoded images never sit in RAM together. `sources` picks the source and checks saved datasets;
`save` writes a dataset atomically. Every problem with the input raises `DatasetFormatError` naming the
offending file.

Modules:
    schema: columns, constants, `Sample`, `DatasetFormatError` and the checks every layout shares.
    images: reading, decoding and re-encoding one image or mask file.
    mvtec, visa, folder: locating the samples of each raw layout (folder: your own images, masks optional).
    mvtec_ad2, real_iad, btad, mpdd: the same for the benchmarks of 2025-26 (one module per dataset).
    build: building the `DatasetDict` from located samples.
    sources: `load_anomaly_dataset` (raw folder, saved folder or Hub id), layout inference, category filter.
    save: `save_dataset_atomically` with our marker file.

Example:
    >>> from training.data import load_anomaly_dataset, save_dataset_atomically
    >>> dataset = load_anomaly_dataset("/data/mvtec_anomaly_detection", categories=["bottle"])
    >>> dataset["train"].features["label"].names
    ['good', 'anomaly']
    >>> save_dataset_atomically(dataset, "/data/mvtec_bottle_hf")
"""

from .btad import build_btad
from .build import build_dataset_dict, encode_sample
from .folder import build_folder_dataset
from .images import encode_binary_mask, encode_rgb_image, read_image_file
from .mpdd import build_mpdd
from .mvtec import build_mvtec_ad
from .mvtec_ad2 import build_mvtec_ad2
from .real_iad import REAL_IAD_PROTOCOLS, REAL_IAD_RESOLUTIONS, build_real_iad
from .save import DATASET_MARKER, check_output_dir, is_our_dataset, save_dataset_atomically
from .schema import (
    DATASET_NAMES,
    IMAGE_EXTENSIONS,
    LABEL_NAMES,
    NORMAL_DEFECT_TYPE,
    REQUIRED_COLUMNS,
    SPLIT_NAMES,
    UNKNOWN_LABEL,
    DatasetFormatError,
    Sample,
    anomaly_features,
    has_ground_truth,
    select_categories,
)
from .sources import filter_categories, infer_dataset_layout, load_anomaly_dataset
from .visa import build_visa

__all__ = [
    "DATASET_MARKER",
    "DATASET_NAMES",
    "IMAGE_EXTENSIONS",
    "LABEL_NAMES",
    "NORMAL_DEFECT_TYPE",
    "REAL_IAD_PROTOCOLS",
    "REAL_IAD_RESOLUTIONS",
    "REQUIRED_COLUMNS",
    "SPLIT_NAMES",
    "UNKNOWN_LABEL",
    "DatasetFormatError",
    "Sample",
    "anomaly_features",
    "build_btad",
    "build_dataset_dict",
    "build_folder_dataset",
    "build_mpdd",
    "build_mvtec_ad",
    "build_mvtec_ad2",
    "build_real_iad",
    "build_visa",
    "check_output_dir",
    "encode_binary_mask",
    "encode_rgb_image",
    "encode_sample",
    "filter_categories",
    "has_ground_truth",
    "infer_dataset_layout",
    "is_our_dataset",
    "load_anomaly_dataset",
    "read_image_file",
    "save_dataset_atomically",
    "select_categories",
]
