"""Train one model for all categories of a dataset with `accelerate` (one or many processes): CLIP-ADA or AnomalyCLIP.

Only the head trains (prompt vectors, projections, ...); CLIP stays frozen. With `--anomaly_source synthetic`
(CLIP-ADA's protocol, the default) every step turns the batch's normal images into DRAEM-style synthetic anomalies
on the device, so every epoch sees fresh ones; with `real` (the zero-shot protocol) the split's labelled images and
masks are used, e.g. another dataset's test split.
Checkpoints hold only the trainable weights, optimizer, scheduler, step and RNG states, and resume exactly.

Example:
    ```bash
    accelerate launch -m training.train --model_name_or_path openai/clip-vit-base-patch16 \\
        --dataset_name /data/mvtec_anomaly_detection --preset mvtec_ad --output_dir outputs/clipada-mvtec
    clipada-train --model_name_or_path CKPT --dataset_name user/mvtec-ad --max_train_steps 100
    ```
"""

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.optim.lr_scheduler import MultiStepLR
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from processing import CLIPADAImageProcessor
from training.arguments import head_overrides, parse_args
from training.calibrate import calibrate_model, format_calibration, write_calibration_report
from training.calibration import hold_out_normal_images
from training.checkpointing import (
    CHECKPOINTS_DIR,
    CheckpointError,
    fingerprint_differences,
    load_checkpoint,
    read_training_state,
    resolve_checkpoint,
    save_checkpoint,
    trainable_state,
)
from training.data import DatasetFormatError, load_anomaly_dataset
from training.evaluation import evaluate_model, write_evaluation
from training.hub import push_folder
from training.loader import build_train_dataloader
from training.model_card import write_model_card
from training.models import ModelLoadError, build_model, load_frozen_clip_weights
from training.preemption import PreemptionHandler
from training.run_dir import OutputDirError, RunDirectory
from training.synthesis import SyntheticAnomalyGenerator
from training.threads import configure_threads, default_num_threads

logger = get_logger(__name__)

LR_DECAY = 0.2
# `--mixed_precision`: the frozen CLIP is cast to this type once; the trained head and the optimizer stay fp32.
FROZEN_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TRAINING_LOG = "training_log.json"
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, as a process killed by it
# Errors a user can fix (bad input, a folder in use, a damaged checkpoint): one line and exit code 2.
USER_ERRORS = (DatasetFormatError, CheckpointError, ModelLoadError, OutputDirError, FileNotFoundError, ValueError)


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


