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
    clipada train --model_name_or_path CKPT --dataset_name user/mvtec-ad --max_train_steps 100
    ```
"""

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration

from inference.command_line import usage_errors
from inference.devices import configure_threads, default_num_threads
from inference.loading import ModelLoadError
from training.arguments import parse_args
from training.checkpointing import CHECKPOINTS_DIR, CheckpointError
from training.data import DatasetFormatError
from training.finish import finish
from training.loop import train_loop
from training.preparation import set_up
from training.run_dir import OutputDirError, RunDirectory

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, as a process killed by it
# Errors a user can fix (bad input, a folder in use, a damaged checkpoint): one line and exit code 2.
USER_ERRORS = (DatasetFormatError, CheckpointError, ModelLoadError, OutputDirError, FileNotFoundError, ValueError)


def _loggable(config: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in config.items()}


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
    logging.getLogger("training").setLevel(logging.INFO)  # the run plan and the Hub upload
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
    with usage_errors(*only):
        return function(*arguments)


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


def cli(argv: list[str] | None = None) -> None:
    """`clipada train` (alias `clipada-train`, `python -m training.train`)."""
    main(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # torch 2.13 sometimes aborts one rank during interpreter teardown ("terminate called without an active
        # exception") after all work is done; everything is saved and flushed, so leave without that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


__all__ = ["PREEMPTED_EXIT_CODE", "USER_ERRORS", "cli", "main", "parse_args", "train"]


if __name__ == "__main__":
    cli()
