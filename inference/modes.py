"""How images become model inputs at inference: the `--resize_mode/--tile_size/--tile_overlap` flags of evaluation and
predict, which override the checkpoint's preprocessor_config.json, and THE rule for thresholds across modes.

Scores and maps change scale with the mode (squash, letterbox, tiles, input size), so calibrated thresholds hold only
in the mode they were calibrated in: `config.calibration_mode`, or for a checkpoint calibrated before it was recorded,
the mode of its own preprocessor_config.json. [`thresholds_fit`] compares that with the processor a command runs;
predict, the app and the runners of exports decide with the thresholds only when it does.

Example:
    ```python
    >>> add_inference_mode_arguments(parser)
    >>> args = parser.parse_args(["--tile_size", "224"])
    >>> own_processor = load_processor("outputs/run")                # before any override
    >>> processor = with_inference_mode(own_processor, args.resize_mode, args.tile_size, args.tile_overlap)
    >>> thresholds_fit(model.config, processor, own_processor)      # False for a squash-calibrated checkpoint
    False
    ```
"""

import argparse
import math
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from inference.loading import ModelLoadError, load_processor
from modeling_clipada.decisions import decision_field
from processing import CLIPADAImageProcessor
from processing.tiling import MAX_TILE_OVERLAP, MAX_TILE_SIZE, MIN_TILE_SIZE, RESIZE_MODES


def add_inference_mode_arguments(parser: argparse.ArgumentParser) -> None:
    """`--resize_mode`, `--tile_size`, `--tile_overlap`: override the checkpoint's preprocessor_config.json."""
    parser.add_argument(
        "--resize_mode",
        choices=RESIZE_MODES,
        help="squash (whole image to the input size) or letterbox (proportions kept).",
    )
    parser.add_argument(
        "--tile_size",
        type=int,
        help=f"Cut images into overlapping tiles of this many image pixels, {MIN_TILE_SIZE} to {MAX_TILE_SIZE} "
        "(0: no tiles).",
    )
    parser.add_argument(
        "--tile_overlap",
        type=float,
        help=f"Fraction of a tile neighbouring tiles share, in [0, {MAX_TILE_OVERLAP}].",
    )


def check_inference_mode_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses a `--tile_size` or `--tile_overlap` outside the processor's bounds with a usage error."""
    if args.tile_size is not None and args.tile_size != 0 and not MIN_TILE_SIZE <= args.tile_size <= MAX_TILE_SIZE:
        parser.error(
            f"--tile_size must be {MIN_TILE_SIZE} to {MAX_TILE_SIZE} image pixels (0 for no tiles), "
            f"got {args.tile_size}"
        )
    if args.tile_overlap is not None and not 0.0 <= args.tile_overlap <= MAX_TILE_OVERLAP:  # False for NaN too
        parser.error(
            f"--tile_overlap must lie in [0, {MAX_TILE_OVERLAP}] (a fraction of a tile), got {args.tile_overlap}"
        )


def with_inference_mode(
    processor: CLIPADAImageProcessor,
    resize_mode: str | None = None,
    tile_size: int | None = None,
    tile_overlap: float | None = None,
    note: bool = True,
) -> CLIPADAImageProcessor:
    """The processor with the given settings replaced (`None`: keep the checkpoint's; `tile_size=0`: no tiles).

    With `note`, a changed mode is said on stderr (scores change scale). Commands that decide (predict) pass
    `note=False` and say instead whether the thresholds fit the mode ([`thresholds_note`]).
    """
    overrides = {"resize_mode": resize_mode, "tile_size": tile_size, "tile_overlap": tile_overlap}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if not overrides:
        return processor
    settings = {**processor.to_dict(), **overrides}
    settings["tile_size"] = settings.get("tile_size") or None
    changed = type(processor).from_dict(settings)
    if note and describe_mode(changed) != describe_mode(processor):
        print(
            f"note: inputs are {describe_mode(changed)} instead of the checkpoint's {describe_mode(processor)}: scores "
            "and maps change scale, so thresholds calibrated in another mode are not applied in this one",
            file=sys.stderr,
        )
    return changed


