"""Calibrate a checkpoint's OK/NG thresholds on normal images, and on defective ones too (clipada-calibrate).

The thresholds (global and per category) are written into the checkpoint's config, so `from_pretrained` and
remote code carry them; `calibration.json` beside it holds the estimates with their 95% intervals. `--target_fpr`
bounds the share of normal images rejected (a lowest threshold), `--target_escape_rate` the share of the split's
defective images (label 1) passed as OK (a highest threshold); with both the image threshold is the smaller one, so
the escape target binds when they conflict, and the report says which binds and the rates each gives. The thresholds
record the inference mode they were calibrated in (`--resize_mode/--tile_size/--tile_overlap`, `calibration_mode`);
when it is not the checkpoint's own, the processor is saved in that mode too. With `--calibrate_on` a labelled set,
the F1-optimal thresholds are reported beside them (never chosen silently).

Example:
    ```bash
    clipada-calibrate --model_name_or_path outputs/run --dataset_name data/line7_normals --split train
    clipada-calibrate --model_name_or_path outputs/run --dataset_name data/mvtec --split validation \\
        --target_fpr 0.005 --calibrate_on data/labelled_val --output_dir outputs/run-calibrated
    clipada-calibrate --model_name_or_path outputs/run --dataset_name data/line7_labelled --split validation \\
        --target_fpr 0.01 --target_escape_rate 0.02 --tile_size 448
    ```
"""

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel

from inference.atomic import atomic_dir
from inference.command_line import (
    device_arguments,
    open_unit_interval,
    overwrite_argument,
    positive_int,
    usage_errors,
)
from inference.devices import configure_threads, resolve_device
from inference.loading import add_class_names, load_clipada_model, load_processor
from inference.modes import (
    add_inference_mode_arguments,
    check_inference_mode_arguments,
    describe_mode,
    input_mode,
    with_inference_mode,
)
from inference.output_folder import check_output_folder, write_marker
from processing import CLIPADAImageProcessor
from training.calibration import (
    CalibrationResult,
    calibrate,
    collect_defect_scores,
    collect_normal_scores,
    count,
)
from training.data import DatasetFormatError, load_anomaly_dataset
from training.evaluation import evaluate_model
from training.metrics.report import without_nan

COMMAND = "clipada calibrate"
CALIBRATION_FILE = "calibration.json"
DEFAULT_TARGET_FPR = 0.01
BINDING_NAMES = {"false_reject": "false-reject target", "escape": "escape target"}


def calibrate_model(
    model: PreTrainedModel,
    processor: CLIPADAImageProcessor,
    split,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    target_image_fpr: float | None = DEFAULT_TARGET_FPR,
    target_pixel_fpr: float = 0.01,
    seed: int = 0,
    target_escape_rate: float | None = None,
    split_name: str = "the calibration split",
) -> CalibrationResult:
    """Calibrates on `split` with `processor` and writes the thresholds, their targets and the input mode
    (`calibration_mode`) into `model.config`.

    Normal images (label 0) set the false-reject and pixel thresholds; with `target_escape_rate` the defective ones
    (label 1) set the escape threshold, and the image threshold is the smaller of the two.

    Raises:
        ValueError: With `target_escape_rate` but no defective image in `split` (named by `split_name`), or no normal
            image.
    """
    defects = None
    if target_escape_rate is not None:
        if not np.any(np.asarray(split["label"]) == 1):
            raise ValueError(
                f"--target_escape_rate needs defective images (label 1) in {split_name}, and it has none: calibrate "
                "on a split with labelled defects, or leave --target_escape_rate out"
            )
        defects = collect_defect_scores(model, processor, split, device=device, batch_size=batch_size)
    scores = collect_normal_scores(model, processor, split, device=device, batch_size=batch_size, seed=seed)
    result = calibrate(
        scores,
        target_image_fpr,
        target_pixel_fpr,
        seed=seed,
        defect_scores=defects,
        target_escape_rate=target_escape_rate,
    )
    result.calibration_mode = input_mode(processor)
    for name, value in result.config_fields().items():
        setattr(model.config, name, value)
    return result


def write_calibration_report(folder: str | Path, result: CalibrationResult, extra: dict | None = None) -> Path:
    """Writes `calibration.json` (thresholds, intervals, estimators, and `extra`); returns its path."""
    path = Path(folder) / CALIBRATION_FILE
    payload = without_nan({**result.to_dict(), **(extra or {})})  # strict JSON: null where a value is undefined
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return path


