"""`clipada <command> [args]`: one command line for training, evaluation, calibration, prediction, export and the app.

Each command lives in its own module and is imported only when chosen, so `clipada predict --backend onnxruntime`
loads neither torch nor training code. Everything after the command's name is the command's own: `clipada predict
--help` shows predict's flags. The older scripts (`clipada-train`, `clipada-predict`, ...) and `python -m <module>`
remain as aliases.

Example:
    ```bash
    clipada --help
    clipada train --dataset_name data/mvtec --output_dir outputs/run --preset mvtec_ad
    clipada predict part.png --model_name_or_path outputs/run --output_dir outputs/predictions
    ```
"""

import argparse
import functools
import importlib
import sys
from collections.abc import Sequence
from types import SimpleNamespace

from inference.command_line import missing_extras

# name: (module, one-line description). Each module's `cli(argv)` runs the command and sets its exit code.
COMMANDS = {
    "train": ("training.train", "Train a model for all categories of a dataset (accelerate, one or many processes)."),
    "eval": ("training.evaluation", "Evaluate a checkpoint per category: metrics.json, a Markdown table, heatmaps."),
    "calibrate": ("training.calibrate", "Calibrate a checkpoint's OK/NG thresholds on normal images."),
    "predict": ("inference.predict.command", "Score images: OK/NG rows, overlays and maps (exit 1 if any failed)."),
    "export": ("training.int8_gate", "Export a checkpoint to ONNX or OpenVINO (INT8 too), to serve without PyTorch."),
    "app": ("inference.app.command", "Serve the inspection web app, or write a Hub Space folder."),
    "serve": ("inference.serve.command", "Serve a model over the Open Inference Protocol (KServe v2) on Ray Serve."),
    "prepare-dataset": ("training.prepare_dataset", "Save a benchmark download or your own images as a dataset."),
    "demo": ("training.demo", "Offline smoke run: demo data, a random tiny CLIP, train, evaluate, predict."),
    "convert-official": (
        "training.convert_official",
        "Convert a released AnomalyCLIP or AdaCLIP weight file (.pth) into a checkpoint of this library.",
    ),
    "fit-reference": (
        "training.fit_reference",
        "Fit a checkpoint's few-shot reference memory on k normal training images per category (no training).",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The umbrella's own parser: the command's name only (its arguments go to the command unparsed)."""
    parser = argparse.ArgumentParser(
        prog="clipada",
        description="CLIP-ADA anomaly detection: train, evaluate, calibrate, predict, export and serve.",
        epilog="Run `clipada <command> --help` for a command's own options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True, title="commands")
    for name, (_, summary) in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)  # the command's own parser answers --help
    return parser


def run_command(name: str, argv: Sequence[str]) -> None:
    """Imports the command's module and runs its `cli`, with usage and errors naming `clipada <name>`; a missing
    optional package (torch where no extra brought it) is one line naming the extra to install, exit status 2;
    Ctrl-C is one line and exit status 130 (128 + SIGINT, as shells report it)."""
    program = sys.argv[0] if sys.argv else None
    sys.argv[:1] = [f"clipada {name}"]  # argparse names the program after sys.argv[0]
    try:
        with missing_extras():  # every command handles its own bad input
            module = importlib.import_module(COMMANDS[name][0])
            module.cli(list(argv))
    except KeyboardInterrupt:
        print(f"\nclipada {name}: interrupted (Ctrl-C)", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        sys.argv[:1] = [] if program is None else [program]


def run_alias(name: str) -> None:
    """The console script `clipada-<name>`: `clipada <name>` with the script's arguments."""
    main([name, *sys.argv[1:]])


# the older console scripts (`clipada-train`, ...), as `training.cli:aliases.<name>` entry points
aliases = SimpleNamespace(**{name.replace("-", "_"): functools.partial(run_alias, name) for name in COMMANDS})


def main(argv: Sequence[str] | None = None) -> None:
    """`clipada <command> [args]`. A missing or unknown command is a usage error (exit status 2).

    Args:
        argv: The arguments without the program name; `sys.argv[1:]` when None.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = build_parser().parse_args(argv[:1]).command  # only the first word is the umbrella's
    run_command(command, argv[1:])


__all__ = ["COMMANDS", "aliases", "build_parser", "main", "run_alias", "run_command"]


if __name__ == "__main__":
    main()
