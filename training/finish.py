"""The end of a training run: calibration, the fp32 checkpoint, evaluation, the model card, the Hub upload.

Example:
    ```python
    >>> metrics = finish(args, run)  # on the main process: {"per_category": ..., "mean": ...} or None
    ```
"""

import argparse
import json
from pathlib import Path

import torch
from accelerate.logging import get_logger
from transformers import CLIPTokenizer, PreTrainedModel

from processing import CLIPADAImageProcessor
from training.calibrate import calibrate_model, format_calibration, write_calibration_report
from training.checkpointing import CHECKPOINTS_DIR
from training.evaluation import evaluate_model, write_evaluation
from training.hub import push_folder
from training.loop import check_replicas_in_sync
from training.model_card import write_model_card
from training.models import load_frozen_clip_weights
from training.preparation import FROZEN_DTYPES, TrainingRun

logger = get_logger(__name__)

TRAINING_LOG = "training_log.json"


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
                split_name="the held-out normal training images",
            )  # also records the processor's input mode (`calibration_mode`); the processor is saved below
            write_calibration_report(args.output_dir, calibration, {"calibrated_on": "held-out normal train images"})
            print(format_calibration(calibration))
        model.save_pretrained(args.output_dir)
        run.processor.save_pretrained(args.output_dir)
        _save_tokenizer(args.model_name_or_path, args.output_dir)
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


def _save_tokenizer(source: str, output_dir: str) -> None:
    """Keeps the CLIP tokenizer with the checkpoint: a family whose prompts name categories needs it for new ones."""
    try:
        CLIPTokenizer.from_pretrained(source).save_pretrained(output_dir)
    except (OSError, ValueError) as error:
        logger.warning(f"No tokenizer saved with the checkpoint ({error}); new category names cannot be tokenised.")


__all__ = ["TRAINING_LOG", "evaluate_on_test_split", "finish"]
