"""MVTec AD 2's private test sets: SegF1 thresholds from the validation images, and the folder its server accepts.

The layout and file formats follow the dataset's own submission checker (``check_and_prepare_data_for_upload.py`` in
``MVTecAD2_public_code_utils``)::

    <submission>/anomaly_images/<scenario>/test_private/000_regular.tiff         float16, one channel, image size
    <submission>/anomaly_images/<scenario>/test_private_mixed/000_mixed.tiff
    <submission>/anomaly_images_thresholded/<scenario>/test_private/000_regular.png    8-bit, 0 or 255
    <submission>/anomaly_images_thresholded/<scenario>/test_private_mixed/000_mixed.png

Each anomaly image is the model's map at its test image's own size (maps of squash mode are resized bilinearly; the
letterbox and tile modes give them there). The thresholded images binarize it at the scenario's threshold,
``mean + 3 std`` of the pixel scores of its validation images (`training.metrics.segf1`), the authors' baseline. The
folder holds exactly these two folders (the checker refuses anything else, so no marker file is written); it must
be new or empty, and appears only once complete. The server expects all eight scenarios and both private test sets:
`write_submission` says which are missing. Run the official checker on the folder before uploading (it compresses it).

Example:
    ```python
    >>> thresholds = validation_thresholds(model, processor, dataset["validation"])
    >>> write_submission(model, processor, dataset, "submission", thresholds)
    ```
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from inference.atomic import atomic_dir
from inference.output_folder import inside, safe_name
from inference.scoring import score_images, score_inputs
from inference.torch_backend import TorchBackend
from training.data.mvtec_ad2 import MVTEC_AD2_SCENARIOS, PRIVATE_SPLITS
from training.metrics.segf1 import PixelStatistics

ANOMALY_IMAGES = "anomaly_images"
THRESHOLDED_IMAGES = "anomaly_images_thresholded"


class SubmissionError(ValueError):
    """A submission that cannot be written: its folder, a dataset without private test sets, a missing package."""


def _batches(split, batch_size: int) -> Iterator[list[dict]]:
    """The rows of ``split`` in batches of ``batch_size`` (decoded images)."""
    for start in range(0, len(split), batch_size):
        yield [split[index] for index in range(start, min(start + batch_size, len(split)))]


def _score(backend, processor, rows: list[dict], at_image_size: bool = True) -> list[np.ndarray]:
    """The float32 anomaly maps of rows: `(H_i, W_i)` at their images' own sizes, or (``at_image_size`` False) at the
    resolution `clipada eval` compares them at (the model's input size in squash mode, the image's in the others)."""
    pixels = [processor.process_image(row["image"], row.get("image_path") or "image") for row in rows]
    categories = [row["category"] for row in rows]
    if at_image_size:
        scored = score_images(backend, processor, pixels, categories)
    else:
        scored = score_inputs(backend, processor, processor.model_inputs(pixels, return_tensors="np"), categories)
    if scored.non_finite:
        name = rows[scored.non_finite[0]].get("image_path") or "an image"
        raise SubmissionError(f"{name}: the model scored it NaN or infinite; no submission is written")
    return scored.anomaly_maps


def validation_thresholds(
    model, processor, validation_split, device="cpu", batch_size: int = 8, at_image_size: bool = False
) -> dict[str, float]:
    """MVTec AD 2's SegF1 threshold per scenario: ``mean + 3 std`` of all pixel scores of its validation images.

    By default the maps are taken at the resolution `clipada eval` measures SegF1 at (the model's input size in squash
    mode, each image's own with letterbox or tiles), so the threshold and the test maps it binarizes are alike. A
    submission's maps are at each image's own size: in squash mode, upsampling smooths the maps and changes their
    spread, so its threshold is taken at the image size too (``at_image_size``).

    Args:
        model: A model of this library.
        processor: Its image processor, in the inference mode of the evaluation.
        validation_split: A `datasets.Dataset` with ``image`` and ``category`` columns (MVTec AD 2's
            ``validation``: normal images only).
        device: Where the model runs.
        batch_size: Images per forward.
        at_image_size: Take the maps at each image's own size (the submission's resolution).

    Returns:
        Category -> threshold.
    """
    backend = TorchBackend(model, device)
    statistics: dict[str, PixelStatistics] = {}
    for rows in _batches(validation_split, batch_size):
        for row, anomaly_map in zip(rows, _score(backend, processor, rows, at_image_size=at_image_size)):
            statistics.setdefault(row["category"], PixelStatistics()).update([anomaly_map])
    return {category: stats.threshold() for category, stats in sorted(statistics.items())}


def check_submission_dir(path: str | os.PathLike, forbidden: list[Path]) -> Path:
    """Return the submission folder when it may be written: new or empty, and neither inside nor around the
    ``forbidden`` folders (the dataset, the checkpoint, the evaluation's output).

    Raises:
        SubmissionError: Naming the folder and why.
    """
    target = Path(path).expanduser().absolute()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise SubmissionError(
            f"{target}: the submission folder must be new or empty (the server's checker refuses any other file in "
            "it); choose another folder"
        )
    resolved = target.resolve()
    for folder in forbidden:
        other = Path(folder).expanduser().resolve()
        if resolved == other or other in resolved.parents or resolved in other.parents:
            raise SubmissionError(f"{target}: the submission folder may not be, lie inside or contain {folder}")
    return target


def require_tifffile():
    """Raise `SubmissionError` (with the extra to install) when tifffile, which writes the float16 TIFFs, is missing."""
    _tifffile()


def _tifffile():
    """The `tifffile` module (float16 TIFF, as the server reads them)."""
    try:
        import tifffile
    except ImportError as error:
        raise SubmissionError(
            "writing MVTec AD 2 submissions needs tifffile (float16 TIFF): pip install 'clipada[mvtec-ad2]'"
        ) from error
    return tifffile


def write_submission(
    model,
    processor,
    dataset_dict,
    output_dir: str | os.PathLike,
    thresholds: dict[str, float],
    device="cpu",
    batch_size: int = 8,
) -> dict[str, object]:
    """Write the anomaly images of MVTec AD 2's private test sets in the server's layout (module docstring).

    Args:
        model: A model of this library.
        processor: Its image processor, in the inference mode of the evaluation.
        dataset_dict: An MVTec AD 2 `DatasetDict` (`training.data.mvtec_ad2`) with ``test_private`` and/or
            ``test_private_mixed``.
        output_dir: The submission folder (new or empty; see `check_submission_dir`).
        thresholds: Scenario -> binarization threshold (`validation_thresholds`).
        device: Where the model runs.
        batch_size: Images per forward.

    Returns:
        ``{"images": count, "missing": [...]}``: the anomaly images written, and the scenarios and private test sets
        the server expects that the dataset lacks.

    Raises:
        SubmissionError: No private test images, a scenario without threshold, an image name that is not one file
            name, a non-finite score, tifffile missing.
    """
    tifffile = _tifffile()
    splits = {name: dataset_dict[name] for name in PRIVATE_SPLITS.values() if name in dataset_dict}
    if not any(len(split) for split in splits.values()):
        raise SubmissionError(
            "the dataset has no private test images (test_private, test_private_mixed); prepare MVTec AD 2 with "
            "clipada prepare-dataset --dataset mvtec_ad2 from the full download"
        )
    backend, written = TorchBackend(model, device), 0
    with atomic_dir(Path(output_dir)) as staging:
        for split_name, split in splits.items():
            for rows in _batches(split, batch_size):
                for row, anomaly_map in zip(rows, _score(backend, processor, rows)):
                    category = safe_name(row["category"], "the dataset's category")
                    if category not in thresholds:
                        raise SubmissionError(f"{category}: no SegF1 threshold (no validation images of it)")
                    stem = safe_name(Path(row["image_path"]).stem, "an image name")
                    folder = Path(category) / split_name
                    tiff = inside(staging, staging / ANOMALY_IMAGES / folder / f"{stem}.tiff")
                    png = inside(staging, staging / THRESHOLDED_IMAGES / folder / f"{stem}.png")
                    tiff.parent.mkdir(parents=True, exist_ok=True)
                    png.parent.mkdir(parents=True, exist_ok=True)
                    tifffile.imwrite(tiff, anomaly_map.astype(np.float16))
                    binary = np.where(anomaly_map >= thresholds[category], 255, 0).astype(np.uint8)
                    Image.fromarray(binary).save(png)
                    written += 1
    return {"images": written, "missing": _missing_parts(dataset_dict, splits)}


def _missing_parts(dataset_dict, splits: dict) -> list[str]:
    """The ``<scenario>/<private split>`` pairs the server expects and the dataset does not hold."""
    present = {
        (category, name)
        for name, split in splits.items()
        for category in (split.unique("category") if len(split) else [])
    }
    return [
        f"{scenario}/{name}"
        for scenario in MVTEC_AD2_SCENARIOS
        for name in PRIVATE_SPLITS.values()
        if (scenario, name) not in present
    ]


__all__ = [
    "ANOMALY_IMAGES",
    "THRESHOLDED_IMAGES",
    "SubmissionError",
    "check_submission_dir",
    "require_tifffile",
    "validation_thresholds",
    "write_submission",
]
