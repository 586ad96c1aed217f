"""The end of a training run: calibration, the fp32 checkpoint, evaluation, the model card, the Hub upload.

The final model is written whole or not at all: model, processor, tokenizer, `calibration.json` and the model card go
into a staging folder `.partial_final/` inside the run folder and are moved into place only when all are written.
A full disk (or any other write error) removes the staging folder and leaves the run folder as it was, with the
checkpoint of the last step complete: `--resume_from_checkpoint latest` then finishes the run without training again.
The upload comes after the run is complete; when it fails (offline, no token, no network) the results stay, and the
error says how to push them later.

Example:
    ```python
    >>> metrics = finish(args, run, directory)  # on the main process: {"per_category": ..., "mean": ...} or None
    >>> directory.mark_finished()
    >>> push_results(args)  # with --push_to_hub
    ```
"""

import argparse
import json
import os
import shutil
from pathlib import Path

import torch
from accelerate.logging import get_logger
from safetensors import SafetensorError
from transformers import CLIPTokenizer, PreTrainedModel

from inference.atomic import replace_dir
from processing import CLIPADAImageProcessor
from training.calibrate import calibrate_model, format_calibration, write_calibration_report
from training.checkpointing import follow_umask, list_checkpoints
from training.evaluation import evaluate_model, write_evaluation
from training.hub import push_run
from training.loop import check_replicas_in_sync
from training.model_card import write_model_card
from training.models import load_frozen_clip_weights
from training.preparation import FROZEN_DTYPES, TrainingRun
from training.run_dir import STAGING, RunDirectory

logger = get_logger(__name__)

TRAINING_LOG = "training_log.json"
EVALUATION = "evaluation"


class FinishError(ValueError):
    """The end of a run could not be written (a full disk, a read-only folder); the message says what to do."""


class HubPushError(ValueError):
    """The upload failed; the run is complete and the message says how to push it later."""


def finish(args: argparse.Namespace, run: TrainingRun, directory: RunDirectory | None) -> dict | None:
    """Save model and processor, evaluate on the test split, write the model card (every process calls it).

    Args:
        directory: The claimed run folder (None on the other processes): records what is written before it is.

    Raises:
        FinishError: When a file cannot be written; the run folder then holds no part of the final model.
    """
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    check_replicas_in_sync(accelerator, run.model)
    metrics = None
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(run.model).eval()
        if args.mixed_precision in FROZEN_DTYPES:  # checkpoints, calibration and evaluation are always fp32
            model.clip.float().load_state_dict(load_frozen_clip_weights(args.model_name_or_path))
        output_dir = Path(args.output_dir)
        staging = output_dir / STAGING
        try:
            write_training_log(output_dir / TRAINING_LOG, run.log)
            metrics = _write_final_folder(args, run, model, staging, directory)
        except (OSError, SafetensorError) as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise FinishError(_write_failure(output_dir, model, error)) from error
    accelerator.wait_for_everyone()
    return metrics


def write_training_log(path: Path, log: list[dict]) -> None:
    """`training_log.json`: `{"log_history": [{"step", "loss", "lr"}, ...]}` of every step, written atomically."""
    temporary = path.with_name(f"{path.name}.tmp")
    temporary.write_text(json.dumps({"log_history": log}, indent=1) + "\n")
    os.replace(temporary, path)


def _write_final_folder(
    args: argparse.Namespace,
    run: TrainingRun,
    model: PreTrainedModel,
    staging: Path,
    directory: RunDirectory | None,
) -> dict | None:
    """Calibrates, saves and evaluates into `staging`, then moves its entries into the run folder."""
    output_dir = Path(args.output_dir)
    shutil.rmtree(staging, ignore_errors=True)  # of an earlier attempt
    staging.mkdir()
    if run.calibration_split is not None:
        calibration = calibrate_model(
            model,
            run.processor,
            run.calibration_split,
            device=run.accelerator.device,
            batch_size=args.per_device_eval_batch_size,
            target_image_fpr=args.target_fpr,
            target_pixel_fpr=args.target_pixel_fpr,
            seed=args.seed,
            split_name="the held-out normal training images",
        )  # also records the processor's input mode (`calibration_mode`); the processor is saved below
        write_calibration_report(staging, calibration, {"calibrated_on": "held-out normal train images"})
        print(format_calibration(calibration))
    model.save_pretrained(staging)
    run.processor.save_pretrained(staging)
    _save_tokenizer(args.model_name_or_path, staging)
    metrics = None
    if not args.skip_evaluation:
        if directory is not None:
            directory.record_entries([EVALUATION])
        metrics = evaluate_on_test_split(
            model,
            run.processor,
            run.dataset,
            run.accelerator.device,
            output_dir=output_dir / EVALUATION,
            batch_size=args.per_device_eval_batch_size,
            save_predictions=args.save_predictions,
            num_heatmaps=args.num_heatmaps,
        )
    write_model_card(staging, vars(args), metrics, name=str(output_dir))
    follow_umask(staging)
    names = sorted(path.name for path in staging.iterdir())
    if directory is not None:
        directory.record_entries(names)
    for name in names:
        _move_into_place(staging / name, output_dir / name)
    staging.rmdir()
    return metrics


def _move_into_place(source: Path, target: Path) -> None:
    if source.is_dir():
        replace_dir(source, target)
    else:
        os.replace(source, target)


def _write_failure(output_dir: Path, model: PreTrainedModel, error: BaseException) -> str:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    latest = list_checkpoints(output_dir)
    kept = (
        f"the checkpoint of the last step ({latest[-1]}) is complete: make room, then finish the run with "
        "--resume_from_checkpoint latest (no step is trained again)"
        if latest
        else "rerun it once there is room"
    )
    return (
        f"cannot write the final model into {output_dir} ({reason}); none of it was kept, the model needs about "
        f"{size / 2**20:.1f} MB free; {kept}"
    )


def push_results(args: argparse.Namespace) -> str:
    """Uploads the finished run folder (`--push_to_hub`); returns the commit URL.

    Raises:
        HubPushError: Offline, without a token, a refused repository id, a network error: the run is kept and the
            message gives the command that pushes it later.
    """
    try:
        url = push_run(args.output_dir, args.hub_model_id, token=args.hub_token)
    except (OSError, ValueError) as error:  # OfflineModeIsEnabled, HTTP errors, no token; HFValidationError
        raise HubPushError(
            f"could not push {args.output_dir} to the Hub as {args.hub_model_id} ({error}); the run is complete and "
            f"kept in {args.output_dir}: push it later with `python -m training.hub {args.output_dir} "
            f"{args.hub_model_id}`"
        ) from error
    logger.info(f"Pushed the model to {url}", main_process_only=True)
    return url


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


def _save_tokenizer(source: str, output_dir: Path) -> None:
    """Keeps the CLIP tokenizer with the checkpoint: a family whose prompts name categories needs it for new ones.
    A source without a tokenizer is a warning; a tokenizer that cannot be written is an error."""
    try:
        tokenizer = CLIPTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        logger.warning(f"No tokenizer saved with the checkpoint ({error}); new category names cannot be tokenised.")
        return
    tokenizer.save_pretrained(output_dir)


__all__ = [
    "EVALUATION",
    "STAGING",
    "TRAINING_LOG",
    "FinishError",
    "HubPushError",
    "evaluate_on_test_split",
    "finish",
    "push_results",
    "write_training_log",
]