def input_mode(processor: CLIPADAImageProcessor) -> dict:
    """How `processor` makes model inputs, as thresholds record it (`config.calibration_mode`):
    `{"resize_mode", "tile_size", "tile_overlap", "size": [height, width]}`; the overlap is None without tiles."""
    tiles = bool(processor.tile_size)
    return {
        "resize_mode": processor.resize_mode,
        "tile_size": processor.tile_size if tiles else None,
        "tile_overlap": float(processor.tile_overlap) if tiles else None,
        "size": [processor.size.height, processor.size.width],
    }


def describe_mode(processor: CLIPADAImageProcessor) -> str:
    """`squash`, `letterbox` or `tiles of N px (overlap F)`."""
    if processor.tile_size:
        return f"tiles of {processor.tile_size} px (overlap {processor.tile_overlap:g})"
    return processor.resize_mode


# The decision config of thresholds that do not fit the mode: no thresholds, so every decision is UNCALIBRATED
# (`modeling_clipada.decisions.resolve_thresholds` reads a mapping's missing fields as None); overrides still apply.
NO_THRESHOLDS = MappingProxyType({})


def calibration_mode(config: Any, own_processor: CLIPADAImageProcessor | None = None) -> dict | None:
    """The mode `config`'s thresholds were calibrated in: its `calibration_mode`, else (calibrated before it was
    recorded) the mode of `own_processor`, the checkpoint's own preprocessor_config.json before any override.

    Args:
        config: A decision config (a family's config, an export's runner) or a mapping of its fields.
        own_processor: The checkpoint's (or export's) processor as saved, or None when it has none.

    Returns:
        `{"resize_mode", "tile_size", "tile_overlap", "size"}` as [`input_mode`] writes it, or None when unknown.
    """
    recorded = decision_field(config, "calibration_mode")
    if recorded is not None:
        return dict(recorded)
    return None if own_processor is None else input_mode(own_processor)


def same_mode(first: Mapping, second: Mapping) -> bool:
    """Whether two modes ([`input_mode`]) make the same inputs: the same size and, with tiles, the same tile size and
    overlap (tiles are cut the same whatever `resize_mode`), else the same `resize_mode`."""
    if list(first.get("size") or ()) != list(second.get("size") or ()):
        return False
    tiles = first.get("tile_size") or None, second.get("tile_size") or None
    if tiles[0] != tiles[1]:
        return False
    if tiles[0] is not None:
        return math.isclose(float(first.get("tile_overlap") or 0.0), float(second.get("tile_overlap") or 0.0))
    return first.get("resize_mode", "squash") == second.get("resize_mode", "squash")


def has_thresholds(config: Any) -> bool:
    """Whether `config` holds any calibrated threshold (global or per category)."""
    return any(decision_field(config, name) is not None for name in ("image_threshold", "pixel_threshold")) or bool(
        decision_field(config, "category_thresholds")
    )


def thresholds_fit(config: Any, processor: CLIPADAImageProcessor, own_processor: CLIPADAImageProcessor | None) -> bool:
    """THE rule: whether `config`'s calibrated thresholds may decide images that `processor` makes inputs of.

    They may when the mode they were calibrated in ([`calibration_mode`]) is the processor's ([`same_mode`]); a
    config without thresholds fits any mode (there is nothing to misapply); thresholds whose mode is unknown (no
    `calibration_mode` and no preprocessor_config.json of its own) never fit.

    Args:
        config: The decision config (a backend's `decision_config`).
        processor: The processor the command runs, after `--resize_mode/--tile_size/--tile_overlap/--image_size`.
        own_processor: The checkpoint's processor before those overrides, or None when it has none.
    """
    if not has_thresholds(config):
        return True
    calibrated = calibration_mode(config, own_processor)
    return calibrated is not None and same_mode(calibrated, input_mode(processor))


