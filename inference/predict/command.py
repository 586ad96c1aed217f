"""Score images with a checkpoint of any family or an export folder: OK/NG rows in predictions.csv/.jsonl and one
overlay per image (or per NG image). With an export folder (onnxruntime, openvino) nothing here imports torch.

Pipelined (`inference.predict.pipeline`): loader processes read and resize, this process runs the model, a writer
pool brings the maps back to each image's size, decides, draws and writes; bounded queues keep memory flat however
many images there are, and rows are written in input order. A file that cannot be read or scored (or whose score is
NaN) gets an `ERROR` row and the others go on; the exit code is 1 when any file failed, 2 for a usage error, 0
otherwise. The output folder follows `inference.output_folder`'s ownership rule: predict writes only into a new
folder or one it wrote itself; `--resume` continues a stopped run there (`inference.predict.resume`).

Example:
    ```bash
    clipada predict line3/ extra/*.png todo.txt --model_name_or_path outputs/run \\
        --category bottle --output_dir outputs/line3 --save_maps png16 --overlays ng
    clipada predict line3/ --model_name_or_path outputs/run --output_dir outputs/line3 --resume   # after a kill
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
from inference.command_line import (
    device_arguments,
    non_negative_int,
    open_unit_interval,
    overwrite_argument,
    positive_int,
    usage_errors,
)
from inference.modes import (
    add_inference_mode_arguments,
    check_inference_mode_arguments,
    fitting_decision_config,
    load_processors,
    thresholds_note,
    with_inference_mode,
)
from inference.output_folder import check_output_folder, claim_output_folder
from inference.overlays import draw_overlay
from inference.predict.inputs import InputError, find_inputs, output_names
from inference.predict.pipeline import (
    LoaderError,
    PipelineStats,
    default_num_workers,
    default_num_writers,
    loaded_batches,
    run_pipeline,
)
from inference.predict.ray_engine import RAY_SHARDS, add_engine_arguments, check_engine_arguments, predict_with_ray_args
from inference.predict.resume import (
    RUN_RECORD,
    RecoveredRows,
    check_fingerprint,
    recover_rows,
    run_fingerprint,
    write_fingerprint,
)
from inference.predict.rows import UNCALIBRATED, Thresholds, choose_thresholds
from inference.predict.stages import OVERLAY_MODES, FinishSettings, decided_row, forward
from inference.predict.writers import MAP_FORMATS, PredictionWriter
from modeling_clipada.decisions import decision_field
from processing import CLIPADAImageProcessor

COMMAND = "clipada predict"
# the temporary files are written whole, then renamed over their targets (a kill can leave one behind)
OUTPUT_ENTRIES = (
    "predictions.csv",
    "predictions.jsonl",
    "overlays",
    "maps",
    RUN_RECORD,
    f".{RUN_RECORD}.tmp",
    ".predictions.csv.tmp",
    RAY_SHARDS,
)
# the flags that change a row: recorded for --resume (batch size, workers, threads and device change the speed only)
FINGERPRINT_FLAGS = (
    "category",
    "image_threshold",
    "pixel_threshold",
    "dtype",
    "image_size",
    "resize_mode",
    "tile_size",
    "tile_overlap",
    "save_maps",
    "overlays",
)


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
        "--overlays",
        nargs="?",
        choices=OVERLAY_MODES,
        const="all",
        default="all",
        help="Draw overlays/ for all images (default), only the NG ones (ng), or none.",
    )
    parser.add_argument(
        "--no-overlays", dest="overlays", action="store_const", const="none", help="The same as --overlays none."
    )
    parser.add_argument(
        "--num_workers",
        type=non_negative_int,
        default=default_num_workers(),
        help="Loader processes that read and resize images (0: in this process). Default: min(4, cores - 1).",
    )
    parser.add_argument(
        "--num_writers",
        type=non_negative_int,
        default=default_num_writers(),
        help="Writer threads that finish rows, draw and write (0: in this process, batch after batch). Default: 2.",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="Go on with a stopped run in --output_dir (same model, settings and inputs): every input not yet "
        "written is scored, once.",
    )
    parser.add_argument(
        "--image_size", type=positive_int, help="The checkpoint's input size instead of its preprocessor_config.json's."
    )
    add_inference_mode_arguments(parser)
    add_engine_arguments(parser)
    args = parser.parse_args(argv)
    check_inference_mode_arguments(parser, args)
    check_engine_arguments(parser, args)
    if args.resume and args.overwrite_output_dir:
        parser.error("--resume continues the run in --output_dir, --overwrite_output_dir replaces it: choose one")
    return args


@dataclass
class PredictedImage:
    """One input after reading, scoring and deciding.

    Attributes:
        index: Its position in the paths given.
        row: Its `predictions.csv` row (keys `inference.predict.rows.COLUMNS`; `overlay` and `map` empty).
        image: `(H, W, 3)` uint8, the image as read, None for a file that could not be read or scored (an `ERROR`
            row).
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
    """Reads, scores and decides the images one batch at a time, in this process, with predict's own stages
    (`inference.predict.stages`): the same rows as the command.

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
    settings = _finish_settings(backend, processor, thresholds, category_thresholds, "none", None)
    items = [(index, path, categories[index]) for index, path in enumerate(paths)]
    for batch in loaded_batches(items, processor, keep_picture=True, batch_size=batch_size):
        predicted = []
        for loaded, outcome in zip(batch, forward(backend, batch)):
            row, anomaly_map, pred_mask = decided_row(loaded, outcome, settings)
            image = loaded.picture if anomaly_map is not None else None
            predicted.append(PredictedImage(loaded.index, row, image, anomaly_map, pred_mask))
        yield predicted


def _finish_settings(
    backend, processor, thresholds, category_thresholds, overlays: str, map_format: str | None
) -> FinishSettings:
    decision_config = getattr(backend, "decision_config", None)  # a plain callable is a backend too
    top_k = getattr(decision_config, "image_score_top_k", None)
    # draw_overlay is looked up at each run: a caller may have replaced it
    return FinishSettings.for_run(processor, top_k, thresholds, category_thresholds, overlays, map_format, draw_overlay)


def predict_images(
    paths: list[Path],
    backend: AnomalyBackend,
    processor: CLIPADAImageProcessor,
    thresholds: Thresholds,
    output_dir: Path,
    category: str | None = None,
    batch_size: int = 8,
    draw_overlays: bool | str = True,
    map_format: str | None = None,
    categories: Sequence[str | None] | None = None,
    category_thresholds: Mapping[str, Thresholds] | None = None,
    num_workers: int = 0,
    num_writers: int = 0,
    resume: bool = False,
    stats: PipelineStats | None = None,
) -> Counter:
    """Scores every image through the pipeline (`inference.predict.pipeline`) and writes its row, overlay and map.

    Args:
        paths: The images, in output order.
        backend: Any backend (`inference.backends`), run in this process.
        processor: Reads images (bit depth, EXIF orientation) once, resizes and normalises them, and maps anomaly
            maps back to each image's own size.
        thresholds: The thresholds every image is decided with (but those of `category_thresholds`).
        output_dir: Existing folder for predictions.csv/.jsonl, `overlays/` and `maps/`.
        category: Written in each row, and named to the model (AdaCLIP's prompts).
        batch_size: Images per backend call.
        draw_overlays: `all` (or True), `ng` (NG images only) or `none` (or False): which images get
            `overlays/<name>.png`.
        map_format: `png16` or `npz` to write `maps/<name>.<suffix>`, None for no maps.
        categories: One category per path instead of `category` (see [`predicted_batches`]).
        category_thresholds: The thresholds of the images of these categories.
        num_workers: Loader processes (0: read in this process).
        num_writers: Writer threads (0: finish in this process; each batch's rows are on disk before the next
            forward).
        resume: Keep the rows already in `output_dir` (`inference.predict.resume.recover_rows`, whole batches) and
            score the inputs after them.
        stats: Records the pipeline's queue peaks.

    Returns:
        How many rows got each decision (`OK`, `NG`, `UNCALIBRATED`, `ERROR`), those kept by `resume` included.
    """
    overlays = {True: "all", False: "none"}.get(draw_overlays, draw_overlays)
    if overlays not in OVERLAY_MODES:
        raise ValueError(f"draw_overlays {draw_overlays!r}: choose one of {', '.join(OVERLAY_MODES)}")
    names = output_names(paths)
    for folder, wanted in (("overlays", overlays != "none"), ("maps", map_format is not None)):
        if wanted:
            (output_dir / folder).mkdir(exist_ok=True)
    done = recover_rows(output_dir, paths, multiple_of=batch_size) if resume else RecoveredRows(0, Counter())
    counts: Counter = Counter(done.decisions)
    categories = [category] * len(paths) if categories is None else list(categories)
    items = [(index, paths[index], categories[index]) for index in range(done.count, len(paths))]
    settings = _finish_settings(backend, processor, thresholds, category_thresholds, overlays, map_format)
    with (
        PredictionWriter(output_dir, append=resume) as writer,
        tqdm(total=len(paths), initial=done.count, unit="img", desc="predict") as progress,
    ):
        counts += run_pipeline(
            items, names, backend, settings, output_dir, writer.write, writer.flush, batch_size=batch_size,
            num_workers=num_workers, num_writers=num_writers, progress=progress.update, stats=stats,
        )  # fmt: skip
    return counts


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
    list_files, folders = _sources(paths, arguments, model)
    claim_output_folder(
        output_dir, COMMAND, OUTPUT_ENTRIES, overwrite=overwrite, sources=list_files, contained_sources=folders
    )


def check_resumable(output_dir: Path, paths: list[Path], arguments: list[str], model: str, fingerprint: dict) -> None:
    """Raises unless `--resume` may continue the run in `output_dir`: a folder predict wrote (the ownership rule,
    `inference.output_folder.check_output_folder`), holding only its own entries, by a run with this fingerprint
    (`inference.predict.resume.check_fingerprint`, naming what differs).

    Args:
        paths, arguments, model: As [`claim_predict_output`] takes them.
        fingerprint: This run's `inference.predict.resume.run_fingerprint`.
    """
    list_files, folders = _sources(paths, arguments, model)
    check_output_folder(output_dir, COMMAND, overwrite=True, sources=list_files, contained_sources=folders)
    check_fingerprint(output_dir, fingerprint)


def _sources(paths: list[Path], arguments: list[str], model: str) -> tuple[list[Path], list[Path]]:
    """What the output folder may never be: `(list files, folders)`; the folders (the images' folders, the folders
    given, a local checkpoint) may hold the output folder, never be or lie inside it."""
    folders = {path.parent for path in paths} | {Path(item) for item in arguments if Path(item).is_dir()}
    if Path(model).is_dir():
        folders.add(Path(model))
    return [Path(item) for item in arguments if Path(item).is_file()], sorted(folders)


def _fitting_workers(args: argparse.Namespace, count: int) -> int:
    """`--num_workers`, or 0 when every image fits in one batch (nothing to read ahead of)."""
    return args.num_workers if count > args.batch_size else 0


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
        fingerprint = run_fingerprint(
            args.model_name_or_path,
            backend.name,
            {f"--{flag}": getattr(args, flag) for flag in FINGERPRINT_FLAGS},
            paths,
        )
        # --resume where no row was written yet (a new folder, or a run stopped before its first row) starts afresh
        resume = args.resume and (output_dir / "predictions.jsonl").is_file()
        if resume:
            check_resumable(output_dir, paths, args.inputs, args.model_name_or_path, fingerprint)
        else:
            overwrite = args.overwrite_output_dir or args.resume
            claim_predict_output(output_dir, overwrite, paths, args.inputs, args.model_name_or_path)
            write_fingerprint(output_dir, fingerprint)
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
    try:
        if args.engine == "ray":  # Ray Data on a Ray cluster (inference.predict.ray_engine)
            counts = predict_with_ray_args(args, paths, backend, processor, thresholds, categories, category_thresholds)
        else:
            counts = predict_images(
                paths, backend, processor, thresholds, output_dir, args.category, args.batch_size, args.overlays,
                args.save_maps, categories, category_thresholds, num_workers=_fitting_workers(args, len(paths)),
                num_writers=args.num_writers, resume=resume,
            )  # fmt: skip
    except LoaderError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from error
    summary = {"images": len(paths), **{key: counts[key] for key in ("OK", "NG", UNCALIBRATED, "ERROR")}}
    print(
        f"{len(paths)} images: {counts['NG']} NG, {counts['OK']} OK, {counts[UNCALIBRATED]} uncalibrated, "
        f"{counts['ERROR']} errors -> {output_dir / 'predictions.csv'}"
        + (f", {output_dir / 'overlays'}/" if args.overlays != "none" else "")
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
