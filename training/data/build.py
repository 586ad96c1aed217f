"""Building the Arrow-backed `DatasetDict` from located samples, one decoded file at a time."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence

import datasets

from .images import encode_binary_mask, encode_rgb_image, read_image_file
from .schema import SPLIT_NAMES, DatasetFormatError, Sample, anomaly_features

# Bump when the encoding of the rows changes, so stale generator caches are not reused.
# 2: EXIF orientation applied when reading, 16-bit images scaled by their bit depth.
# 3: float images read as values in [0, 1] (predict's rule), multi-frame files refused.
_ENCODING_VERSION = "3"
# Rows buffered in RAM before they are flushed to the Arrow cache (a row holds one encoded image).
_WRITER_BATCH_SIZE = 16


def encode_sample(sample: Sample) -> dict:
    """Decode, check and encode one sample into a row of `anomaly_features`.

    Args:
        sample: The located image (and mask).

    Returns:
        The row, with the image and mask as encoded bytes.

    Raises:
        DatasetFormatError: A file cannot be decoded or holds several frames, float pixels lie outside [0, 1] (a
            float mask holds NaN), or the mask's size differs from its (upright) image.
    """
    image, image_data = read_image_file(sample.image_file)
    mask_bytes = None
    if sample.mask_file is not None:
        mask, mask_data = read_image_file(sample.mask_file)
        if mask.size != image.size:
            raise DatasetFormatError(
                f"{sample.mask_file}: mask size {mask.size[0]}x{mask.size[1]} differs from the size "
                f"{image.size[0]}x{image.size[1]} of its image {sample.image_file}"
            )
        mask_bytes = encode_binary_mask(mask, mask_data, sample.mask_file)
    return {
        "image": encode_rgb_image(image, image_data, sample.image_file),
        "mask": mask_bytes,
        "label": sample.label,
        "category": sample.category,
        "defect_type": sample.defect_type,
        "image_path": sample.image_path,
        **dict(sample.extra),
    }


def build_dataset_dict(
    samples: Sequence[Sample], cache_dir: str | os.PathLike | None, split_names: Sequence[str] = SPLIT_NAMES
) -> datasets.DatasetDict:
    """Build the splits from located samples through `Dataset.from_generator`.

    Each file is decoded once and its row written to an Arrow cache on disk, so the decoded images never
    sit in RAM together. The layout's extra columns (`Sample.extra`, the same for every sample) follow the shared ones.

    Args:
        samples: The located samples of all splits.
        cache_dir: Where `datasets` caches the Arrow files (defaults to the `datasets` cache).
        split_names: The splits to build, in order (a split without samples is empty).

    Returns:
        A `DatasetDict` with the ``split_names`` (by default ``train`` and ``test``).

    Raises:
        DatasetFormatError: A file cannot be decoded or a mask does not fit its image.
        OSError: The Arrow cache cannot be written (e.g. the disk is full).
    """
    features = anomaly_features([name for name, _ in samples[0].extra] if samples else ())
    return datasets.DatasetDict(
        {
            split: _build_split([s for s in samples if s.split == split], split, cache_dir, features)
            for split in split_names
        }
    )


def _generate_rows(samples: tuple[Sample, ...]) -> Iterator[dict]:
    """Yield the encoded rows of ``samples`` one at a time (the `Dataset.from_generator` generator)."""
    for sample in samples:
        yield encode_sample(sample)


def _build_split(
    samples: list[Sample], split: str, cache_dir: str | os.PathLike | None, features: datasets.Features
) -> datasets.Dataset:
    """Encode one split, surfacing a `DatasetFormatError` or `OSError` unwrapped from `datasets`' own error."""
    if not samples:  # a train-only folder: `from_generator` refuses a generator without rows
        return datasets.Dataset.from_dict({name: [] for name in features}, features, split=split)
    try:
        return datasets.Dataset.from_generator(
            _generate_rows,
            features=features,
            gen_kwargs={"samples": tuple(samples)},
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            split=split,
            fingerprint=_fingerprint(samples, split),
            writer_batch_size=_WRITER_BATCH_SIZE,
        )
    except datasets.exceptions.DatasetGenerationError as error:
        cause = _find_cause(error, (DatasetFormatError, OSError))
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
        described = (sample.label, sample.category, sample.defect_type, sample.image_path, sample.extra, stats)
        digest.update(repr(described).encode())
    return digest.hexdigest()[:32]


def _find_cause(error: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """Return the first exception of one of ``kinds`` in the cause/context chain of ``error``."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kinds):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


__all__ = ["build_dataset_dict", "encode_sample"]
