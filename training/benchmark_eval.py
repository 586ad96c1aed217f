"""`clipada eval`'s benchmark options: MVTec AD 2's SegF1 and submission folder, Real-IAD's sample-level metrics.

- A dataset with a ``validation`` split (MVTec AD 2): the model scores the validation images first, the threshold
  ``mean + 3 std`` of their pixel scores is taken per scenario (`training.submission.validation_thresholds`), and
  ``seg_f1`` at it joins each category's metrics.
- A test split with a ``sample_id`` column (Real-IAD): ``sample_image_auroc`` and ``sample_image_f1_max``, a part's
  score being the ``--sample_score`` (max or mean) of its views' scores.
- ``--write_submission DIR``: the private test sets' anomaly images in the server's layout (`training.submission`).

Example:
    ```bash
    clipada eval --model_name_or_path outputs/clipada-ad2 --dataset_name data/mvtec_ad2 --tile_size 448 \\
        --output_dir outputs/clipada-ad2-eval --write_submission outputs/ad2-submission
    ```
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inference.command_line import usage_errors
from training.metrics.dataset_metrics import category_metrics_factory
from training.metrics.sample_level import SAMPLE_REDUCTIONS
from training.submission import (
    SubmissionError,
    check_submission_dir,
    require_tifffile,
    validation_thresholds,
    write_submission,
)

VALIDATION_SPLIT = "validation"


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--sample_score`` and ``--write_submission`` to `clipada eval`'s parser."""
    parser.add_argument(
        "--sample_score",
        choices=SAMPLE_REDUCTIONS,
        default="max",
        help="Multi-view data (a sample_id column, Real-IAD): a part's score from its views' scores for "
        "sample_image_auroc (default max: a part is as anomalous as its worst view).",
    )
    parser.add_argument(
        "--write_submission",
        default=None,
        metavar="DIR",
        help="MVTec AD 2: also write the private test sets' anomaly images (float16 TIFF) and binarized maps (PNG, "
        "threshold mean + 3 std of the validation pixel scores) in the evaluation server's layout into DIR (new or "
        "empty).",
    )


def check_benchmark_arguments(args: argparse.Namespace, dataset, forbidden: list[Path]) -> Path | None:
    """The submission folder, checked before anything runs (None without ``--write_submission``).

    Raises:
        SubmissionError: The folder may not be written, or the dataset has no validation split to threshold with.
    """
    if args.write_submission is None:
        return None
    if VALIDATION_SPLIT not in dataset:
        raise SubmissionError(
            f"{args.dataset_name}: no validation split; --write_submission needs MVTec AD 2 as prepared by "
            "clipada prepare-dataset --dataset mvtec_ad2"
        )
    require_tifffile()
    return check_submission_dir(args.write_submission, forbidden)


def benchmark_metrics(args: argparse.Namespace, model, processor, dataset, device):
    """The `category_metrics` factory for `evaluate_model` (None when the dataset needs none); scores the validation
    images for the SegF1 thresholds when the dataset has them. The thresholds are kept on ``args.segf1_thresholds``,
    where `write_benchmark_outputs` binarizes the submission with the same ones."""
    args.segf1_thresholds = None
    if VALIDATION_SPLIT in dataset and len(dataset[VALIDATION_SPLIT]):
        with usage_errors(SubmissionError):
            args.segf1_thresholds = validation_thresholds(
                model, processor, dataset[VALIDATION_SPLIT], device, args.per_device_eval_batch_size
            )
    return category_metrics_factory(dataset["test"], args.segf1_thresholds, args.sample_score)


def write_benchmark_outputs(args: argparse.Namespace, model, processor, dataset, device, submission_dir) -> None:
    """Writes the submission folder when asked for, and says what it holds and what the server will miss."""
    if submission_dir is None:
        return
    with usage_errors(SubmissionError, OSError):
        thresholds = args.segf1_thresholds or {}
        if processor.resize_mode == "squash" and processor.tile_size is None:  # eval's maps: not the image's size
            thresholds = validation_thresholds(
                model, processor, dataset[VALIDATION_SPLIT], device, args.per_device_eval_batch_size, at_image_size=True
            )
        summary = write_submission(
            model, processor, dataset, submission_dir, thresholds, device, args.per_device_eval_batch_size
        )
    print(f"Submission: {summary['images']} anomaly images in {submission_dir}")
    if summary["missing"]:
        shown = ", ".join(summary["missing"][:4]) + (", ..." if len(summary["missing"]) > 4 else "")
        print(
            f"note: the evaluation server expects all eight scenarios and both private test sets; missing: {shown}",
            file=sys.stderr,
        )


__all__ = ["add_benchmark_arguments", "benchmark_metrics", "check_benchmark_arguments", "write_benchmark_outputs"]
