"""Evaluate a CLIP-ADA checkpoint per category, as papers do: metrics.json, a Markdown table, heatmaps, predictions.

Images and masks are evaluated at the model's input resolution (masks resized with nearest neighbour), the common
practice of CLIP-based detectors, when the processor squashes images. With letterbox or tiles (the checkpoint's
preprocessor_config.json, or `--resize_mode/--tile_size/--tile_overlap`) the maps come back at each image's own
resolution and are compared with the unresized masks there (4 bytes of metric buffer per image pixel). Only the
metric buffers grow with the number of test images (`--save_predictions` adds the maps it writes).

Under `accelerate launch --multi_gpu --num_processes N` (GPUs, or gloo processes on a CPU) each process scores its
share of every category and the main process gathers the batches the metrics need (`training.eval_processes`): the
metrics, predictions and heatmaps are those of one process.

Example:
    ```bash
    python -m training.evaluation --model_name_or_path outputs/clipada-mvtec \\
        --dataset_name /data/mvtec_anomaly_detection \\
        --output_dir outputs/clipada-mvtec/evaluation --save_predictions
    accelerate launch --multi_gpu --num_processes 4 -m training.evaluation --model_name_or_path outputs/clipada-mvtec \\
        --dataset_name /data/mvtec_anomaly_detection --output_dir outputs/clipada-mvtec/evaluation
    ```
"""

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from inference.command_line import (
    device_arguments,
    non_negative_int,
    overwrite_argument,
    positive_int,
    usage_errors,
)
from inference.devices import configure_threads, resolve_device
from inference.loading import add_class_names, load_clipada_model
from inference.modes import (
    add_inference_mode_arguments,
    check_inference_mode_arguments,
    fitting_decision_config,
    load_processors,
    thresholds_note,
    with_inference_mode,
)
from inference.output_folder import check_output_folder, inside, read_marker, safe_name, write_marker
from inference.overlays import display_name, save_heatmap
from inference.predict.rows import decide
from inference.scoring import score_inputs
from inference.torch_backend import TorchBackend
from modeling_clipada.decisions import resolve_thresholds
from processing import CLIPADAImageProcessor
from training.benchmark_eval import (
    add_benchmark_arguments,
    benchmark_metrics,
    check_benchmark_arguments,
    write_benchmark_outputs,
)
from training.data import DATASET_NAMES, DatasetFormatError, has_ground_truth, load_anomaly_dataset
from training.eval_processes import EvalProcesses, current_processes
from training.metrics import (
    OVERKILL_NAMES,
    AnomalyMetrics,
    format_metrics_table,
    format_operating_points_table,
    mean_metrics,
)
from training.metrics.finite import NonFiniteCount, NonFiniteScoresError
from training.metrics.report import pixel_metrics_notes, without_nan

COMMAND = "clipada eval"
# what `clipada eval` writes into --output_dir (the entries of its `.clipada_output.json`)
EVALUATION_ENTRIES = ("metrics.json", "metrics.md", "heatmaps", "predictions")
# dataset columns whose values become file names (heatmaps/<category>_0001.png, predictions/<category>.npz)
NAME_COLUMNS = ("category", "defect_type")


