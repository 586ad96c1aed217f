"""Command lines of the tiny training runs the tests make."""

from pathlib import Path


def training_args(workspace: Path, output_dir: Path, *extra: str) -> list[str]:
    """The command line of a tiny training run on `workspace` into `output_dir`."""
    return [
        "--model_name_or_path",
        str(workspace / "clip"),
        "--dataset_name",
        str(workspace / "data"),
        "--output_dir",
        str(output_dir),
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "0.01",
        "--lr_milestones",
        "2",
        "--num_heatmaps",
        "2",
        *extra,
    ]
