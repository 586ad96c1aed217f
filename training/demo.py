"""The offline main job: generate the demo dataset, train the SMOKE model on it, evaluate, print the table.

The smoke model is a small CLIP with RANDOM weights built locally (no download): its numbers only show that
training, evaluation and saving work end to end. Real runs start from `openai/clip-vit-base-patch16` (README).

Example:
    ```bash
    clipada demo --output_dir outputs/demo
    ```
"""

import argparse
import time
from pathlib import Path

from inference import predict
from inference.command_line import positive_int, threads_argument
from training import train
from training.demo_data import make_demo_dataset
from training.smoke_clip import build_smoke_clip

BANNER = """\
==========================================================================================
 SMOKE MODEL: a small CLIP with RANDOM weights, built offline. It is NOT a pretrained CLIP,
 and its metrics only prove that the pipeline runs. For real results use
 --model_name_or_path openai/clip-vit-base-patch16 (see README.md).
=========================================================================================="""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[threads_argument()])
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--max_train_steps", type=positive_int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    started = time.perf_counter()
    print(BANNER)
    output_dir = Path(args.output_dir)
    dataset_dir = make_demo_dataset(output_dir / "demo_dataset", seed=args.seed, overwrite=True)
    print(f"[demo] demo dataset (MVTec-AD layout) written to {dataset_dir}")
    clip_dir = build_smoke_clip(output_dir / "smoke_clip", seed=args.seed)
    print(f"[demo] smoke CLIP (random weights) written to {clip_dir}")
    metrics = train.main(
        [
            "--model_name_or_path",
            str(clip_dir),
            "--dataset_name",
            str(dataset_dir),
            "--output_dir",
            str(output_dir / "model"),
            "--max_train_steps",
            str(args.max_train_steps),
            "--per_device_train_batch_size",
            "8",
            "--learning_rate",
            "2e-3",
            "--checkpointing_steps",
            "100",
            # a larger calibration set than the default 10%: the demo has only 24 normal images per category
            "--calibration_fraction",
            "0.3",
            "--target_fpr",
            "0.05",
            "--seed",
            str(args.seed),
            "--overwrite_output_dir",  # the demo's own folder: a rerun of the demo replaces its earlier run
            *(["--num_threads", str(args.num_threads)] if args.num_threads else []),
        ]
    )
    examples = _example_images(dataset_dir)
    print(f"[demo] OK/NG for {len(examples)} test images with the thresholds calibrated at the end of training:")
    predict.main(
        [
            *map(str, examples),
            "--model_name_or_path",
            str(output_dir / "model"),
            "--output_dir",
            str(output_dir / "predictions"),
            "--overwrite_output_dir",
            *(["--num_threads", str(args.num_threads)] if args.num_threads else []),
        ]
    )
    print(BANNER)
    print(f"[demo] checkpoint, model card, metrics.json and heatmaps: {output_dir / 'model'}")
    print(f"[demo] OK/NG decisions: {output_dir / 'predictions' / 'predictions.csv'}")
    print(f"[demo] overlay pictures: {output_dir / 'predictions' / 'overlays'}/")
    print(f"[demo] wall time {time.perf_counter() - started:.0f} s")
    return metrics


def _example_images(dataset_dir: Path, per_folder: int = 1) -> list[Path]:
    """The first image of every test folder (good and each defect type) of every category."""
    folders = sorted(p for p in dataset_dir.glob("*/test/*") if p.is_dir())
    return [image for folder in folders for image in sorted(folder.glob("*.png"))[:per_folder]]


def cli(argv: list[str] | None = None) -> None:
    """`clipada demo` (alias `clipada-demo`, `python -m training.demo`)."""
    main(argv)


if __name__ == "__main__":
    cli()
