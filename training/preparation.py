"""A training run's set-up: model, data, optimizer and schedule built from the command line; resumes checkpoints.

Example:
    ```python
    >>> run = set_up(parse_args(argv), Accelerator())
    >>> run.max_steps, run.completed_steps
    ```
"""

import argparse
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch.optim.lr_scheduler import MultiStepLR
from transformers import PreTrainedModel

from processing import CLIPADAImageProcessor
from training.arguments import head_overrides
from training.calibration import hold_out_normal_images, resolves
from training.checkpointing import (
    CheckpointError,
    fingerprint_differences,
    load_checkpoint,
    read_training_state,
    resolve_checkpoint,
)
from training.data import DatasetFormatError, load_anomaly_dataset
from training.loader import build_train_dataloader
from training.models import build_model
from training.synthesis import SyntheticAnomalyGenerator

logger = get_logger(__name__)

LR_DECAY = 0.2
# `--mixed_precision`: the frozen CLIP is cast to this type once; the trained head and the optimizer stay fp32.
FROZEN_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass
class TrainingRun:
    """Everything `train_loop` needs, built by `set_up`."""

    accelerator: Accelerator
    model: PreTrainedModel
    processor: CLIPADAImageProcessor
    synthesizer: SyntheticAnomalyGenerator
    dataset: object  # the DatasetDict whose test split is evaluated at the end
    calibration_split: object  # held-out normal training images (a datasets.Dataset), or None
    dataloader: torch.utils.data.DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    fingerprint: dict
    batches_per_epoch: int
    steps_per_epoch: int
    max_steps: int
    completed_steps: int = 0
    log: list[dict] = dataclasses.field(default_factory=list)  # one entry per optimizer step run here


def build_scheduler(
    optimizer: torch.optim.Optimizer, milestones_epochs: list[int], steps_per_epoch: int
) -> MultiStepLR:
    """Step-wise learning rate: multiplied by 0.2 at each milestone epoch (stepped once per optimizer step)."""
    return MultiStepLR(optimizer, [epoch * steps_per_epoch for epoch in milestones_epochs], gamma=LR_DECAY)


def run_fingerprint(args: argparse.Namespace, model, dataset, num_processes: int) -> dict:
    """What shapes a run's weights; a checkpoint of a run with another fingerprint must not be resumed.

    The length of training (`--max_train_steps`, `--num_train_epochs`) is not in it: a run may be extended.
    """
    config = model.config
    split = dataset[args.train_split]
    return {
        "model_name_or_path": args.model_name_or_path,
        "model_type": config.model_type,
        "dataset_fingerprint": getattr(split, "_fingerprint", None),
        "train_split": args.train_split,
        "anomaly_source": args.anomaly_source,
        "train_images": len(split),
        "categories": sorted(set(split["category"])),
        "seed": args.seed,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "num_processes": num_processes,
        "optimizer": args.optimizer,
        "learning_rate": args.learning_rate,
        "adam_betas": [args.adam_beta1, args.adam_beta2],
        "weight_decay": args.weight_decay,
        "lr_milestones": list(args.lr_milestones),
        "image_size": args.image_size or config.vision_config.image_size,
        "mixed_precision": args.mixed_precision or "no",
        "texture_dir": args.texture_dir,
        "calibration_fraction": args.calibration_fraction,
        # recorded only below 1, so that runs from before the flag existed resume as before
        **({"train_fraction": args.train_fraction} if getattr(args, "train_fraction", 1.0) != 1.0 else {}),
        **{name: getattr(config, name) for name in config.head_field_names()},
    }