def fitting_decision_config(
    config: Any, processor: CLIPADAImageProcessor, own_processor: CLIPADAImageProcessor | None
) -> Any:
    """`config` when its thresholds fit `processor`'s mode ([`thresholds_fit`]), else [`NO_THRESHOLDS`]."""
    return config if thresholds_fit(config, processor, own_processor) else NO_THRESHOLDS


def mode_words(mode: Mapping | None) -> str:
    """A mode ([`input_mode`]) in words: `squash at 224x224`, `tiles of 300 px (overlap 0.25) at 224x224`."""
    if mode is None:
        return "an unknown mode (no calibration_mode, no preprocessor_config.json)"
    size = "x".join(str(side) for side in mode.get("size") or ()) or "?"
    if mode.get("tile_size"):
        return f"tiles of {mode['tile_size']} px (overlap {float(mode.get('tile_overlap') or 0.0):g}) at {size}"
    return f"{mode.get('resize_mode', 'squash')} at {size}"


def calibrate_flags(processor: CLIPADAImageProcessor) -> str:
    """The `clipada calibrate` flags that calibrate in `processor`'s mode."""
    if processor.tile_size:
        return f"--tile_size {processor.tile_size} --tile_overlap {processor.tile_overlap:g}"
    return f"--resize_mode {processor.resize_mode} --tile_size 0"


def thresholds_note(
    config: Any,
    processor: CLIPADAImageProcessor,
    own_processor: CLIPADAImageProcessor | None,
    name: str,
    remedy: str | None = None,
) -> str:
    """Why `name`'s thresholds do not decide in `processor`'s mode: which mode they were calibrated in, which mode this
    run makes inputs in, and how to fix it (`remedy`; by default calibrate in this mode or pass thresholds); "" when
    they fit."""
    if thresholds_fit(config, processor, own_processor):
        return ""
    calibrated, running = calibration_mode(config, own_processor), input_mode(processor)
    if remedy is None:
        command = f"clipada calibrate --model_name_or_path {name} ... {calibrate_flags(processor)}"
        if calibrated is None or list(calibrated["size"]) != running["size"]:
            command += f" with a preprocessor_config.json of size {'x'.join(map(str, running['size']))}"
        remedy = f"calibrate in this mode ({command}), or pass --image_threshold and --pixel_threshold"
    return (
        f"the thresholds of {name} were calibrated for inputs made as {mode_words(calibrated)}, but this run makes "
        f"them as {mode_words(running)}: scores change scale, so they are not applied (decisions without a "
        f"threshold of your own are UNCALIBRATED); {remedy}"
    )


def load_processors(
    name_or_path: str, image_size: int | None = None
) -> tuple[CLIPADAImageProcessor, CLIPADAImageProcessor | None]:
    """The processor a command runs (`inference.loading.load_processor`, at `image_size` when given) and the one the
    folder saved ([`saved_processor`]), read once where they are the same.

    Returns:
        `(processor, own_processor)`; `own_processor` is None when the folder has no preprocessor_config.json.

    Raises:
        ModelLoadError: An `image_size` that is not a multiple of the checkpoint's patch size (naming both and the
            nearest sizes that are) or above `MAX_IMAGE_SIZE`; no preprocessor_config.json and no `image_size`.
    """
    processor = load_processor(name_or_path, image_size=image_size)
    return processor, processor if image_size is None else saved_processor(name_or_path)


def saved_processor(name_or_path: str) -> CLIPADAImageProcessor | None:
    """The processor of a checkpoint or export folder as saved (its preprocessor_config.json, before any override;
    `inference.loading.load_processor`), or None when it has none: the mode its older thresholds were calibrated in."""
    try:
        return load_processor(name_or_path)
    except ModelLoadError:
        return None


__all__ = [
    "NO_THRESHOLDS",
    "add_inference_mode_arguments",
    "calibrate_flags",
    "calibration_mode",
    "check_inference_mode_arguments",
    "describe_mode",
    "fitting_decision_config",
    "has_thresholds",
    "input_mode",
    "load_processors",
    "mode_words",
    "same_mode",
    "saved_processor",
    "thresholds_fit",
    "thresholds_note",
    "with_inference_mode",
]
