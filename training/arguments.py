"""The command line of `training.train`: HF argument names, the paper's presets and the model-config overrides.

Example:
    ```python
    >>> args = parse_args(["--dataset_name", "data/mvtec", "--output_dir", "out", "--preset", "mvtec_ad"])
    >>> args.num_train_epochs, args.per_device_train_batch_size, args.lr_milestones
    (800, 16, [400, 700])
    ```
"""

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from inference.command_line import (
    finite_float,
    non_negative_int,
    open_unit_interval,
    overwrite_argument,
    positive_int,
    threads_argument,
)
from inference.families import FAMILIES

# The papers' schedules. CLIP-ADA (METHOD.md): epochs, batch size and the epochs where the learning rate is x0.2.
# AnomalyCLIP (its official scripts, the same in both directions): trained on one dataset's labelled test split,
# evaluated zero-shot on another; 15 epochs, Adam (0.5, 0.999) at 1e-3, batch 8, 518 px, seed 111.
_ANOMALYCLIP = {
    "model_type": "anomalyclip",
    "train_split": "test",
    "anomaly_source": "real",
    "num_train_epochs": 15,
    "per_device_train_batch_size": 8,
    "learning_rate": 1e-3,
    "optimizer": "adam",
    "adam_beta1": 0.5,
    "adam_beta2": 0.999,
    "image_size": 518,
    "seed": 111,
    "calibration_fraction": 0.0,
}
# AdaCLIP (its official scripts): the same zero-shot protocol; AdamW (0.5, 0.999) at 1e-2 with weight decay 0.01,
# 5 epochs, batch 1 (ours trains any batch size: per-image gradients verified equal at batch 3), 518 px, seed 111.
_ADACLIP = {
    **_ANOMALYCLIP,
    "model_type": "adaclip",
    "num_train_epochs": 5,
    "per_device_train_batch_size": 1,
    "learning_rate": 1e-2,
    "optimizer": "adamw",
    "weight_decay": 0.01,
}
# The benchmarks of 2025-26 (MVTec AD 2, Real-IAD, BTAD, MPDD): CLIP-ADA's paper trained on none of them, so these
# schedules are ours, not the paper's: the small MVTec-like sets (BTAD about 1,800 and MPDD about 900 training images)
# take MVTec-AD's, MVTec AD 2 (a few thousand high-resolution training images) VisA's, and Real-IAD (about 150,000
# images, some 15x VisA) 40 epochs at batch 64, far fewer epochs for the larger set. High-resolution MVTec AD 2 and
# Real-IAD train at the CLIP's input size and are evaluated with tiles / letterbox (README, "Benchmarks of 2025-26").
_MVTEC_SCHEDULE = {"num_train_epochs": 800, "per_device_train_batch_size": 16, "lr_milestones": [400, 700]}
_VISA_SCHEDULE = {"num_train_epochs": 500, "per_device_train_batch_size": 64, "lr_milestones": [250]}
PRESETS = {
    "mvtec_ad": _MVTEC_SCHEDULE,
    "visa": _VISA_SCHEDULE,
    "mvtec_ad2": _VISA_SCHEDULE,
    "real_iad": {"num_train_epochs": 40, "per_device_train_batch_size": 64, "lr_milestones": [20]},
    "btad": _MVTEC_SCHEDULE,
    "mpdd": _MVTEC_SCHEDULE,
    "anomalyclip_train_on_mvtec_ad": _ANOMALYCLIP,  # then --eval_dataset_name VisA
    "anomalyclip_train_on_visa": _ANOMALYCLIP,  # then --eval_dataset_name MVTec-AD
    "adaclip_train_on_mvtec_ad": _ADACLIP,
    "adaclip_train_on_visa": _ADACLIP,
}
# Flags a preset may set; an explicit flag always wins.
DEFAULTS = {
    "model_type": "clipada",
    "train_split": "train",
    "anomaly_source": "synthetic",
    "num_train_epochs": 10,
    "per_device_train_batch_size": 16,
    "learning_rate": 1e-3,
    "optimizer": "adamw",
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "weight_decay": 0.0,
    "lr_milestones": [],
    "image_size": None,
    "seed": 42,
    "calibration_fraction": 0.1,
}
# Head fields that `from_clip` fills from the tokenizer: not user settings.
_DERIVED_HEAD_FIELDS = (
    "prompt_token_ids",
    "prompt_insert_position",
    "normal_prompt_token_ids",
    "abnormal_prompt_token_ids",
)


def overridable_head_fields(model_type: str) -> dict[str, dict[str, Any]]:
    """The head fields of `model_type`'s config a user may set on the command line, as `add_argument` keywords."""
    config_class = FAMILIES[model_type].config_class
    field_types = {field.name: field.type for field in dataclasses.fields(config_class)}
    return {
        name: _argument_kind(field_types[name])
        for name in config_class.head_field_names()
        if name not in _DERIVED_HEAD_FIELDS
    }