def select_train_fraction(split, fraction: float, seed: int):
    """Keeps `fraction` of every category's rows of the training part (the marginal-data study, paper Sec. 4).

    Per category, `max(1, round(fraction * n))` of its n rows are kept, drawn by a permutation seeded with `seed`;
    the kept rows stay in their original order.

    Args:
        split: The training part (`datasets.Dataset` with a `category` column), after the calibration hold-out.
        fraction: In (0, 1]; 1 returns `split` itself.
        seed: The draw's seed.

    Returns:
        The selected rows, a `datasets.Dataset`.

    Raises:
        ValueError: `fraction` outside (0, 1].
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"--train_fraction must lie in (0, 1], got {fraction}")
    if fraction == 1:
        return split
    rng = np.random.default_rng(seed)
    categories = np.asarray(split["category"])
    kept = []
    for category in sorted(set(categories.tolist())):
        rows = np.flatnonzero(categories == category)
        kept.extend(rng.permutation(rows)[: max(1, round(fraction * rows.size))].tolist())
    return split.select(np.sort(np.asarray(kept, dtype=np.int64)))


def set_up(args: argparse.Namespace, accelerator: Accelerator) -> TrainingRun:
    """Builds model, data, optimizer and scheduler; resumes when asked. Every error here is the user's input."""
    set_seed(args.seed)
    with accelerator.main_process_first():
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
        evaluation_dataset = dataset
        if args.eval_dataset_name and not args.skip_evaluation:
            evaluation_dataset = load_anomaly_dataset(
                args.eval_dataset_name, allow_missing_files=args.skip_missing_files
            )
    class_names = set(dataset[args.train_split]["category"])
    if "test" in evaluation_dataset:
        class_names |= set(evaluation_dataset["test"]["category"])
    model = build_model(args.model_name_or_path, head_overrides(args), args.model_type, sorted(class_names))
    if args.mixed_precision in FROZEN_DTYPES:  # cheaper than autocasting fp32 weights at every step
        model.clip.to(FROZEN_DTYPES[args.mixed_precision])
    image_size = args.image_size or model.config.vision_config.image_size
    processor = CLIPADAImageProcessor(size=image_size)
    synthesizer = SyntheticAnomalyGenerator(texture_dir=args.texture_dir, image_size=image_size)
    with accelerator.main_process_first():
        train_split, calibration_split = hold_out_normal_images(
            dataset[args.train_split], args.calibration_fraction, args.seed
        )
        if calibration_split is not None:
            _warn_if_calibration_unresolved(dataset[args.train_split], len(calibration_split), args)
        train_split = select_train_fraction(train_split, getattr(args, "train_fraction", 1.0), args.seed)
        try:
            dataloader = build_train_dataloader(
                train_split,
                processor,
                args.per_device_train_batch_size,
                args.dataloader_num_workers,
                with_masks=args.anomaly_source == "real",
            )
        except ValueError as error:
            raise DatasetFormatError(f"{args.dataset_name} ({args.train_split} split): {error}") from error

    optimizer_class = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[args.optimizer]
    optimizer = optimizer_class(
        [p for p in model.parameters() if p.requires_grad],
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.weight_decay,
    )
    batches_per_epoch = math.ceil(len(dataloader) / accelerator.num_processes)
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    # accelerate steps a prepared scheduler once per process for every optimizer step
    scheduler = build_scheduler(optimizer, args.lr_milestones, steps_per_epoch * accelerator.num_processes)
    model, optimizer, dataloader, scheduler = accelerator.prepare(model, optimizer, dataloader, scheduler)
    run = TrainingRun(
        accelerator=accelerator,
        model=model,
        processor=processor,
        synthesizer=synthesizer,
        dataset=evaluation_dataset,
        calibration_split=calibration_split,
        dataloader=dataloader,
        optimizer=optimizer,
        scheduler=scheduler,
        fingerprint=run_fingerprint(args, accelerator.unwrap_model(model), dataset, accelerator.num_processes),
        batches_per_epoch=batches_per_epoch,
        steps_per_epoch=steps_per_epoch,
        max_steps=max_steps,
    )
    if args.resume_from_checkpoint:
        checkpoint = resolve_checkpoint(args.output_dir, args.resume_from_checkpoint)
        _check_same_run(checkpoint, run.fingerprint, explicit=args.resume_from_checkpoint != "latest")
        accelerator.print(f"Resuming from {checkpoint}")
        run.completed_steps = load_checkpoint(accelerator, checkpoint, model, optimizer, scheduler)
    return run


def _warn_if_calibration_unresolved(split, num_held_out: int, args: argparse.Namespace) -> None:
    """Warns when the held-out normal images are fewer than 1 / --target_fpr: the rate is then not resolved (the
    threshold is little more than the largest held-out score)."""
    if resolves(num_held_out, args.target_fpr):
        return
    needed = math.ceil(1 / args.target_fpr - 1e-9)
    num_normal = int(np.sum(np.asarray(split["label"]) == 0))
    fraction = needed / num_normal if num_normal else math.inf
    change = (
        f"raise --calibration_fraction (now {args.calibration_fraction:g}) to about {fraction:.2g}"
        if fraction < 1
        else f"the {args.train_split} split has only {_normal_images(num_normal)}: collect more normal images"
    )
    logger.warning(
        f"The held-out calibration set has {_normal_images(num_held_out)}, fewer than the {needed} (1 / --target_fpr) "
        f"that a false-positive rate of {args.target_fpr:g} needs; they resolve rates down to 1/{num_held_out} = "
        f"{1 / num_held_out:.3g}, and the image threshold will sit near the largest held-out score. To resolve it, "
        f"{change}, or give a larger --target_fpr.",
        main_process_only=True,
    )


def _normal_images(count: int) -> str:
    return f"{count} normal image" + ("" if count == 1 else "s")


def _check_same_run(checkpoint: Path, fingerprint: dict, explicit: bool) -> None:
    """Refuses a checkpoint of a run with other settings; an explicitly named one is resumed with a warning."""
    differences = fingerprint_differences(read_training_state(checkpoint)["fingerprint"], fingerprint)
    if not differences:
        return
    listed = "; ".join(differences)
    if not explicit:
        raise CheckpointError(
            f"{checkpoint} belongs to a run with other settings ({listed}); use another --output_dir, or name "
            "the checkpoint folder in --resume_from_checkpoint to resume it anyway"
        )
    logger.warning(f"Resuming {checkpoint} although its run had other settings: {listed}", main_process_only=True)


__all__ = [
    "FROZEN_DTYPES",
    "LR_DECAY",
    "TrainingRun",
    "build_scheduler",
    "run_fingerprint",
    "select_train_fraction",
    "set_up",
]