def format_calibration(result: CalibrationResult) -> str:
    """Markdown tables of the thresholds with their intervals and the target that binds; with an escape target,
    the rates each candidate threshold gives on the calibration images; then what the images resolve and notes."""
    rows = [("all", {"image_threshold": result.image, "pixel_threshold": result.pixel}), *result.per_category.items()]
    lines = [
        "| scope | image threshold [95% CI] | binds | pixel threshold [95% CI] | normal images | defective images |",
        "|:---|---:|:---|---:|---:|---:|",
    ]
    for scope, estimates in rows:
        image, pixel = estimates["image_threshold"], estimates["pixel_threshold"]
        lines.append(
            f"| {scope} | {image.value:.4f} [{image.interval[0]:.4f}, {image.interval[1]:.4f}] "
            f"| {BINDING_NAMES[image.binding]} | {pixel.value:.4f} [{pixel.interval[0]:.4f}, {pixel.interval[1]:.4f}] "
            f"| {image.num_normal_images} | {image.num_defective_images} |"
        )
    if result.image.escape is not None:
        lines += [
            "",
            "Rates on the calibration images (false reject: normal score >= threshold; escape: defect score below it):",
            "",
            "| scope | threshold | value | false-reject rate | escape rate |",
            "|:---|:---|---:|---:|---:|",
        ]
        for scope, estimates in rows:
            image = estimates["image_threshold"]
            labels = {
                "false_reject": f"for target FPR {image.false_reject.target_fpr:g}" if image.false_reject else "",
                "escape": f"for target escape {image.escape.target_escape_rate:g}",
                "chosen": f"chosen ({BINDING_NAMES[image.binding]} binds)",
            }
            for name, rates in image.rates.items():
                lines.append(
                    f"| {scope} | {labels[name]} | {rates['threshold']:.4f} | {_percent(rates['false_reject_rate'])} "
                    f"| {_percent(rates['escape_rate'])} |"
                )
    resolved = result.resolution()
    normal, defective = resolved["normal_images"], resolved["defective_images"]
    summary = (
        f"resolution: {count(normal, 'normal image')} {_resolve(normal)} false-reject rates down to "
        f"{resolved['smallest_false_reject_rate']:.3g}"
    )
    if defective:
        summary += (
            f", {count(defective, 'defective image')} {_resolve(defective)} escape rates down to "
            f"{resolved['smallest_escape_rate']:.3g}"
        )
    notes = [note for _, estimates in rows for note in estimates["image_threshold"].notes]
    return "\n".join([*lines, summary] + [f"note: {note}" for note in dict.fromkeys(notes)])


