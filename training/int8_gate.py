"""`clipada export`: the export of `inference.deploy.export`, with the INT8 gate's data and metrics for `--int8`.

`--calibration_data` is a dataset (anything `training.data.load_anomaly_dataset` reads: MVTec-AD, VisA, your own
folder layout, a saved dataset): its normal `train` images calibrate the INT8 model and its `test` split (images and
masks) gates it; or a folder of normal images, which then calibrate only, and `--int8_test_data` names the dataset
that gates. The gate's metrics are evaluation's (`training.metrics`): pixel AUROC and AUPRO per category, averaged
over the categories, as `clipada eval` reports them. Reading datasets and computing metrics is training code, which
`inference` never imports: this module builds the `inference.deploy.int8.Int8Request` and hands it over.

Example:
    ```bash
    clipada export --model_name_or_path outputs/run --output_dir outputs/run-int8 --format openvino \\
        --int8 --calibration_data data/mvtec_ad
    ```
"""

import argparse
from pathlib import Path

import numpy as np

from inference.deploy import export as export_command
from inference.deploy.int8 import Int8GateError, Int8Request
from inference.predict.inputs import collect_inputs
from processing import CLIPADAImageProcessor


def dataset_split(name: str, split: str):
    """The `split` of the dataset `name` (`load_anomaly_dataset`; VisA and Real-IAD rows without files dropped).

    Raises:
        Int8GateError: Not a dataset, or without that split; naming the path.
    """
    from training.data import load_anomaly_dataset
    from training.data.schema import DatasetFormatError

    try:
        dataset = load_anomaly_dataset(name, allow_missing_files=True)
    except (DatasetFormatError, ValueError, OSError) as error:
        raise Int8GateError(
            f"{name} is not a dataset the INT8 gate can read ({' '.join(str(error).split())})"
        ) from error
    if split not in dataset or len(dataset[split]) == 0:
        raise Int8GateError(f"{name} has no {split!r} images")
    return dataset[split]


def _is_dataset(name: str) -> bool:
    path = Path(name)
    return (
        path.is_dir()
        and any((path / entry).exists() for entry in ("train", "split_csv", "dataset_dict.json"))
        or (path.is_dir() and any(child.is_dir() and (child / "train").is_dir() for child in path.iterdir()))
    )


def calibration_images(name: str, processor: CLIPADAImageProcessor) -> tuple[list[np.ndarray], list | None]:
    """The normal images to calibrate on: a dataset's normal `train` images with their categories, or every image of
    a folder (categories unknown), read as `(3, H, W)` float32 in [0, 1]."""
    if _is_dataset(name):
        train = dataset_split(name, "train")
        rows = [row for row in train if int(row["label"]) == 0]
        return [processor.process_image(row["image"]) for row in rows], [row["category"] for row in rows]
    paths = collect_inputs([name])
    if not paths:
        raise Int8GateError(f"--calibration_data {name}: no image files found")
    return [processor.process_image(str(path)) for path in paths], None


def test_images(name: str, processor: CLIPADAImageProcessor) -> tuple[list, list, list]:
    """A dataset's test images `(3, H, W)`, their bool `(H, W)` masks (all False where normal or without mask) and
    categories."""
    test = dataset_split(name, "test")
    images, masks, categories = [], [], []
    for row in test:
        image = processor.process_image(row["image"])
        mask = row["mask"]
        masks.append(np.zeros(image.shape[-2:], bool) if mask is None else np.asarray(mask.convert("L")) > 0)
        images.append(image)
        categories.append(row["category"])
    return images, masks, categories


def pixel_gate_metrics(anomaly_maps: list, masks: list, categories: list) -> dict[str, float]:
    """Pixel AUROC and AUPRO per category (`anomaly_metrics`), averaged over the categories with defects."""
    from training.metrics.anomaly import anomaly_metrics

    per_category = {}
    for category in sorted(set(categories), key=str):
        indices = [i for i, name in enumerate(categories) if name == category]
        maps = [anomaly_maps[i] for i in indices]
        category_masks = [masks[i] for i in indices]
        labels = [int(np.any(mask)) for mask in category_masks]
        scores = [float(anomaly_map.max()) for anomaly_map in maps]  # image metrics are not part of the gate
        per_category[category] = anomaly_metrics(maps, category_masks, scores, labels)
    return {
        name: float(np.nanmean([metrics[name] for metrics in per_category.values()]))
        if any(np.isfinite(metrics[name]) for metrics in per_category.values())
        else float("nan")
        for name in ("pixel_auroc", "aupro")
    }


def build_int8_request(args: argparse.Namespace, processor: CLIPADAImageProcessor) -> Int8Request:
    """The calibration and gate data of `--calibration_data` (and `--int8_test_data`).

    Raises:
        Int8GateError: Data that cannot be read, or no test split to gate on.
    """
    calibration, calibration_categories = calibration_images(args.calibration_data, processor)
    gate_source = args.int8_test_data or args.calibration_data
    if not _is_dataset(gate_source):
        raise Int8GateError(
            f"--calibration_data {args.calibration_data} is a folder of images: name the dataset whose test split "
            "(images with masks) gates INT8 with --int8_test_data"
        )
    images, masks, categories = test_images(gate_source, processor)
    return Int8Request(
        calibration_images=calibration,
        calibration_categories=calibration_categories,
        test_images=images,
        test_masks=masks,
        test_categories=categories,
        metrics=pixel_gate_metrics,
        source=gate_source if gate_source == args.calibration_data else f"{args.calibration_data} + {gate_source}",
    )


def main(argv: list[str] | None = None) -> dict:
    """`clipada export`, `--int8` included."""
    return export_command.main(argv, build_int8_request=build_int8_request)


def cli(argv: list[str] | None = None) -> None:
    """`clipada export` (alias `clipada-export`)."""
    main(argv)


__all__ = ["build_int8_request", "calibration_images", "cli", "main", "pixel_gate_metrics", "test_images"]
