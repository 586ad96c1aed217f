"""Fit a checkpoint's few-shot reference memory on k normal training images per category (clipada fit-reference).

No training: the shots are drawn per category with `--seed` from the normal images (label 0) of the training split,
their patch features go into the checkpoint (`modeling_clipada.reference_memory`), and the shot list (image paths
relative to the dataset root) is written beside it as `reference_shots.json`. `--shots 0` writes the checkpoint
without a memory. Any checkpoint of this library works, a converted official one included.

Example:
    ```bash
    clipada fit-reference --shots 4 --seed 0 --dataset_name data/mvtec --model_name_or_path outputs/run \\
        --output_dir outputs/run-4shot
    ```
"""

import argparse
import json
import random
from pathlib import Path

import torch

from inference.atomic import atomic_dir
from inference.command_line import (
    device_arguments,
    finite_float,
    non_negative_int,
    overwrite_argument,
    positive_int,
    usage_errors,
)
from inference.devices import configure_threads, resolve_device
from inference.loading import add_class_names, load_clipada_model, load_processor
from inference.output_folder import check_output_folder, write_marker
from modeling_clipada.configuration_common import REFERENCE_FUSIONS
from training.data import DatasetFormatError, load_anomaly_dataset

COMMAND = "clipada fit-reference"
SHOTS_FILE = "reference_shots.json"


def select_shots(split, shots: int, seed: int, categories: list[str] | None = None) -> dict[str, list[int]]:
    """The rows of `shots` normal images per category, drawn with `seed` (the same rows for the same seed).

    Each category draws from its own generator, seeded with `seed` and its name, among its normal rows ordered by
    `image_path`: a category's shots do not change when other categories are added or removed.

    Args:
        split: A dataset split with columns `label`, `category` and `image_path` (the training split).
        shots: Images per category (0: none).
        seed: The draw's seed.
        categories: The categories to draw for; all of the split's when None.

    Returns:
        `{category: [row index, ...]}`, categories sorted, rows in drawing order.

    Raises:
        ValueError: A category has fewer than `shots` normal images, or none at all.
    """
    labels, names, paths = split["label"], split["category"], split["image_path"]
    normal: dict[str, list[int]] = {}
    for row, (label, category) in enumerate(zip(labels, names)):
        if label == 0:
            normal.setdefault(category, []).append(row)
    selected = {}
    for category in sorted(categories or set(names)):
        rows = sorted(normal.get(category, []), key=lambda row: paths[row])
        if len(rows) < shots:
            raise ValueError(
                f"category {category!r} has {len(rows)} normal training images, fewer than --shots {shots}"
            )
        selected[category] = random.Random(f"{seed}:{category}").sample(rows, shots)
    return selected


