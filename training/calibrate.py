"""Calibrate a checkpoint's OK/NG thresholds on normal images (clipada-calibrate).

The thresholds (global and per category) are written into the checkpoint's config, so `from_pretrained` and
remote code carry them; `calibration.json` beside it holds the estimates with their 95% intervals. With
`--calibrate_on` a labelled set, the F1-optimal thresholds are reported beside them (never chosen silently).

Example:
    ```bash
    clipada-calibrate --model_name_or_path outputs/run --dataset_name data/line7_normals --split train
    clipada-calibrate --model_name_or_path outputs/run --dataset_name data/mvtec --split validation \\
        --target_fpr 0.005 --calibrate_on data/labelled_val --output_dir outputs/run-calibrated
    ```
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import PreTrainedModel

from inference.command_line import device_arguments, open_unit_interval, positive_int, usage_errors
from inference.devices import configure_threads, resolve_device
from inference.loading import add_class_names, load_clipada_model, load_processor
from processing import CLIPADAImageProcessor
from training.calibration import CalibrationResult, calibrate, collect_normal_scores
from training.data import DatasetFormatError, load_anomaly_dataset
from training.evaluation import evaluate_model

CALIBRATION_FILE = "calibration.json"


def calibrate_model(
    model: PreTrainedModel,
    processor: CLIPADAImageProcessor,
    normal_split,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    target_image_fpr: float = 0.01,
    target_pixel_fpr: float = 0.01,
    seed: int = 0,
) -> CalibrationResult:
    """Calibrates on the normal images of `normal_split` and writes the thresholds into `model.config`."""
    scores = collect_normal_scores(model, processor, normal_split, device=device, batch_size=batch_size, seed=seed)
    result = calibrate(scores, target_image_fpr, target_pixel_fpr, seed=seed)
    for name, value in result.config_fields().items():
        setattr(model.config, name, value)
    return result


def write_calibration_report(folder: str | Path, result: CalibrationResult, extra: dict | None = None) -> Path:
    """Writes `calibration.json` (thresholds, intervals, estimators, and `extra`); returns its path."""
    path = Path(folder) / CALIBRATION_FILE
    path.write_text(json.dumps({**result.to_dict(), **(extra or {})}, indent=2) + "\n")
    return path


def format_calibration(result: CalibrationResult) -> str:
    """A short Markdown table of the thresholds and their intervals."""
    lines = ["| scope | image threshold [95% CI] | pixel threshold [95% CI] | normal images |", "|:---|---:|---:|---:|"]
    rows = [("all", {"image_threshold": result.image, "pixel_threshold": result.pixel}), *result.per_category.items()]
    for scope, estimates in rows:
        image, pixel = estimates["image_threshold"], estimates["pixel_threshold"]
        lines.append(
            f"| {scope} | {image.value:.4f} [{image.interval[0]:.4f}, {image.interval[1]:.4f}] "
            f"| {pixel.value:.4f} [{pixel.interval[0]:.4f}, {pixel.interval[1]:.4f}] | {image.num_images} |"
        )
    notes = [result.image.note] + [e["image_threshold"].note for e in result.per_category.values()]
    return "\n".join(lines + [f"note: {note}" for note in dict.fromkeys(notes) if note])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[device_arguments()])
    parser.add_argument("--model_name_or_path", required=True, help="A CLIP-ADA checkpoint folder or Hub id.")
    parser.add_argument("--dataset_name", required=True, help="Normal images: a raw folder, a saved dataset or Hub id.")
    parser.add_argument("--dataset", choices=["mvtec_ad", "visa", "folder"], default=None)
    parser.add_argument("--categories", nargs="+", default=None)
    parser.add_argument("--skip_missing_files", action="store_true")
    parser.add_argument(
        "--split",
        default="train",
        help="The split whose NORMAL images calibrate (anomalous rows are ignored). Images the model trained on "
        "score lower than new ones: prefer held-out normal images.",
    )
    parser.add_argument(
        "--target_fpr", type=open_unit_interval, default=0.01, help="Target false-positive rate of images."
    )
    parser.add_argument(
        "--target_pixel_fpr", type=open_unit_interval, default=0.01, help="Target false-positive rate of pixels."
    )
    parser.add_argument(
        "--calibrate_on",
        default=None,
        help="A labelled dataset (its --calibrate_on_split): F1-optimal thresholds are reported beside.",
    )
    parser.add_argument("--calibrate_on_split", default="test")
    parser.add_argument(
        "--output_dir",
        default=None,
        help="Write the calibrated checkpoint here (default: update the checkpoint folder in place).",
    )
    parser.add_argument("--per_device_eval_batch_size", type=positive_int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.output_dir is None and not Path(args.model_name_or_path).is_dir():
        parser.error("--output_dir is required when --model_name_or_path is a Hub id")
    return args


def _load_split(name: str, split: str, args: argparse.Namespace):
    dataset = load_anomaly_dataset(
        name, dataset=args.dataset, categories=args.categories, allow_missing_files=args.skip_missing_files
    )
    if split not in dataset:
        raise DatasetFormatError(f"{name} has no split {split!r} (it has {sorted(dataset)})")
    return dataset[split]


def main(argv: list[str] | None = None) -> CalibrationResult:
    args = parse_args(argv)
    configure_threads(args.num_threads)
    with usage_errors():  # a bad device, checkpoint or dataset
        device = resolve_device(args.device)
        model = load_clipada_model(args.model_name_or_path, dtype=getattr(torch, args.dtype))
        processor = load_processor(args.model_name_or_path)
        normal_split = _load_split(args.dataset_name, args.split, args)
        labelled = _load_split(args.calibrate_on, args.calibrate_on_split, args) if args.calibrate_on else None
        names = set(normal_split["category"]) | (set(labelled["category"]) if labelled is not None else set())
        add_class_names(model, sorted(names), args.model_name_or_path)
        if args.split == "test":
            print("warning: calibrating on the test split's normal images; its metrics are no longer independent")
        result = calibrate_model(
            model,
            processor,
            normal_split,
            device=device,
            batch_size=args.per_device_eval_batch_size,
            target_image_fpr=args.target_fpr,
            target_pixel_fpr=args.target_pixel_fpr,
            seed=args.seed,
        )
    extra = {"calibrated_on": {"dataset": args.dataset_name, "split": args.split}}
    if labelled is not None:
        per_category, _ = evaluate_model(model, processor, labelled, device=device, num_heatmaps=0)
        extra["f1_optimal_thresholds"] = {
            "dataset": args.calibrate_on,
            "split": args.calibrate_on_split,
            "per_category": {
                category: {name: metrics[name] for name in ("image_f1_max_threshold", "pixel_f1_max_threshold")}
                for category, metrics in per_category.items()
            },
        }
    output_dir = Path(args.output_dir or args.model_name_or_path)
    _save_calibrated(model, processor, output_dir, in_place=args.output_dir is None)
    report = write_calibration_report(output_dir, result, extra)
    print(format_calibration(result))
    if labelled is not None:
        print(f"F1-optimal thresholds on {args.calibrate_on} ({args.calibrate_on_split}): see {report}")
    print(f"thresholds written to {output_dir / 'config.json'}; details in {report}")
    return result


def _save_calibrated(model, processor, output_dir: Path, in_place: bool) -> None:
    """In place only config.json changes (written beside, then renamed over the old one); else a full copy."""
    if not in_place:
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        return
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".calibrate-") as staging:
        model.config.save_pretrained(staging)
        shutil.move(Path(staging) / "config.json", output_dir / "config.json")


def cli(argv: list[str] | None = None) -> None:
    """`clipada calibrate` (alias `clipada-calibrate`, `python -m training.calibrate`)."""
    main(argv)


if __name__ == "__main__":
    cli()