def _argument_kind(annotation: Any) -> dict[str, Any]:
    """`int | None` -> int, `float | int` -> float, `bool` -> --[no-]flag, `str` -> str, `list[int]` -> 1+ ints."""
    members = set(typing.get_args(annotation)) if isinstance(annotation, types.UnionType) else {annotation}
    for member in members:
        if typing.get_origin(member) is list:
            return {"type": typing.get_args(member)[0], "nargs": "+"}
    for candidate in (bool, float, int, str):
        if candidate in members:
            return {"action": argparse.BooleanOptionalAction} if candidate is bool else {"type": candidate}
    raise TypeError(f"no command-line type for {annotation!r}")


def _model_type(argv: list[str] | None) -> str:
    """The family whose head flags the command line takes: --model_type, the preset's, or a checkpoint's own."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model_type", choices=sorted(FAMILIES), default=None)
    parser.add_argument("--model_name_or_path", default="")
    parser.add_argument("--preset", default=None)
    known, _ = parser.parse_known_args(argv)
    config_file = Path(known.model_name_or_path) / "config.json"
    if known.model_type is None and config_file.is_file():
        try:
            saved = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
        except (ValueError, UnicodeDecodeError):
            saved = None  # reported by the model loader, with the file's name
        if saved in FAMILIES:
            return saved
    return known.model_type or PRESETS.get(known.preset, {}).get("model_type") or DEFAULTS["model_type"]


def build_parser(model_type: str = "clipada") -> argparse.ArgumentParser:
    """The full command line, with the head flags of `model_type`."""
    overwrite = overwrite_argument("a folder that is not a CLIP-ADA run (its README.md / config.json)")
    parser = argparse.ArgumentParser(
        description="Train one anomaly-detection model for all categories of a dataset.",
        parents=[overwrite, threads_argument(" Per process: the processes of one machine share the cores.")],
    )
    parser.add_argument(
        "--model_name_or_path",
        default="openai/clip-vit-base-patch16",
        help="A CLIP checkpoint (Hub id or folder) to start from, or a checkpoint of this library to continue.",
    )
    parser.add_argument(
        "--model_type",
        choices=sorted(FAMILIES),
        default=None,
        help="The model family to train on a CLIP (default clipada; a checkpoint of ours keeps its own).",
    )
    parser.add_argument(
        "--dataset_name",
        required=True,
        help="A raw MVTec-AD / VisA folder, a folder saved by training.prepare_dataset, or a Hub id.",
    )
    parser.add_argument(
        "--dataset",
        choices=["mvtec_ad", "visa", "folder"],
        default=None,
        help="Layout of a raw folder, when not inferred ('folder': your own images, masks optional).",
    )
    parser.add_argument("--categories", nargs="+", default=None, help="Train on these categories only.")
    parser.add_argument(
        "--train_split",
        default=None,
        help="The split to train on (default train; the zero-shot protocol trains on another dataset's test split).",
    )
    parser.add_argument(
        "--anomaly_source",
        choices=["synthetic", "real"],
        default=None,
        help="synthetic (default): normal images with DRAEM-style anomalies made in every step (CLIP-ADA's "
        "protocol); real: the split's own labelled images and masks (the zero-shot protocol).",
    )
    parser.add_argument(
        "--eval_dataset_name",
        default=None,
        help="Evaluate at the end on this dataset's test split (default: --dataset_name's), e.g. the other "
        "dataset of a zero-shot run.",
    )
    parser.add_argument(
        "--skip_missing_files",
        action="store_true",
        help="VisA: skip split-csv rows whose files are missing (a partial download).",
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="The paper's schedule: MVTec-AD 800 epochs, batch 16, lr x0.2 at 400 and 700; "
        "VisA 500 epochs, batch 64, lr x0.2 at 250. Ours for the datasets the paper did not train on: btad, mpdd "
        "as MVTec-AD; mvtec_ad2 as VisA; real_iad 40 epochs, batch 64, lr x0.2 at 20. Explicit flags win.",
    )
    parser.add_argument("--per_device_train_batch_size", type=positive_int, default=None, help="Default 16.")
    parser.add_argument("--per_device_eval_batch_size", type=positive_int, default=16)
    parser.add_argument(
        "--learning_rate",
        type=finite_float,
        default=None,
        help="Learning rate, default 1e-3 (CLIP-ADA's value was lost in the paper's text; 1e-3 suits the head).",
    )
    parser.add_argument("--optimizer", choices=["adamw", "adam"], default=None, help="Default adamw.")
    parser.add_argument("--adam_beta1", type=finite_float, default=None, help="Default 0.9.")
    parser.add_argument("--adam_beta2", type=finite_float, default=None, help="Default 0.999.")
    parser.add_argument("--weight_decay", type=finite_float, default=None, help="Default 0.")
    parser.add_argument("--num_train_epochs", type=positive_int, default=None, help="Default 10.")
    parser.add_argument(
        "--max_train_steps", type=positive_int, default=None, help="Overrides --num_train_epochs when set."
    )
    parser.add_argument("--gradient_accumulation_steps", type=positive_int, default=1)
    parser.add_argument(
        "--lr_milestones", type=positive_int, nargs="*", default=None, help="Epochs at which the learning rate is x0.2."
    )
    parser.add_argument(
        "--image_size",
        type=positive_int,
        default=None,
        help="Input resolution (default: the CLIP's own, 224 for ViT-B/16).",
    )
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    parser.add_argument("--seed", type=int, default=None, help="Default 42.")
    parser.add_argument(
        "--checkpointing_steps", default=None, help="Save a resumable checkpoint every N optimizer steps, or 'epoch'."
    )
    parser.add_argument(
        "--checkpoints_total_limit",
        type=positive_int,
        default=None,
        help="Keep only the newest N checkpoints (never the one the run resumed from). Default: keep all.",
    )
    parser.add_argument(
        "--num_processes",
        type=positive_int,
        default=None,
        help="Start this many training processes with accelerate (one per GPU; gloo processes on a CPU), instead of "
        "`accelerate launch --multi_gpu --num_processes N -m training.train ...`.",
    )
    parser.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="A checkpoint folder, or 'latest'. A checkpoint of a run with other settings is refused; an explicit "
        "folder is then resumed anyway, with a warning naming the differences.",
    )
    parser.add_argument("--with_tracking", action="store_true", help="Log loss and learning rate.")
    parser.add_argument("--report_to", default="tensorboard")
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    parser.add_argument("--hub_token", default=None)
    parser.add_argument(
        "--texture_dir",
        default=None,
        help="Folder of anomaly-source textures (DTD in the paper). Default: procedural textures and other images "
        "of the batch (no download).",
    )
    parser.add_argument("--dataloader_num_workers", type=non_negative_int, default=0)
    parser.add_argument("--skip_evaluation", action="store_true", help="Do not evaluate on the test split at the end.")
    parser.add_argument(
        "--calibration_fraction",
        type=finite_float,
        default=None,
        help="Fraction of each category's normal training images held out (seeded, never trained on) to calibrate "
        "the OK/NG thresholds at the end of the run; 0 disables calibration. Default 0.1.",
    )
    parser.add_argument(
        "--train_fraction",
        type=finite_float,
        default=1.0,
        help="Train on this fraction of each category's training images (after the calibration hold-out; seeded by "
        "--seed, at least one image per category): the paper's marginal-data study trains on 0.1 to 0.5. Default 1.",
    )
    parser.add_argument(
        "--target_fpr", type=open_unit_interval, default=0.01, help="Calibration: false-positive rate of images."
    )
    parser.add_argument(
        "--target_pixel_fpr", type=open_unit_interval, default=0.01, help="Calibration: false-positive rate of pixels."
    )
    parser.add_argument(
        "--num_heatmaps", type=non_negative_int, default=4, help="Heatmap PNGs per category at the end."
    )
    parser.add_argument("--save_predictions", action="store_true")
    title = FAMILIES[model_type].config_class.__name__
    head = parser.add_argument_group(f"{title} overrides (see the config's documentation)")
    for name, kind in overridable_head_fields(model_type).items():
        head.add_argument(f"--{name}", default=None, **kind)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses and checks the arguments; fills the preset's (or the default) schedule where no flag was given."""
    model_type = _model_type(argv)
    parser = build_parser(model_type)
    args = parser.parse_args(argv)
    if args.model_type not in (None, model_type):
        parser.error(f"--model_type {args.model_type}: {args.model_name_or_path} is a {model_type} checkpoint")
    args.model_type = model_type
    preset = PRESETS.get(args.preset, {})
    for name, default in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, preset.get(name, default))
    # the flags' types refuse the rest (counts of at least 1, finite numbers, rates in (0, 1))
    checks = {
        "learning_rate": (args.learning_rate > 0, "must be positive"),
        "adam_beta1": (0 <= args.adam_beta1 < 1, "must lie in [0, 1)"),
        "adam_beta2": (0 <= args.adam_beta2 < 1, "must lie in [0, 1)"),
        "weight_decay": (args.weight_decay >= 0, "must be at least 0"),
        "calibration_fraction": (0 <= args.calibration_fraction < 1, "must lie in [0, 1)"),
        "train_fraction": (0 < args.train_fraction <= 1, "must lie in (0, 1]"),
    }
    for name, (valid, rule) in checks.items():
        if not valid:
            parser.error(f"--{name} {rule}, got {getattr(args, name)}")
    steps = args.checkpointing_steps
    if steps not in (None, "epoch") and not (str(steps).isdigit() and int(steps) >= 1):
        parser.error(f"--checkpointing_steps must be a number of steps (>= 1) or 'epoch', got {steps!r}")
    if args.train_split == "test" and not args.eval_dataset_name and not args.skip_evaluation:
        parser.error(
            "--train_split test would evaluate on the images it trains on: name the dataset to evaluate on with "
            "--eval_dataset_name (the zero-shot protocol), or pass --skip_evaluation"
        )
    if args.push_to_hub and not args.hub_model_id:
        args.hub_model_id = Path(args.output_dir).resolve().name
    return args


def head_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given on the command line."""
    fields = overridable_head_fields(args.model_type)
    return {name: getattr(args, name) for name in fields if getattr(args, name) is not None}


__all__ = ["DEFAULTS", "PRESETS", "build_parser", "head_overrides", "overridable_head_fields", "parse_args"]