def _resolve(number: int) -> str:
    return "resolves" if number == 1 else "resolve"


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        parents=[device_arguments(), overwrite_argument("a calibrated copy an earlier clipada calibrate wrote")],
    )
    parser.add_argument("--model_name_or_path", required=True, help="A CLIP-ADA checkpoint folder or Hub id.")
    parser.add_argument("--dataset_name", required=True, help="Normal images: a raw folder, a saved dataset or Hub id.")
    parser.add_argument("--dataset", choices=["mvtec_ad", "visa", "folder"], default=None)
    parser.add_argument("--categories", nargs="+", default=None)
    parser.add_argument("--skip_missing_files", action="store_true")
    parser.add_argument(
        "--split",
        default="train",
        help="The split to calibrate on: its NORMAL images set the false-reject and pixel thresholds, its defective "
        "ones (label 1) the escape threshold when --target_escape_rate is given (otherwise they are ignored). Images "
        "the model trained on score lower than new ones: prefer held-out images.",
    )
    parser.add_argument(
        "--target_fpr",
        type=open_unit_interval,
        default=None,
        help="Target false-positive (false-reject) rate of normal images: sets the lowest image threshold. Default "
        f"{DEFAULT_TARGET_FPR} unless only --target_escape_rate is given.",
    )
    parser.add_argument(
        "--target_escape_rate",
        type=open_unit_interval,
        default=None,
        help="Target share of the split's defective images passed as OK (scored below the threshold): sets the "
        "highest image threshold. With --target_fpr too the lower threshold is used, so this one binds on a conflict.",
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
        help="Write a calibrated copy of the checkpoint here: a new folder, or one an earlier clipada calibrate wrote "
        "(replaced with --overwrite_output_dir); never the checkpoint itself. Default: update the checkpoint folder "
        "in place (its config.json, calibration.json and, in another mode, preprocessor_config.json).",
    )
    parser.add_argument("--per_device_eval_batch_size", type=positive_int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    add_inference_mode_arguments(parser)
    args = parser.parse_args(argv)
    check_inference_mode_arguments(parser, args)
    if args.output_dir is None and not Path(args.model_name_or_path).is_dir():
        parser.error("--output_dir is required when --model_name_or_path is a Hub id")
    if args.overwrite_output_dir and args.output_dir is None:
        parser.error("--overwrite_output_dir needs --output_dir (without it the checkpoint is updated in place)")
    if args.target_fpr is None and args.target_escape_rate is None:
        args.target_fpr = DEFAULT_TARGET_FPR
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
    in_place = args.output_dir is None
    output_dir = Path(args.model_name_or_path if in_place else args.output_dir)
    with usage_errors():  # a folder calibrate may not write, a bad device, checkpoint or dataset, NaN scores
        if not in_place:
            inputs = [args.model_name_or_path, args.dataset_name, *([args.calibrate_on] if args.calibrate_on else [])]
            check_output_folder(
                output_dir,
                COMMAND,
                overwrite=args.overwrite_output_dir,
                sources=[Path(name) for name in inputs if Path(name).exists()],
            )
        device = resolve_device(args.device)
        model = load_clipada_model(args.model_name_or_path, dtype=getattr(torch, args.dtype))
        own_processor = load_processor(args.model_name_or_path)
        processor = with_inference_mode(
            own_processor, args.resize_mode, args.tile_size, args.tile_overlap, note=False
        )  # calibrate says itself that the thresholds hold in this mode
        new_mode = input_mode(processor) != input_mode(own_processor)
        split = _load_split(args.dataset_name, args.split, args)
        labelled = _load_split(args.calibrate_on, args.calibrate_on_split, args) if args.calibrate_on else None
        names = set(split["category"]) | (set(labelled["category"]) if labelled is not None else set())
        add_class_names(model, sorted(names), args.model_name_or_path)
        if args.split == "test":
            print("warning: calibrating on the test split's images; its metrics are no longer independent")
        result = calibrate_model(
            model,
            processor,
            split,
            device=device,
            batch_size=args.per_device_eval_batch_size,
            target_image_fpr=args.target_fpr,
            target_pixel_fpr=args.target_pixel_fpr,
            seed=args.seed,
            target_escape_rate=args.target_escape_rate,
            split_name=f"the {args.split!r} split of {args.dataset_name}",
        )
        extra = {"calibrated_on": {"dataset": args.dataset_name, "split": args.split}}
        if labelled is not None:
            extra["f1_optimal_thresholds"] = _f1_optimal_thresholds(model, processor, labelled, device, args)
    with usage_errors(OSError):  # a read-only folder, a full disk: one line, and the checkpoint is left as it was
        report = _save_calibrated(model, processor, output_dir, result, extra, in_place, with_processor=new_mode)
    print(format_calibration(result))
    if new_mode:
        print(
            f"the thresholds hold for inputs made as {describe_mode(processor)}, not the checkpoint's "
            f"{describe_mode(own_processor)}: the processor is saved in that mode to "
            f"{output_dir / 'preprocessor_config.json'}, so predict uses it by default"
        )
    if labelled is not None:
        print(f"F1-optimal thresholds on {args.calibrate_on} ({args.calibrate_on_split}): see {report}")
    print(f"thresholds written to {output_dir / 'config.json'}; details in {report}")
    return result


def _f1_optimal_thresholds(model, processor, labelled, device, args: argparse.Namespace) -> dict:
    """The F1-optimal image and pixel thresholds per category of the labelled split, for calibration.json."""
    per_category, _ = evaluate_model(model, processor, labelled, device=device, num_heatmaps=0)
    return {
        "dataset": args.calibrate_on,
        "split": args.calibrate_on_split,
        "per_category": {
            category: {name: metrics[name] for name in ("image_f1_max_threshold", "pixel_f1_max_threshold")}
            for category, metrics in per_category.items()
        },
    }


def _save_calibrated(
    model, processor, output_dir: Path, result: CalibrationResult, extra: dict, in_place: bool, with_processor: bool
) -> Path:
    """Writes the calibrated checkpoint with its calibration.json into `output_dir`; returns the report's path.

    In place only config.json, calibration.json and, `with_processor`, preprocessor_config.json change (each written
    into a staging folder beside, then renamed over the old one). Else a full copy is written into a staging folder
    beside `output_dir`, marked as written by clipada calibrate, and swapped in whole (`inference.atomic`): an error
    leaves `output_dir` as it was. The files get the mode the umask gives new files (safetensors writes 0600).
    """
    if not in_place:
        with atomic_dir(output_dir.resolve() if output_dir.is_symlink() else output_dir) as staging:
            model.save_pretrained(staging)
            processor.save_pretrained(staging)
            write_calibration_report(staging, result, extra)
            write_marker(staging, COMMAND)
            _give_umask_mode(staging)
        return output_dir / CALIBRATION_FILE
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".calibrate-") as staging:
        model.config.save_pretrained(staging)
        write_calibration_report(staging, result, extra)
        names = ["config.json", CALIBRATION_FILE]
        if with_processor:
            processor.save_pretrained(staging)
            names.append("preprocessor_config.json")
        _give_umask_mode(Path(staging))
        for name in names:
            os.replace(Path(staging) / name, output_dir / name)
    return output_dir / CALIBRATION_FILE


def _give_umask_mode(folder: Path) -> None:
    """Gives every file under `folder` the mode a new file gets (0666 less the umask)."""
    umask = os.umask(0)  # the only way to read it
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~umask)


def cli(argv: list[str] | None = None) -> None:
    """`clipada calibrate` (alias `clipada-calibrate`, `python -m training.calibrate`)."""
    main(argv)


if __name__ == "__main__":
    cli()
