"""The training loop: steps with synthetic (or real) anomalies, checkpoints, preemption, the loss log.

A run always ends with a checkpoint of its last step (written before the end-of-run work), so a run stopped during
its calibration or final save resumes without training a step more. A checkpoint that is already at (or past)
the run's last step trains nothing.

Example:
    ```python
    >>> restore_log(args, run, checkpoint)  # on resume: the steps done before, for training_log.json
    >>> completed = train_loop(args, run)  # False when stopped by SIGTERM after writing a checkpoint
    ```
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from safetensors import SafetensorError
from tqdm.auto import tqdm

from processing import CLIPADAImageProcessor
from training.checkpointing import (
    CHECKPOINTS_DIR,
    CheckpointError,
    checkpoint_size,
    list_checkpoints,
    prune_checkpoints,
    read_training_state,
    save_checkpoint,
    trainable_state,
)
from training.preemption import PreemptionHandler
from training.preparation import TrainingRun
from training.synthesis import SyntheticAnomalyGenerator

logger = get_logger(__name__)


def synthesis_generator(seed: int, epoch: int, micro_batch_index: int) -> torch.Generator:
    """A generator for one micro-batch, seeded by (seed, epoch, its index in the global batch order).

    Anomalies then depend on the data order alone, not on how many processes share the work or on resuming:
    N processes and one process with N accumulation steps synthesise the same anomalies for the same images.
    """
    state = np.random.SeedSequence([seed, epoch, micro_batch_index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def train_loop(args: argparse.Namespace, run: TrainingRun, resumed_from: Path | None = None) -> bool:
    """Trains to `run.max_steps` and writes the checkpoint of the last step; returns False when stopped early by
    SIGTERM (after writing a checkpoint).

    Args:
        resumed_from: The checkpoint the run resumed from: `--checkpoints_total_limit` never removes it.

    Raises:
        CheckpointError: When the resumed checkpoint is past `run.max_steps`, or a checkpoint cannot be written.
    """
    if run.completed_steps > run.max_steps:
        raise CheckpointError(
            f"{resumed_from} is at step {run.completed_steps}, past this run's {run.max_steps} steps "
            "(--max_train_steps / --num_train_epochs); give at least as many steps to resume it"
        )
    accelerator, dataloader = run.accelerator, run.dataloader
    start_epoch, resume_batch = divmod(run.completed_steps * args.gradient_accumulation_steps, run.batches_per_epoch)
    num_epochs = math.ceil(run.max_steps / run.steps_per_epoch)
    _log_plan(accelerator, args, run, num_epochs)
    if run.completed_steps == run.max_steps:
        accelerator.print(f"All {run.max_steps} steps are done; finishing the run without training.")
        _save_last_step(args, run, resumed_from)
        return True
    bar = tqdm(
        total=run.max_steps,
        initial=run.completed_steps,
        disable=not accelerator.is_local_main_process,
        mininterval=1.0,
    )
    run.model.train()
    with bar, PreemptionHandler() as preemption:  # the bar is closed before an error's line is printed
        for epoch in range(start_epoch, num_epochs):
            dataloader.set_epoch(epoch)
            skip = resume_batch if epoch == start_epoch else 0
            epoch_loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
            for batch_index, batch in enumerate(epoch_loader, start=skip):
                micro_batch = batch_index * accelerator.num_processes + accelerator.process_index
                generator = synthesis_generator(args.seed, epoch, micro_batch)
                loss = training_step(
                    accelerator,
                    run.model,
                    run.optimizer,
                    run.scheduler,
                    run.processor,
                    run.synthesizer,
                    batch["pixels"],
                    generator,
                    masks=batch.get("masks"),
                    categories=batch["categories"],
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
                    _save(args, run, resumed_from)
                if preemption.requested(accelerator):
                    path = _save(args, run, resumed_from)
                    bar.close()
                    accelerator.print(f"SIGTERM: stopped after step {run.completed_steps}; resumable from {path}")
                    return False
                if run.completed_steps >= run.max_steps:
                    break
            if _is_checkpoint_step(args.checkpointing_steps, run.completed_steps, end_of_epoch=True):
                _save(args, run, resumed_from)
            if run.completed_steps >= run.max_steps:
                break
    _save_last_step(args, run, resumed_from)
    return True


def restore_log(args: argparse.Namespace, run: TrainingRun, checkpoint: Path) -> None:
    """On resume: `run.log` gets the steps done before `checkpoint` (kept in it; for a checkpoint of version 0.1,
    the entries of the run folder's `training_log.json` up to its step)."""
    log = read_training_state(checkpoint).get("log_history")
    if log is None:
        log = _earlier_log(Path(args.output_dir) / "training_log.json")
    run.log = [entry for entry in log if entry["step"] <= run.completed_steps]


def _earlier_log(path: Path) -> list[dict]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["log_history"]
        return [entry for entry in entries if isinstance(entry, dict) and isinstance(entry.get("step"), int)]
    except (OSError, ValueError, KeyError, TypeError):
        return []


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
    categories: list[str] | None = None,
) -> float:
    """Synthesise anomalies (unless real masks are given), forward with the masks, backward and (when gradients
    sync) one optimizer step.

    Args:
        images: `(B, 3, H, W)` uint8 images on the device: normal ones, or labelled ones with `masks`.
        generator: Seeds this micro-batch's synthetic anomalies.
        masks: `(B, H, W)` {0, 1} real masks of labelled images; None to synthesise anomalies.
        categories: The images' categories (families whose prompts name them need them).

    Returns:
        The loss of this micro-batch.
    """
    with accelerator.accumulate(model):
        if masks is None:
            images, masks = synthesizer(images.float() / 255, generator=generator)
        else:
            images, masks = images.float() / 255, masks.float()
        outputs = model(pixel_values=processor.normalize(images), labels=masks, categories=categories)
        accelerator.backward(outputs.loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return outputs.loss.item()


def _is_checkpoint_step(checkpointing_steps: str | None, step: int, end_of_epoch: bool) -> bool:
    if checkpointing_steps == "epoch":
        return end_of_epoch
    return not end_of_epoch and checkpointing_steps is not None and step % int(checkpointing_steps) == 0


def _save_last_step(args: argparse.Namespace, run: TrainingRun, resumed_from: Path | None) -> None:
    """The checkpoint of the last step, unless written already: a run stopped at its end resumes without training."""
    done = [path.name for path in list_checkpoints(args.output_dir)]
    if f"step_{run.completed_steps}" not in done:
        _save(args, run, resumed_from)


def _save(args: argparse.Namespace, run: TrainingRun, resumed_from: Path | None) -> Path:
    """Writes the checkpoint of `run.completed_steps`, then keeps only the newest `--checkpoints_total_limit`."""
    try:
        path = save_checkpoint(
            run.accelerator,
            args.output_dir,
            run.completed_steps,
            run.model,
            run.optimizer,
            run.scheduler,
            run.fingerprint,
            log_history=run.log,
        )
    except (OSError, SafetensorError) as error:  # e.g. a full disk; the earlier checkpoints are intact
        raise CheckpointError(_write_failure(args.output_dir, run, error)) from error
    if args.checkpoints_total_limit and run.accelerator.is_main_process:
        prune_checkpoints(args.output_dir, args.checkpoints_total_limit, protected=resumed_from)
    run.accelerator.wait_for_everyone()
    return path


def _write_failure(output_dir: str, run: TrainingRun, error: BaseException) -> str:
    folder = Path(output_dir) / CHECKPOINTS_DIR
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    latest = list_checkpoints(output_dir)
    kept = f"the latest complete checkpoint is {latest[-1]}" if latest else "no earlier checkpoint exists"
    size = checkpoint_size(run.accelerator.unwrap_model(run.model), run.optimizer)
    return (
        f"cannot write checkpoint step_{run.completed_steps} into {folder} ({reason}); nothing of it was kept and "
        f"{kept}; a checkpoint needs about {_megabytes(size)} free"
    )


def _megabytes(size: int) -> str:
    return f"{max(size / 2**20, 0.1):.1f} MB"


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


__all__ = ["check_replicas_in_sync", "restore_log", "synthesis_generator", "train_loop", "training_step"]