def evaluate_model(
    model: PreTrainedModel,
    processor: CLIPADAImageProcessor,
    test_dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    output_dir: str | Path | None = None,
    save_predictions: bool = False,
    num_heatmaps: int = 4,
    num_workers: int = 0,
    decision_config=None,
    category_metrics=None,
    processes: EvalProcesses | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Runs the model over a test split, category by category.

    Args:
        test_dataset: a `datasets.Dataset` with columns `image`, `mask` (None for normal images, and for anomalous
            images without a ground-truth mask: those count for the image metrics only), `label`, `category`.
        output_dir: where heatmaps (`heatmaps/<category>_<i>.png`) and predictions (`predictions/<category>.npz`) go.
        save_predictions: write `image_scores` (N,), `image_labels` (N,), `anomaly_maps` (N, H, W) float16,
            `masks` (N, H, W) uint8 and `mask_available` (N,) bool per category.
        num_heatmaps: Heatmaps per category (anomalous samples first): drawn like predict's overlays (colour map,
            colour bar, score, decision at the category's thresholds, name), with the ground truth outlined.

        decision_config: Whose thresholds the operating point (false-reject and escape rates) is measured at:
            `model.config` by default; `inference.modes.NO_THRESHOLDS` where they were calibrated in another mode.
        category_metrics: `factory(category, rows)` of the benchmark-specific metrics (MVTec AD 2's `seg_f1`,
            Real-IAD's sample-level `sample_image_auroc`: `training.metrics.dataset_metrics.category_metrics_factory`),
            fed the batches `AnomalyMetrics` gets; None for none.
        processes: The processes sharing the evaluation (`training.eval_processes.current_processes`): each scores
            its contiguous share of every category, the main process gathers the others' batches and computes the
            metrics (the same as one process); every process gets them. None: this process alone.

    Returns:
        `(per_category, mean)`: metric dicts (`image_auroc`, `pixel_auroc`, `pixel_ap`, `aupro`, `image_f1_max`,
        `pixel_f1_max`, `overkill_at_{2,5,10}pct_escape`), values in [0, 1]; each category's also holds
        `image_f1_max_threshold` and `pixel_f1_max_threshold`, the scores where its F1-max values are reached. Pixel
        metrics are `None` where no anomalous image has a mask, and `images_without_mask` counts the images they leave
        out (when any). The operating point at the model's own image threshold (its category's where calibrated, else
        the global one: `resolve_thresholds`): `image_threshold`, `false_reject_rate`, `escape_rate` and their counts
        per category, pooled over all images in `mean`; `None` with `"operating_point": "not calibrated"` without one.

    Raises:
        OutputFolderError: A category or defect type is not a single file name (`..`, a separator, a control
            character: it would lead a file out of `output_dir`), before anything is written.
        NonFiniteScoresError: The model scored images NaN or infinite; the error counts them over the whole split.
    """
    check_dataset_names(test_dataset)
    backend = TorchBackend(model, device)
    decision_config = model.config if decision_config is None else decision_config
    output_dir = Path(output_dir) if output_dir is not None else None
    non_finite = NonFiniteCount("images")
    processes = processes or EvalProcesses()
    categories = np.asarray(test_dataset["category"])
    labels = np.asarray(test_dataset["label"])
    per_category = {}
    for category in sorted(set(categories.tolist())):
        indices = np.flatnonzero(categories == category)
        columns = [c for c in ("image", "mask", "label", "image_path") if c in test_dataset.column_names]
        subset = test_dataset.select(indices).select_columns(columns)
        heatmap_rows = set(_heatmap_rows(labels[indices], num_heatmaps).tolist())
        metrics = AnomalyMetrics()
        extra = category_metrics(category, test_dataset.select(indices)) if category_metrics is not None else None
        predictions = {"image_scores": [], "image_labels": [], "anomaly_maps": [], "masks": [], "mask_available": []}
        metrics, extra = processes.recorder(metrics), processes.recorder(extra)  # recorders on the other processes
        for start, batch in _batches(subset, processor, batch_size, num_workers, processes.share(len(indices))):
            image_labels, available = batch["image_labels"], batch["mask_available"]
            # all inputs of the batch (every tile of every image) in one forward; squash maps stay at the input size
            scored = score_inputs(backend, processor, batch, [category] * len(image_labels))
            non_finite.add(scored.scores, scored.anomaly_maps, [category] * len(image_labels))
            if non_finite.count:  # the evaluation ends in an error: the remaining images are only counted
                continue
            anomaly_maps = [torch.from_numpy(anomaly_map) for anomaly_map in scored.anomaly_maps]
            scores = torch.from_numpy(scored.scores)
            if "image_layouts" in batch:  # letterbox or tiles: one map per image at its own size, fed image by image
                parts = [
                    (scores[i : i + 1], image_labels[i : i + 1], anomaly_maps[i][None], batch["labels"][i][None],
                     available[i : i + 1])
                    for i in range(len(scores))
                ]  # fmt: skip
            else:
                parts = [(scores, image_labels, torch.stack(anomaly_maps), batch["labels"], available)]
            for part_scores, part_labels, part_maps, part_masks, part_available in parts:
                metrics.update(part_maps, part_masks, part_scores, part_labels, part_available)
                if extra is not None:
                    extra.update(part_maps, part_masks, part_scores, part_labels, part_available)
                if save_predictions:
                    values = (part_scores, part_labels, part_maps, part_masks, part_available)
                    for key, value in zip(predictions, values):
                        predictions[key].append(value.numpy())
            for offset in range(len(scores)):
                if output_dir is not None and start + offset in heatmap_rows:
                    heatmap = (batch["raw_images"][offset], batch["labels"][offset], anomaly_maps[offset])
                    name = _heatmap_title(subset, start + offset, category, int(image_labels[offset]))
                    _write_heatmap(output_dir, category, start + offset, *heatmap, float(scores[offset]), name,
                                   decision_config)  # fmt: skip
        # the gather step: the other processes' batches, replayed on the main process after its own (row order)
        (metrics, extra), predictions, skip = processes.gather_category([metrics, extra], predictions, non_finite.count)
        if skip or not processes.is_main:
            continue
        image_threshold = resolve_thresholds(decision_config, category).image
        per_category[category] = metrics.compute(include_thresholds=True, image_threshold=image_threshold)
        if extra is not None:
            per_category[category].update(extra.compute())
        if save_predictions and output_dir is not None:
            save_category_predictions(inside(output_dir, output_dir / "predictions" / f"{category}.npz"), predictions)
    processes.merged(non_finite).check()
    per_category = processes.broadcast(per_category)
    return per_category, mean_metrics(per_category)


def check_dataset_names(test_dataset) -> None:
    """Raises `OutputFolderError` unless every value of the `NAME_COLUMNS` a split has is a single file name: a
    saved or Hub dataset may hold any text there, and these values become output file names.

    Args:
        test_dataset: A `datasets.Dataset` (the columns it lacks are skipped).
    """
    for column in NAME_COLUMNS:
        if column in test_dataset.column_names:
            for value in test_dataset.unique(column):
                safe_name(value, f"the dataset's {column}")


def _write_heatmap(
    output_dir: Path, category: str, row: int, image, mask, anomaly_map, score: float, title: str, decision_config
) -> None:
    """`heatmaps/<category>_<row>.png`: the image drawn like predict's overlays (`inference.overlays.save_heatmap`),
    decided at the category's thresholds, with the ground truth outlined: image `(3, H, W)`, mask and map `(H, W)`."""
    thresholds = resolve_thresholds(decision_config, category)
    path = inside(output_dir, output_dir / "heatmaps" / f"{category}_{row:04d}.png")
    save_heatmap(
        path, image, mask, anomaly_map, score, decide(score, thresholds.image), thresholds.image, title,
        pixel_threshold=thresholds.pixel,
    )  # fmt: skip


def _heatmap_title(subset, row: int, category: str, label: int) -> str:
    """`bottle · broken_large/000.png (anomalous)`: the image's file where the dataset keeps it, else its row."""
    path = subset.select_columns(["image_path"])[row]["image_path"] if "image_path" in subset.column_names else None
    name = display_name(Path(path)) if path else f"#{row:04d}"
    return f"{category} · {name} ({'anomalous' if label else 'normal'})"


def _heatmap_rows(labels: np.ndarray, count: int) -> np.ndarray:
    """Rows to draw: up to `count - 1` anomalous samples, then normal ones for the slots left (at least one)."""
    anomalous, normal = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    return np.concatenate([anomalous[: max(count - 1, 0)], normal])[:count]


def _batches(
    subset, processor: CLIPADAImageProcessor, batch_size: int, num_workers: int, rows: range | None = None
) -> Iterator[tuple[int, dict]]:
    """Yields `(first_row, batch)`; batch has `pixel_values` (B, 3, H, W), `labels` (B, H, W) uint8, `image_labels`
    (B,), `mask_available` (B,) bool (False: an anomalous image without a mask) and `raw_images` (B, 3, H, W) in
    [0, 1] for the heatmaps."""

    def collate(examples: list[dict]) -> dict:
        for example in examples:
            _check_mask_size(example)
        if processor.tile_size or processor.resize_mode != "squash":
            return _collate_at_image_size(examples, processor)
        inputs = processor(
            images=[example["image"] for example in examples],
            segmentation_maps=[example["mask"] for example in examples],
            do_normalize=False,
        )
        return {
            "pixel_values": processor.normalize(inputs["pixel_values"]),
            "raw_images": inputs["pixel_values"],
            "labels": inputs["labels"].to(torch.uint8),
            "image_labels": torch.tensor([example["label"] for example in examples]),
            "mask_available": torch.tensor([has_ground_truth(e["label"], e["mask"]) for e in examples]),
        }

    first = 0 if rows is None else rows.start
    if rows is not None:  # this process's share of the rows
        subset = subset.select(rows)
    loader = DataLoader(subset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
    for index, batch in enumerate(loader):
        yield first + index * batch_size, batch


def _collate_at_image_size(examples: list[dict], processor: CLIPADAImageProcessor) -> dict:
    """Letterbox or tiles: `pixel_values` (N, 3, H, W) for the N inputs of the batch, `image_layouts`, and per image
    `raw_images` (3, H_i, W_i) and `labels` (H_i, W_i) uint8 at the image's own size (masks are not resized)."""
    raw_images = [processor.process_image(example["image"]) for example in examples]  # (3, H, W) in [0, 1]
    inputs = processor(images=raw_images, do_normalize=False)
    masks = [
        processor.process_mask(example["mask"], "mask", example.get("image_path") or "image", image.shape[-2:])[0]
        for example, image in zip(examples, raw_images)
    ]
    return {
        "pixel_values": processor.normalize(inputs["pixel_values"]),
        "image_layouts": inputs["image_layouts"],
        "raw_images": [torch.from_numpy(image) for image in raw_images],
        "labels": [torch.from_numpy(mask).to(torch.uint8) for mask in masks],
        "image_labels": torch.tensor([example["label"] for example in examples]),
        "mask_available": torch.tensor([has_ground_truth(e["label"], e["mask"]) for e in examples]),
    }


def _check_mask_size(example: dict) -> None:
    """A mask must have its image's size; the error names the image file (saved datasets keep `image_path`)."""
    image, mask = example["image"], example["mask"]
    if mask is not None and mask.size != image.size:
        name = example.get("image_path") or "an image"
        raise DatasetFormatError(
            f"{name}: mask size {mask.size[0]}x{mask.size[1]} differs from image size {image.size[0]}x{image.size[1]}"
        )


def save_category_predictions(path: Path, predictions: dict[str, list[np.ndarray]]) -> None:
    """Writes one category's npz; maps of different sizes (letterbox or tiles on images of different sizes) go
    under `anomaly_map_<i>` and `mask_<i>` (five digits) instead of the stacked `anomaly_maps` and `masks`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    maps, masks = predictions["anomaly_maps"], predictions["masks"]
    if len({chunk.shape[1:] for chunk in maps}) == 1:
        arrays = {"anomaly_maps": np.concatenate(maps).astype(np.float16), "masks": np.concatenate(masks)}
        arrays["masks"] = arrays["masks"].astype(np.uint8)
    else:
        arrays = {f"anomaly_map_{i:05d}": chunk[0].astype(np.float16) for i, chunk in enumerate(maps)}
        arrays.update({f"mask_{i:05d}": chunk[0].astype(np.uint8) for i, chunk in enumerate(masks)})
    np.savez_compressed(
        path,
        image_scores=np.concatenate(predictions["image_scores"]).astype(np.float32),
        image_labels=np.concatenate(predictions["image_labels"]).astype(np.int64),
        mask_available=np.concatenate(predictions["mask_available"]).astype(bool),
        **arrays,
    )


def write_evaluation(output_dir: str | Path, per_category: dict, mean: dict) -> str:
    """Writes `metrics.json` ({"per_category": ..., "mean": ...}) and `metrics.md`, and marks `output_dir` as written
    by `clipada eval` (`.clipada_output.json`, listing the `EVALUATION_ENTRIES` it holds, so a later
    `clipada eval --overwrite_output_dir` may replace them); returns the Markdown of metrics.md.

    Pixel metrics that are not available (no ground-truth masks) are `null` in the JSON and "n/a" in the table; the
    rows concerned carry a `"pixel_metrics"` note (e.g. "not available: no ground-truth masks"), as the table does.
    Undefined (`nan`) values are `null` too, never a bare `NaN` (the JSON is strict), with the reason: an
    `"image_metrics"` note (e.g. "not defined: no defective images") or a `"pixel_metrics"` one (e.g. "not defined: no
    anomalous pixel in the ground-truth masks"). metrics.md holds the paper's table, then the operating points
    (overkill at 2/5/10 % escape; false-reject and escape rates at the checkpoint's thresholds).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    notes = pixel_metrics_notes(per_category, mean)
    payload = {
        "per_category": {
            category: {**metrics, "pixel_metrics": notes[category]} if category in notes else metrics
            for category, metrics in per_category.items()
        },
        "mean": {**mean, "pixel_metrics": notes["Mean"]} if "Mean" in notes else mean,
    }
    (output_dir / "metrics.json").write_text(json.dumps(without_nan(payload), indent=2, allow_nan=False) + "\n")
    table = format_metrics_table(per_category, mean)
    if any(OVERKILL_NAMES[0] in metrics for metrics in per_category.values()):
        table += "\n\n" + format_operating_points_table(per_category, mean)
    (output_dir / "metrics.md").write_text(table + "\n")
    _mark_as_evaluation(output_dir)
    return table


def _mark_as_evaluation(output_dir: Path) -> None:
    """Lists the `EVALUATION_ENTRIES` `output_dir` holds in its marker, unless another command's marker is there."""
    marker = read_marker(output_dir)
    if marker is not None and marker["written_by"] != COMMAND:
        return
    earlier = marker["entries"] if marker is not None else []
    written = [name for name in EVALUATION_ENTRIES if (output_dir / name).exists()]
    write_marker(output_dir, COMMAND, [*earlier, *written])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        parents=[device_arguments(), overwrite_argument("the output of an earlier clipada eval")],
    )
    parser.add_argument("--model_name_or_path", required=True, help="A CLIP-ADA checkpoint folder or Hub id.")
    parser.add_argument(
        "--dataset_name",
        required=True,
        help="A raw MVTec-AD / VisA folder, a folder saved by training.prepare_dataset, or a Hub id.",
    )
    parser.add_argument("--dataset", choices=DATASET_NAMES, default=None, help="Layout of a raw folder (inferred).")
    parser.add_argument("--categories", nargs="+", default=None)
    parser.add_argument(
        "--skip_missing_files",
        action="store_true",
        help="VisA: skip split-csv rows whose files are missing (a partial download).",
    )
    parser.add_argument(
        "--output_dir",
        required=True,
        help="A new folder, or one an earlier clipada eval wrote (replaced with --overwrite_output_dir); never the "
        "checkpoint or the dataset folder itself, nor a folder that holds other files. It is written in one piece "
        "once the evaluation is complete.",
    )
    parser.add_argument("--per_device_eval_batch_size", type=positive_int, default=16)
    parser.add_argument("--dataloader_num_workers", type=non_negative_int, default=0)
    parser.add_argument("--save_predictions", action="store_true")
    parser.add_argument("--num_heatmaps", type=non_negative_int, default=4)
    add_benchmark_arguments(parser)
    parser.add_argument(
        "--image_size",
        type=positive_int,
        default=None,
        help="Evaluate at this input size instead of the checkpoint's preprocessor_config.json.",
    )
    add_inference_mode_arguments(parser)
    few_shot = parser.add_argument_group("few-shot protocol (training.few_shot_eval)")
    few_shot.add_argument(
        "--shots",
        type=non_negative_int,
        nargs="+",
        default=None,
        help="Fit the reference memory on this many normal training images per category and evaluate, once per "
        "--seeds value; mean and std per metric in few_shot.md (e.g. --shots 1 2 4 8).",
    )
    few_shot.add_argument("--seeds", type=int, nargs="+", default=[0], help="Seeds of the shots' draws (--shots).")
    args = parser.parse_args(argv)
    check_inference_mode_arguments(parser, args)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    configure_threads(args.num_threads)
    if args.shots is not None:  # the few-shot protocol: one evaluation per (shots, seed)
        from training.few_shot_eval import run_few_shot

        return run_few_shot(args)
    output_dir = Path(args.output_dir)
    processes = current_processes()  # several under `accelerate launch --num_processes N`
    with usage_errors():  # a folder eval may not write, a bad device, checkpoint or dataset
        check_output_folder(
            output_dir,
            COMMAND,
            overwrite=args.overwrite_output_dir,
            sources=local_paths(args.dataset_name),
            contained_sources=local_paths(args.model_name_or_path),  # outputs/run/evaluation is fine
        )
        device = processes.device or resolve_device(args.device)  # a GPU per process under accelerate
        model = load_clipada_model(args.model_name_or_path, dtype=getattr(torch, args.dtype))
        processor, own_processor = load_processors(args.model_name_or_path, args.image_size)
        processor = with_inference_mode(processor, args.resize_mode, args.tile_size, args.tile_overlap, note=False)
        # the operating point is measured only where the checkpoint's thresholds apply (the mode they were made in)
        decision_config = fitting_decision_config(model.config, processor, own_processor)
        mode_note = thresholds_note(model.config, processor, own_processor, args.model_name_or_path)
        if mode_note:
            print(f"note: {mode_note}", file=sys.stderr)
        with processes.main_first():  # the dataset cache is written once
            dataset = load_anomaly_dataset(
                args.dataset_name,
                dataset=args.dataset,
                categories=args.categories,
                allow_missing_files=args.skip_missing_files,
            )
        if "test" not in dataset or len(dataset["test"]) == 0:
            raise DatasetFormatError(f"{args.dataset_name} has no test split to evaluate.")
        check_dataset_names(dataset["test"])
        add_class_names(model, sorted(set(dataset["test"]["category"])), args.model_name_or_path)
        submission_dir = check_benchmark_arguments(args, dataset, [output_dir, *local_paths(args.dataset_name)])
    # a bad test image or mask, NaN scores, a read-only or full disk: one line, and the folder is left as it was
    with usage_errors(DatasetFormatError, NonFiniteScoresError, OSError):
        with processes.output_folder(output_dir.resolve() if output_dir.is_symlink() else output_dir) as staging:
            per_category, mean = evaluate_model(
                model,
                processor,
                dataset["test"],
                device=device,
                batch_size=args.per_device_eval_batch_size,
                output_dir=staging,
                save_predictions=args.save_predictions,
                num_heatmaps=args.num_heatmaps,
                num_workers=args.dataloader_num_workers,
                decision_config=decision_config,
                category_metrics=benchmark_metrics(args, model, processor, dataset, device),
                processes=processes,
            )
            if not processes.is_main:  # the main process writes the output
                return {"per_category": per_category, "mean": mean}
            table = write_evaluation(staging, per_category, mean)
        write_benchmark_outputs(args, model, processor, dataset, device, submission_dir)
    print(table)
    return {"per_category": per_category, "mean": mean}


def local_paths(name: str) -> list[Path]:
    """`[Path(name)]` when `name` is an existing local path (a checkpoint or dataset folder); `[]` for a Hub id."""
    return [Path(name)] if Path(name).exists() else []


def cli(argv: list[str] | None = None) -> None:
    """`clipada eval` (alias `clipada-eval`, `python -m training.evaluation`)."""
    main(argv)


if __name__ == "__main__":
    cli()