def fit_from_split(
    model, processor, split, shots: int, seed: int, batch_size: int = 8, max_patches: int | None = None
) -> dict[str, list[str]]:
    """Fits `model`'s memory on `shots` normal images per category of `split`; returns the shot list.

    Every input the processor makes of a shot (one, or one per tile) goes into its category's memory.

    Args:
        model: A model of this library.
        processor: The checkpoint's image processor (in the mode the model will be used in).
        split: The training split (`image`, `label`, `category`, `image_path`).
        shots: Images per category; 0 empties the memory.
        seed: The draw's seed.
        batch_size: Images per forward pass.
        max_patches: At most this many patches per category, a random subset drawn with `seed`; None: all.

    Returns:
        `{category: [image_path, ...]}`.
    """
    rows = select_shots(split, shots, seed)
    pixel_values, categories, shot_list = [], [], {}
    for category, indices in rows.items():
        shot_list[category] = [split[index]["image_path"] for index in indices]
        for index in indices:
            inputs = processor(images=[split[index]["image"]], return_tensors="pt")["pixel_values"]
            pixel_values.extend(inputs)
            categories.extend([category] * len(inputs))
    device = next(model.parameters()).device
    pixel_values = [p.to(device) for p in pixel_values]
    model.fit_reference(pixel_values, categories, batch_size=batch_size, max_patches=max_patches, seed=seed)
    return shot_list


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        parents=[device_arguments(), overwrite_argument("a checkpoint an earlier clipada fit-reference wrote")],
    )
    parser.add_argument("--model_name_or_path", required=True, help="A checkpoint folder or Hub id of this library.")
    parser.add_argument("--dataset_name", required=True, help="A raw folder, a saved dataset or a Hub id.")
    parser.add_argument("--dataset", default=None, help="The raw layout (mvtec_ad, visa, folder, ...); inferred.")
    parser.add_argument("--categories", nargs="+", default=None)
    parser.add_argument("--skip_missing_files", action="store_true")
    parser.add_argument("--train_split", default="train", help="The split whose normal images are the shots.")
    parser.add_argument("--shots", type=non_negative_int, required=True, help="Normal images per category (0: none).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the per-category draw of the shots.")
    parser.add_argument("--output_dir", required=True, help="A new folder (or one an earlier fit-reference wrote).")
    parser.add_argument(
        "--max_memory_patches",
        type=positive_int,
        default=None,
        help="Keep at most this many patches per category (a random subset drawn with --seed) to bound the memory's "
        "size and search time; default all (the exact few-shot memory).",
    )
    parser.add_argument(
        "--reference_fusion",
        choices=REFERENCE_FUSIONS,
        default=None,
        help="How the memory's map joins the family's: mean (default) or memory alone. Default: the checkpoint's.",
    )
    parser.add_argument(
        "--reference_distance_scale",
        type=finite_float,
        default=None,
        help="The memory map is this x (1 - the highest cosine similarity): 1 (APRIL-GAN), 0.5 (WinCLIP+). "
        "Default: the checkpoint's.",
    )
    parser.add_argument("--per_device_eval_batch_size", type=positive_int, default=8)
    args = parser.parse_args(argv)
    if args.reference_distance_scale is not None and not 0 < args.reference_distance_scale <= 1:
        parser.error(f"--reference_distance_scale must lie in (0, 1], got {args.reference_distance_scale}")
    if args.train_split.startswith("test"):
        parser.error(f"--train_split {args.train_split!r}: the memory must never hold test images")
    return args


def main(argv: list[str] | None = None) -> dict[str, list[str]]:
    args = parse_args(argv)
    configure_threads(args.num_threads)
    output_dir = Path(args.output_dir)
    with usage_errors():  # a folder it may not write, a bad checkpoint or dataset, too few normal images
        inputs = [Path(name) for name in (args.model_name_or_path, args.dataset_name) if Path(name).exists()]
        check_output_folder(output_dir, COMMAND, overwrite=args.overwrite_output_dir, sources=inputs)
        model = load_clipada_model(args.model_name_or_path, dtype=getattr(torch, args.dtype))
        model.to(resolve_device(args.device))
        for name in ("reference_fusion", "reference_distance_scale"):
            if getattr(args, name) is not None:
                setattr(model.config, name, getattr(args, name))
        processor = load_processor(args.model_name_or_path)
        dataset = load_anomaly_dataset(
            args.dataset_name,
            dataset=args.dataset,
            categories=args.categories,
            allow_missing_files=args.skip_missing_files,
        )
        if args.train_split not in dataset:
            raise DatasetFormatError(
                f"{args.dataset_name} has no split {args.train_split!r} (it has {sorted(dataset)})"
            )
        split = dataset[args.train_split]
        add_class_names(model, sorted(set(split["category"])), args.model_name_or_path)
        batch_size, max_patches = args.per_device_eval_batch_size, args.max_memory_patches
        shot_list = fit_from_split(model, processor, split, args.shots, args.seed, batch_size, max_patches)
    record = {
        "model_name_or_path": args.model_name_or_path,
        "dataset_name": args.dataset_name,
        "split": args.train_split,
        "shots": args.shots,
        "seed": args.seed,
        "max_memory_patches": args.max_memory_patches,
        "images": shot_list,
    }
    with usage_errors(OSError):  # a read-only folder, a full disk: one line, nothing half written
        with atomic_dir(output_dir.resolve() if output_dir.is_symlink() else output_dir) as staging:
            model.save_pretrained(staging)
            processor.save_pretrained(staging)
            (staging / SHOTS_FILE).write_text(json.dumps(record, indent=2) + "\n")
            write_marker(staging, COMMAND)
    sizes = model.config.reference_memory_sizes or {}
    print(f"reference memory of {len(sizes)} categories ({args.shots} shots, seed {args.seed}) written to {output_dir}")
    return shot_list


def cli(argv: list[str] | None = None) -> None:
    """`clipada fit-reference` (alias `python -m training.fit_reference`)."""
    main(argv)


if __name__ == "__main__":
    cli()