def synthesis_generator(seed: int, epoch: int, micro_batch_index: int) -> torch.Generator:
    """A generator for one micro-batch, seeded by (seed, epoch, its index in the global batch order).

    Anomalies then depend on the data order alone, not on how many processes share the work or on resuming:
    N processes and one process with N accumulation steps synthesise the same anomalies for the same images.
    """
    state = np.random.SeedSequence([seed, epoch, micro_batch_index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


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
        **{name: getattr(config, name) for name in config.head_field_names()},
    }


# ---------------------------------------------------------------------------------------------- set-up


def set_up(args: argparse.Namespace, accelerator: Accelerator) -> TrainingRun:
    """Builds model, data, optimizer and scheduler; resumes when asked. Every error here is the user's input."""
    set_seed(args.seed)
    model = build_model(args.model_name_or_path, head_overrides(args), args.model_type)
    if args.mixed_precision in FROZEN_DTYPES:  # cheaper than autocasting fp32 weights at every step
        model.clip.to(FROZEN_DTYPES[args.mixed_precision])
    image_size = args.image_size or model.config.vision_config.image_size
    processor = CLIPADAImageProcessor(size=image_size)
    synthesizer = SyntheticAnomalyGenerator(texture_dir=args.texture_dir, image_size=image_size)
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
        train_split, calibration_split = hold_out_normal_images(
            dataset[args.train_split], args.calibration_fraction, args.seed
        )
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
        evaluation_dataset = dataset
        if args.eval_dataset_name and not args.skip_evaluation:
            evaluation_dataset = load_anomaly_dataset(
                args.eval_dataset_name, allow_missing_files=args.skip_missing_files
            )

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


# ---------------------------------------------------------------------------------------------- the training loop


def train_loop(args: argparse.Namespace, run: TrainingRun) -> bool:
    """Trains to `run.max_steps`; returns False when stopped early by SIGTERM (after writing a checkpoint)."""
    accelerator, dataloader = run.accelerator, run.dataloader
    start_epoch, resume_batch = divmod(run.completed_steps * args.gradient_accumulation_steps, run.batches_per_epoch)
    num_epochs = math.ceil(run.max_steps / run.steps_per_epoch)
    _log_plan(accelerator, args, run, num_epochs)
    bar = tqdm(
        total=run.max_steps,
        initial=run.completed_steps,
        disable=not accelerator.is_local_main_process,
        mininterval=1.0,
    )
    run.model.train()
    with PreemptionHandler() as preemption:
        for epoch in range(start_epoch, num_epochs):
            dataloader.set_epoch(epoch)
            skip = resume_batch if epoch == start_epoch else 0
            epoch_loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
            for batch_index, batch in enumerate(epoch_loader, start=skip):
                images, masks = batch if isinstance(batch, (tuple, list)) else (batch, None)
                micro_batch = batch_index * accelerator.num_processes + accelerator.process_index
                generator = synthesis_generator(args.seed, epoch, micro_batch)
                loss = training_step(
                    accelerator,
                    run.model,
                    run.optimizer,
                    run.scheduler,
                    run.processor,
                    run.synthesizer,
                    images,
                    generator,
                    masks,
                )
                if not accelerator.sync_gradients:
                    continue
                run.completed_steps += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                run.log.append({"step": run.completed_steps, "loss": loss, "lr": run.scheduler.get_last_lr()[0]})
                if args.with_tracking:
                    metrics = {"train/loss": loss, "train/lr": run.scheduler.get_last_lr()[0], "epoch": epoch}
                    accelerator.log(metrics, step=run.completed_steps)
                if _is_checkpoint_step(args.checkpointing_steps, run.completed_steps, end_of_epoch=False):
                    _save(args.output_dir, run)
                if preemption.requested(accelerator):
                    path = _save(args.output_dir, run)
                    accelerator.print(f"SIGTERM: stopped after step {run.completed_steps}; resumable from {path}")
                    bar.close()
                    return False
                if run.completed_steps >= run.max_steps:
                    break
            if _is_checkpoint_step(args.checkpointing_steps, run.completed_steps, end_of_epoch=True):
                _save(args.output_dir, run)
            if run.completed_steps >= run.max_steps:
                break
    bar.close()
    return True


def training_step(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    processor: CLIPADAImageProcessor,
    synthesizer: SyntheticAnomalyGenerator,
    images: torch.Tensor,
    generator: torch.Generator,
    masks: torch.Tensor | None = None,
) -> float:
    """Synthesise anomalies (unless real masks are given), forward with the masks, backward and (when gradients
    sync) one optimizer step.

    Args:
        images: `(B, 3, H, W)` uint8 images on the device: normal ones, or labelled ones with `masks`.
        generator: Seeds this micro-batch's synthetic anomalies.
        masks: `(B, H, W)` {0, 1} real masks of labelled images; None to synthesise anomalies.

    Returns:
        The loss of this micro-batch.
    """
    with accelerator.accumulate(model):
        if masks is None:
            images, masks = synthesizer(images.float() / 255, generator=generator)
        else:
            images, masks = images.float() / 255, masks.float()
        outputs = model(pixel_values=processor.normalize(images), labels=masks)
        accelerator.backward(outputs.loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return outputs.loss.item()


def _is_checkpoint_step(checkpointing_steps: str | None, step: int, end_of_epoch: bool) -> bool:
    if checkpointing_steps == "epoch":
        return end_of_epoch
    return not end_of_epoch and checkpointing_steps is not None and step % int(checkpointing_steps) == 0


def _save(output_dir: str, run: TrainingRun) -> Path:
    try:
        return save_checkpoint(
            run.accelerator,
            output_dir,
            run.completed_steps,
            run.model,
            run.optimizer,
            run.scheduler,
            run.fingerprint,
        )
    except OSError as error:  # e.g. a full disk; the earlier checkpoints are intact
        raise CheckpointError(
            f"cannot write checkpoint step_{run.completed_steps} into {Path(output_dir) / CHECKPOINTS_DIR} "
            f"({error.strerror or error}); the earlier checkpoints are intact"
        ) from error


def check_replicas_in_sync(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Raises when the processes' trainable weights differ (they must be replicas after every step)."""
    if accelerator.num_processes == 1:
        return
    flat = torch.cat([p.flatten().float() for p in trainable_state(accelerator.unwrap_model(model)).values()])
    gathered = accelerator.gather(flat[None].to(accelerator.device)).cpu()
    difference = (gathered - gathered[0]).abs().max().item()
    if difference != 0:
        raise RuntimeError(f"Trainable weights differ across processes (max difference {difference}).")
    accelerator.print(f"Trainable weights identical on all {accelerator.num_processes} processes.")


# ---------------------------------------------------------------------------------------------- the end of a run


def finish(args: argparse.Namespace, run: TrainingRun) -> dict | None:
    """Save model and processor, evaluate on the test split, write the model card, push when asked."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    check_replicas_in_sync(accelerator, run.model)
    metrics = None
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(run.model).eval()
        if args.mixed_precision in FROZEN_DTYPES:  # checkpoints, calibration and evaluation are always fp32
            model.clip.float().load_state_dict(load_frozen_clip_weights(args.model_name_or_path))
        (Path(args.output_dir) / TRAINING_LOG).write_text(json.dumps({"log_history": run.log}, indent=1) + "\n")
        if run.calibration_split is not None:
            calibration = calibrate_model(
                model,
                run.processor,
                run.calibration_split,
                device=accelerator.device,
                batch_size=args.per_device_eval_batch_size,
                target_image_fpr=args.target_fpr,
                target_pixel_fpr=args.target_pixel_fpr,
                seed=args.seed,
            )
            write_calibration_report(args.output_dir, calibration, {"calibrated_on": "held-out normal train images"})
            print(format_calibration(calibration))
        model.save_pretrained(args.output_dir)
        run.processor.save_pretrained(args.output_dir)
        if not args.skip_evaluation:
            metrics = evaluate_on_test_split(
                model,
                run.processor,
                run.dataset,
                accelerator.device,
                output_dir=Path(args.output_dir) / "evaluation",
                batch_size=args.per_device_eval_batch_size,
                save_predictions=args.save_predictions,
                num_heatmaps=args.num_heatmaps,
            )
        write_model_card(args.output_dir, vars(args), metrics)
        if args.push_to_hub:
            url = push_folder(
                args.output_dir,
                args.hub_model_id,
                token=args.hub_token,
                excluded=(f"{CHECKPOINTS_DIR}/", "clipada/", "runs/", "evaluation/predictions/", ".clipada_run"),
                commit_message="Upload CLIP-ADA model",
            )
            logger.info(f"Pushed the model to {url}", main_process_only=True)
    accelerator.wait_for_everyone()
    return metrics


def evaluate_on_test_split(
    model: PreTrainedModel,
    processor: CLIPADAImageProcessor,
    dataset,
    device: torch.device,
    output_dir: Path,
    batch_size: int,
    save_predictions: bool,
    num_heatmaps: int,
) -> dict | None:
    """Evaluates on `dataset["test"]` into `output_dir`, prints the table; None when there is no test split."""
    if "test" not in dataset or len(dataset["test"]) == 0:
        logger.warning("No test split: skipping evaluation.")
        return None
    per_category, mean = evaluate_model(
        model,
        processor,
        dataset["test"],
        device=device,
        batch_size=batch_size,
        output_dir=output_dir,
        save_predictions=save_predictions,
        num_heatmaps=num_heatmaps,
    )
    print(write_evaluation(output_dir, per_category, mean))
    return {"per_category": per_category, "mean": mean}


def _log_plan(accelerator: Accelerator, args: argparse.Namespace, run: TrainingRun, num_epochs: int) -> None:
    unwrapped = accelerator.unwrap_model(run.model)
    trainable = sum(p.numel() for p in unwrapped.parameters() if p.requires_grad)
    logger.info(
        f"***** Training {unwrapped.config.model_type} ***** images={len(run.dataloader.dataset)} epochs={num_epochs} "
        f"steps={run.max_steps} batch/device={args.per_device_train_batch_size} "
        f"processes={accelerator.num_processes} accumulation={args.gradient_accumulation_steps} "
        f"threads={torch.get_num_threads()} "
        f"trainable_parameters={trainable:,} anomalies={args.anomaly_source} split={args.train_split}",
        main_process_only=True,
    )


def _loggable(config: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in config.items()}


# ---------------------------------------------------------------------------------------------- entry point


def train(args: argparse.Namespace) -> dict | None:
    """Runs the whole job; returns the evaluation metrics on the main process (None elsewhere or when skipped).

    User errors of the set-up phase, and a checkpoint that cannot be written, exit with code 2 and one line; a
    failure inside a training step keeps its traceback. SIGTERM exits with code 143 after writing a checkpoint.
    """
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to if args.with_tracking else None,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        # Without CUDA, `accelerate launch --multi_gpu` would start independent processes; cpu=True makes them
        # one gloo process group instead.
        cpu=not torch.cuda.is_available(),
    )
    # processes of one machine share its cores
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    configure_threads(args.num_threads or max(1, default_num_threads() // local_processes))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger(__name__).setLevel(logging.INFO)
    with contextlib.ExitStack() as stack:
        if accelerator.is_main_process:  # one lock per run; the other processes write only into checkpoints
            _user_errors_exit(stack.enter_context, RunDirectory(args.output_dir, overwrite=args.overwrite_output_dir))
        accelerator.wait_for_everyone()
        run = _user_errors_exit(set_up, args, accelerator)
        if args.with_tracking:
            accelerator.init_trackers("clipada", config=_loggable(vars(args)))
        if not _user_errors_exit(train_loop, args, run, only=(CheckpointError,)):
            raise SystemExit(PREEMPTED_EXIT_CODE)  # the checkpoint is written; a scheduler requeues the job
        metrics = finish(args, run)
        if args.with_tracking:
            accelerator.end_training()
        return metrics


def _user_errors_exit(function, *arguments, only: tuple[type[BaseException], ...] = USER_ERRORS):
    try:
        return function(*arguments)
    except only as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    try:
        return train(args)
    except KeyboardInterrupt:
        print(
            f"interrupted: training stopped; resume with --resume_from_checkpoint latest "
            f"(checkpoints in {Path(args.output_dir) / CHECKPOINTS_DIR})",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def cli() -> None:
    """Console script `clipada-train` and `python -m training.train`."""
    main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # torch 2.13 sometimes aborts one rank during interpreter teardown ("terminate called without an active
        # exception") after all work is done; everything is saved and flushed, so leave without that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    cli()
