"""Score images with a checkpoint of any family or an export folder: OK/NG rows in predictions.csv/.jsonl and one
overlay per image. With an export folder (onnxruntime, openvino) nothing here imports torch.

Streams: images are read, scored, drawn and written one batch at a time, so memory stays flat however many images
there are. A file that cannot be read or scored (or whose score is NaN) gets an `ERROR` row and the others go on;
the exit code is 1 when any file failed, 2 for a usage error, 0 otherwise. The output folder follows
`inference.output_folder`'s ownership rule: predict writes only into a new folder or one it wrote itself.

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
from inference.output_folder import claim_output_folder, inside, safe_name
from inference.overlays import display_name, draw_overlay
from inference.predict.inputs import InputError, find_inputs, input_problem, output_names
from inference.predict.rows import UNCALIBRATED, Thresholds, choose_thresholds, error_row, prediction_row
from inference.predict.writers import MAP_FORMATS, PredictionWriter, save_map
from inference.scoring import score_images
from modeling_clipada.decisions import decision_field
from processing import CLIPADAImageProcessor

COMMAND = "clipada predict"
OUTPUT_ENTRIES = ("predictions.csv", "predictions.jsonl", "overlays", "maps")


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
        image: `(3, H, W)` in [0, 1], None for a file that could not be read or scored (an `ERROR` row).
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
    categories: Sequence[str | None] | None = None,
    category_thresholds: Mapping[str, Thresholds] | None = None,
) -> Iterator[list[PredictedImage]]:
    """Reads, scores (`inference.scoring.score_images`) and decides the images one batch at a time.

    One odd file never stops the run: a file that cannot be read (`inference.predict.inputs.input_problem`, or the
    reader's error), one the backend fails on (the batch is then scored image by image to find it) and one whose
    score or map is not finite each get an `ERROR` row naming the problem, and the others go on.

    Args:
        categories: One category per path (None: `category` for every image).
        category_thresholds: The thresholds of the images of these categories (the others: `thresholds`).

    Yields:
        Per batch, its images in input order, `ERROR` rows among them.
    """
    categories = [category] * len(paths) if categories is None else list(categories)
    category_thresholds = category_thresholds or {}
    for start in range(0, len(paths), batch_size):
        done, read, images = [], [], []
        for index in range(start, min(start + batch_size, len(paths))):
            path, image_category = paths[index], categories[index]
            try:
                problem = input_problem(path)
                if problem is None:
                    images.append(processor.process_image(str(path), name="image"))  # (3, H, W) in [0, 1]
                    read.append(index)
            except Exception as error:  # noqa: BLE001 - a reader raises many types for odd files: that file's row
                problem = _message(error)
            if problem is not None:
                done.append(PredictedImage(index, error_row(str(path), image_category, problem)))
        for index, image, outcome in zip(
            read, images, _scored(backend, processor, images, [categories[i] for i in read])
        ):
            path, image_category = str(paths[index]), categories[index]
            if isinstance(outcome, Exception):
                done.append(
                    PredictedImage(index, error_row(path, image_category, f"could not be scored: {_message(outcome)}"))
                )
                continue
            anomaly_map, score = outcome
            image_thresholds = category_thresholds.get(image_category, thresholds)
            row, pred_mask = prediction_row(path, image_category, anomaly_map, float(score), image_thresholds)
            if row["decision"] == "ERROR":  # the model produced NaN or inf
                done.append(PredictedImage(index, row))
            else:
                done.append(PredictedImage(index, row, image, anomaly_map, pred_mask))
        yield sorted(done, key=lambda predicted: predicted.index)


def _scored(
    backend: AnomalyBackend, processor: CLIPADAImageProcessor, images: list[np.ndarray], categories: list
) -> list[tuple[np.ndarray, float] | Exception]:
    """`(anomaly_map, score)` per image, or the error the backend raised on that image alone."""
    if not images:
        return []
    try:
        scored = score_images(backend, processor, images, categories)
        return list(zip(scored.anomaly_maps, scored.scores.tolist()))
    except Exception as error:  # noqa: BLE001 - find the image it failed on: the others still get their rows
        if len(images) == 1:
            return [error]
        return [_scored(backend, processor, [image], [category])[0] for image, category in zip(images, categories)]


def _message(error: BaseException) -> str:
    return str(error) or type(error).__name__


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
    categories: Sequence[str | None] | None = None,
    category_thresholds: Mapping[str, Thresholds] | None = None,
) -> Counter:
    """Scores every image, one batch at a time, and writes its row, overlay and map as soon as it is scored.

    Args:
        paths: The images, in output order.
        backend: Any backend (`inference.backends`); images are scored by `inference.scoring.score_images`.
        processor: Reads images (bit depth, EXIF orientation) once, resizes and normalises them, and maps anomaly
            maps back to each image's own size.
        thresholds: The thresholds every image is decided with (but those of `category_thresholds`).
        output_dir: Existing folder for predictions.csv/.jsonl, `overlays/` and `maps/`.
        category: Written in each row, and named to the model (AdaCLIP's prompts).
        batch_size: Images per backend call.
        draw_overlays: Write `overlays/<name>.png`.
        map_format: `png16` or `npz` to write `maps/<name>.<suffix>`, None for no maps.
        categories: One category per path instead of `category` (see [`predicted_batches`]).
        category_thresholds: The thresholds of the images of these categories.

    Returns:
        How many rows got each decision (`OK`, `NG`, `UNCALIBRATED`, `ERROR`).
    """
    names = output_names(paths)
    for folder, wanted in (("overlays", draw_overlays), ("maps", map_format is not None)):
        if wanted:
            (output_dir / folder).mkdir(exist_ok=True)
    counts: Counter = Counter()
    batches = predicted_batches(
        paths, backend, processor, thresholds, category, batch_size, categories, category_thresholds
    )
    with PredictionWriter(output_dir) as writer, tqdm(total=len(paths), unit="img", desc="predict") as progress:
        for batch in batches:
            for predicted in batch:
                row = predicted.row
                if predicted.image is not None:
                    row = _with_pictures(
                        predicted, paths, names[predicted.index], output_dir, draw_overlays, map_format
                    )
                writer.write(row)
                counts[row["decision"]] += 1
            writer.flush()
            progress.update(len(batch))
    return counts


def _with_pictures(
    predicted: PredictedImage, paths: list[Path], name: str, output_dir: Path, draw: bool, map_format: str | None
) -> dict:
    """The row after writing its overlay and map; an `ERROR` row naming the problem when either cannot be written."""
    row, path = dict(predicted.row), paths[predicted.index]
    try:
        if draw:
            overlay = inside(output_dir, output_dir / "overlays" / f"{safe_name(name, 'overlay name')}.png")
            picture = draw_overlay(
                predicted.image.transpose(1, 2, 0), predicted.anomaly_map, predicted.pred_mask, row["score"],
                row["decision"], row["image_threshold"], title=display_name(path),
                pixel_threshold=row["pixel_threshold"],
            )  # fmt: skip
            picture.save(overlay, compress_level=1)
            row["overlay"] = overlay.relative_to(output_dir).as_posix()
        if map_format is not None:
            stem = inside(output_dir, output_dir / "maps" / safe_name(name, "map name"))
            row["map"] = save_map(stem, predicted.anomaly_map, map_format).relative_to(output_dir).as_posix()
    except Exception as error:  # noqa: BLE001 - one picture that cannot be drawn or written: that image's row
        return error_row(str(path), row["category"] or None, f"could not write its overlay or map: {_message(error)}")
    return row


def dataset_categories(paths: list[Path], known: Iterable[str]) -> list[str | None]:
    """The category of each image in a dataset's layout (`bottle/test/crack/000.png`): its nearest folder named like
    a calibrated category, else None.

    Args:
        paths: The images.
        known: The categories the checkpoint has thresholds for.
    """
    known = set(known)
    return [next((part for part in reversed(path.parent.parts) if part in known), None) for path in paths]


def claim_predict_output(
    output_dir: Path, overwrite: bool, paths: list[Path], arguments: list[str], model: str
) -> None:
    """Creates or takes back `output_dir` under the ownership rule (`inference.output_folder.claim_output_folder`):
    refuses a folder predict did not write, a folder holding other files, and the folder of any input (or one
    containing it); with `overwrite` removes only predict's own earlier output.

    Args:
        paths: The images: the output folder may lie inside their folders, never be or contain one.
        arguments: The inputs as given (folders, list files).
        model: `--model_name_or_path`: a local checkpoint folder is treated like an input folder.
    """
    folders = {path.parent for path in paths} | {Path(item) for item in arguments if Path(item).is_dir()}
    if Path(model).is_dir():
        folders.add(Path(model))
    list_files = [Path(item) for item in arguments if Path(item).is_file()]
    claim_output_folder(
        output_dir, COMMAND, OUTPUT_ENTRIES, overwrite=overwrite, sources=list_files,
        contained_sources=sorted(folders),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """Runs the command; returns `{"images": N, "OK": .., "NG": .., "UNCALIBRATED": .., "ERROR": .., ...}`."""
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    with usage_errors():
        found = find_inputs(args.inputs)
        paths = found.paths
        if not paths:
            raise InputError(f"no image files found in {' '.join(args.inputs)}")
        backend = load_backend(args.backend, args.model_name_or_path, args.device, args.dtype, args.num_threads)
        if args.image_size is not None and backend.name != "torch":
            raise ValueError("--image_size does not apply to an export: its graph takes the size it was exported at")
        # the checkpoint's own preprocessor_config.json, as saved: the mode older thresholds were calibrated in
        processor, own_processor = load_processors(args.model_name_or_path, args.image_size)
        processor = with_inference_mode(processor, args.resize_mode, args.tile_size, args.tile_overlap, note=False)
        claim_predict_output(output_dir, args.overwrite_output_dir, paths, args.inputs, args.model_name_or_path)
    if found.skipped_outputs:
        shown = ", ".join(map(str, found.skipped_outputs[:3])) + (", ..." if len(found.skipped_outputs) > 3 else "")
        print(
            f"note: skipped {len(found.skipped_outputs)} folder(s) of earlier clipada output: {shown}", file=sys.stderr
        )
    config = backend.decision_config
    # thresholds calibrated in another mode never decide: the rows are UNCALIBRATED unless overridden
    mode_note = thresholds_note(config, processor, own_processor, args.model_name_or_path)
    applied = fitting_decision_config(config, processor, own_processor)
    overrides = (args.image_threshold, args.pixel_threshold)
    thresholds = choose_thresholds(applied, args.category, *overrides)
    overridden = args.image_threshold is not None and args.pixel_threshold is not None
    _print_threshold_notes(config, args.category, thresholds, args.model_name_or_path, "" if overridden else mode_note)
    categories, category_thresholds = None, None
    if args.category is None:  # dataset images: the category their folders name, where the checkpoint knows it
        categories = dataset_categories(paths, decision_field(applied, "category_thresholds") or {})
        category_thresholds = {name: choose_thresholds(applied, name, *overrides) for name in set(categories) - {None}}
        _print_category_note(Counter(name for name in categories if name))
    counts = predict_images(
        paths, backend, processor, thresholds, output_dir, args.category, args.batch_size, args.overlays,
        args.save_maps, categories, category_thresholds,
    )  # fmt: skip
    summary = {"images": len(paths), **{key: counts[key] for key in ("OK", "NG", UNCALIBRATED, "ERROR")}}
    print(
        f"{len(paths)} images: {counts['NG']} NG, {counts['OK']} OK, {counts[UNCALIBRATED]} uncalibrated, "
        f"{counts['ERROR']} errors -> {output_dir / 'predictions.csv'}"
        + (f", {output_dir / 'overlays'}/" if args.overlays else "")
    )
    return {**summary, "output_dir": str(output_dir)}


def _print_category_note(found: Counter) -> None:
    """Says on stderr which categories the folder names gave, as their thresholds decide those images."""
    if found:
        counted = ", ".join(f"{name} ({count})" for name, count in sorted(found.items()))
        print(
            f"note: category taken from the folder names for {sum(found.values())} images: {counted}; "
            "pass --category to use one for all",
            file=sys.stderr,
        )


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
