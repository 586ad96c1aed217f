"""Score images with a checkpoint of any family or an export folder: OK/NG rows in predictions.csv/.jsonl and one
overlay per image. With an export folder (onnxruntime, openvino) nothing here imports torch.

Streams: images are read, scored, drawn and written one batch at a time, so memory stays flat however many images
there are. A file that cannot be read gets an `ERROR` row and the others go on; the exit code is 1 when any file
failed, 2 for a usage error, 0 otherwise.

Example:
    ```bash
    clipada predict line3/ extra/*.png todo.txt --model_name_or_path outputs/run \\
        --category bottle --output_dir outputs/line3 --save_maps png16
    clipada predict line3/ --model_name_or_path outputs/run-onnx --output_dir outputs/line3   # torch-free
    ```
"""

import argparse
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from inference.backends import BACKENDS, AnomalyBackend, load_backend
from inference.command_line import device_arguments, open_unit_interval, overwrite_argument, positive_int, usage_errors
from inference.modes import (
    add_inference_mode_arguments,
    check_inference_mode_arguments,
    fitting_decision_config,
    load_processors,
    thresholds_note,
    with_inference_mode,
)
from inference.overlays import draw_overlay
from inference.predict.inputs import InputError, collect_inputs, output_names
from inference.predict.rows import UNCALIBRATED, Thresholds, choose_thresholds, error_row, prediction_row
from inference.predict.writers import MAP_FORMATS, PredictionWriter, save_map
from inference.scoring import score_images
from processing import CLIPADAImageProcessor

OUTPUT_FILES = ("predictions.csv", "predictions.jsonl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Score images with a checkpoint or an export folder: OK/NG, overlays, maps.",
        parents=[device_arguments(backend_note=True), overwrite_argument("the predictions of an earlier run")],
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        help="Image files, folders (recursive), globs ('line3/**/*.png'), or .txt files listing paths.",
    )
    parser.add_argument(
        "--model_name_or_path", required=True, help="A checkpoint folder or Hub id, or a `clipada export` folder."
    )
    parser.add_argument("--output_dir", required=True, help="Where predictions.csv/.jsonl, overlays/ and maps/ go.")
    parser.add_argument("--category", help="The images' category, for per-category thresholds (else the global ones).")
    parser.add_argument("--image_threshold", type=open_unit_interval, help="Decide with this image threshold instead.")
    parser.add_argument(
        "--pixel_threshold", type=open_unit_interval, help="Draw masks and boxes at this pixel threshold instead."
    )
    parser.add_argument("--batch_size", type=positive_int, default=8)
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="Default: the export's own runtime for an export folder, else torch.",
    )
    parser.add_argument("--save_maps", choices=MAP_FORMATS, help="Also write raw anomaly maps to maps/.")
    parser.add_argument(
        "--overlays", action=argparse.BooleanOptionalAction, default=True, help="Draw overlays/ (default: yes)."
    )
    parser.add_argument(
        "--image_size", type=positive_int, help="The checkpoint's input size instead of its preprocessor_config.json's."
    )
    add_inference_mode_arguments(parser)
    args = parser.parse_args(argv)
    check_inference_mode_arguments(parser, args)
    return args


@dataclass
class PredictedImage:
    """One input after reading, scoring and deciding.

    Attributes:
        index: Its position in the paths given.
        row: Its `predictions.csv` row (keys `inference.predict.rows.COLUMNS`; `overlay` and `map` empty).
        image: `(3, H, W)` in [0, 1], None for a file that could not be read (an `ERROR` row).
        anomaly_map: `(H, W)` at the image's own size, or None.
        pred_mask: `(H, W)` bool at the pixel threshold, or None.
    """

    index: int
    row: dict
    image: np.ndarray | None = None
    anomaly_map: np.ndarray | None = None
    pred_mask: np.ndarray | None = None


def predicted_batches(
    paths: list[Path],
    backend: AnomalyBackend,
    processor: CLIPADAImageProcessor,
    thresholds: Thresholds,
    category: str | None = None,
    batch_size: int = 8,
) -> Iterator[list[PredictedImage]]:
    """Reads, scores (`inference.scoring.score_images`) and decides the images one batch at a time.

    Yields:
        Per batch, its files that could not be read (`ERROR` rows) first, then the scored ones, in input order.
    """
    for start in range(0, len(paths), batch_size):
        done, read, images = [], [], []
        for index in range(start, min(start + batch_size, len(paths))):
            try:
                images.append(processor.process_image(str(paths[index]), name="image"))  # (3, H, W) in [0, 1]
                read.append(index)
            except (ValueError, TypeError, OSError) as error:
                done.append(PredictedImage(index, error_row(str(paths[index]), category, str(error))))
        if images:
            scored = score_images(backend, processor, images, [category] * len(images))
            for index, image, anomaly_map, score in zip(read, images, scored.anomaly_maps, scored.scores):
                row, pred_mask = prediction_row(str(paths[index]), category, anomaly_map, float(score), thresholds)
                done.append(PredictedImage(index, row, image, anomaly_map, pred_mask))
        yield done


def predict_images(
    paths: list[Path],
    backend: AnomalyBackend,
    processor: CLIPADAImageProcessor,
    thresholds: Thresholds,
    output_dir: Path,
    category: str | None = None,
    batch_size: int = 8,
    draw_overlays: bool = True,
    map_format: str | None = None,
) -> Counter:
    """Scores every image, one batch at a time, and writes its row, overlay and map as soon as it is scored.

    Args:
        paths: The images, in output order.
        backend: Any backend (`inference.backends`); images are scored by `inference.scoring.score_images`.
        processor: Reads images (bit depth, EXIF orientation) once, resizes and normalises them, and maps anomaly
            maps back to each image's own size.
        thresholds: The thresholds every image is decided with.
        output_dir: Existing folder for predictions.csv/.jsonl, `overlays/` and `maps/`.
        category: Written in each row, and named to the model (AdaCLIP's prompts).
        batch_size: Images per backend call.
        draw_overlays: Write `overlays/<name>.png`.
        map_format: `png16` or `npz` to write `maps/<name>.<suffix>`, None for no maps.

    Returns:
        How many rows got each decision (`OK`, `NG`, `UNCALIBRATED`, `ERROR`).
    """
    names = output_names(paths)
    for folder, wanted in (("overlays", draw_overlays), ("maps", map_format is not None)):
        if wanted:
            (output_dir / folder).mkdir(exist_ok=True)
    counts: Counter = Counter()
    with PredictionWriter(output_dir) as writer, tqdm(total=len(paths), unit="img", desc="predict") as progress:
        for batch in predicted_batches(paths, backend, processor, thresholds, category, batch_size):
            for predicted in batch:
                row, name = predicted.row, names[predicted.index]
                if predicted.image is not None and draw_overlays:
                    picture = draw_overlay(
                        predicted.image, predicted.anomaly_map, predicted.pred_mask, row["score"], row["decision"],
                        thresholds.image, title=str(paths[predicted.index]), pixel_threshold=thresholds.pixel,
                    )  # fmt: skip
                    picture.save(output_dir / "overlays" / f"{name}.png", compress_level=1)
                    row["overlay"] = f"overlays/{name}.png"
                if predicted.image is not None and map_format is not None:
                    saved = save_map(output_dir / "maps" / name, predicted.anomaly_map, map_format)
                    row["map"] = saved.relative_to(output_dir).as_posix()
                writer.write(row)
                counts[row["decision"]] += 1
            writer.flush()
            progress.update(len(batch))
    return counts


def prepare_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Creates the folder; refuses to replace an earlier run's predictions unless `overwrite`."""
    existing = [name for name in OUTPUT_FILES if (output_dir / name).exists()]
    if existing and not overwrite:
        raise ValueError(
            f"--output_dir {output_dir} already holds {', '.join(existing)}; choose another folder or pass "
            "--overwrite_output_dir"
        )
    output_dir.mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None = None) -> dict:
    """Runs the command; returns `{"images": N, "OK": .., "NG": .., "UNCALIBRATED": .., "ERROR": .., ...}`."""
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    with usage_errors():
        paths = collect_inputs(args.inputs)
        if not paths:
            raise InputError(f"no image files found in {' '.join(args.inputs)}")
        backend = load_backend(args.backend, args.model_name_or_path, args.device, args.dtype, args.num_threads)
        if args.image_size is not None and backend.name != "torch":
            raise ValueError("--image_size does not apply to an export: its graph takes the size it was exported at")
        # the checkpoint's own preprocessor_config.json, as saved: the mode older thresholds were calibrated in
        processor, own_processor = load_processors(args.model_name_or_path, args.image_size)
        processor = with_inference_mode(processor, args.resize_mode, args.tile_size, args.tile_overlap, note=False)
        prepare_output_dir(output_dir, args.overwrite_output_dir)
    config = backend.decision_config
    # thresholds calibrated in another mode never decide: the rows are UNCALIBRATED unless overridden
    mode_note = thresholds_note(config, processor, own_processor, args.model_name_or_path)
    applied = fitting_decision_config(config, processor, own_processor)
    thresholds = choose_thresholds(applied, args.category, args.image_threshold, args.pixel_threshold)
    overridden = args.image_threshold is not None and args.pixel_threshold is not None
    _print_threshold_notes(config, args.category, thresholds, args.model_name_or_path, "" if overridden else mode_note)
    counts = predict_images(
        paths, backend, processor, thresholds, output_dir, args.category, args.batch_size, args.overlays,
        args.save_maps,
    )  # fmt: skip
    summary = {"images": len(paths), **{key: counts[key] for key in ("OK", "NG", UNCALIBRATED, "ERROR")}}
    print(
        f"{len(paths)} images: {counts['NG']} NG, {counts['OK']} OK, {counts[UNCALIBRATED]} uncalibrated, "
        f"{counts['ERROR']} errors -> {output_dir / 'predictions.csv'}"
        + (f", {output_dir / 'overlays'}/" if args.overlays else "")
    )
    return {**summary, "output_dir": str(output_dir)}


def _print_threshold_notes(
    config, category: str | None, thresholds: Thresholds, checkpoint: str, mode_note: str = ""
) -> None:
    """Tells the user on stderr, in one note, when the thresholds do not fit the mode (`mode_note`,
    `inference.modes.thresholds_note`), when decisions cannot be made, or when they fall back to the global ones."""
    if mode_note:
        print(f"note: {mode_note}", file=sys.stderr)
    elif thresholds.image is None:
        print(
            f"note: {checkpoint} has no calibrated thresholds, so every decision is {UNCALIBRATED}: calibrate it on "
            "normal images (clipada calibrate) or pass --image_threshold and --pixel_threshold",
            file=sys.stderr,
        )
    elif category and category not in (getattr(config, "category_thresholds", None) or {}):
        print(f"note: no thresholds calibrated for category {category!r}; using the global ones", file=sys.stderr)


def cli(argv: list[str] | None = None) -> None:
    """`clipada predict` (alias `clipada-predict`, `python -m inference.predict`): exit code 1 when any image
    failed."""
    summary = main(argv)
    if summary["ERROR"]:
        raise SystemExit(1)


if __name__ == "__main__":
    cli()
