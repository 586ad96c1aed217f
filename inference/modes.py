"""How images become model inputs at inference: the `--resize_mode/--tile_size/--tile_overlap` flags of evaluation and
predict, which override the checkpoint's preprocessor_config.json.

Example:
    ```python
    >>> add_inference_mode_arguments(parser)
    >>> args = parser.parse_args(["--tile_size", "224"])
    >>> processor = with_inference_mode(processor, args.resize_mode, args.tile_size, args.tile_overlap)
    ```
"""

import argparse
import sys

from processing import CLIPADAImageProcessor
from processing.tiling import RESIZE_MODES


def add_inference_mode_arguments(parser: argparse.ArgumentParser) -> None:
    """`--resize_mode`, `--tile_size`, `--tile_overlap`: override the checkpoint's preprocessor_config.json."""
    parser.add_argument(
        "--resize_mode",
        choices=RESIZE_MODES,
        help="squash (whole image to the input size) or letterbox (proportions kept).",
    )
    parser.add_argument(
        "--tile_size", type=int, help="Cut images into overlapping tiles of this many image pixels (0: no tiles)."
    )
    parser.add_argument("--tile_overlap", type=float, help="Fraction of a tile neighbouring tiles share, in [0, 1).")


def check_inference_mode_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses a negative `--tile_size` or a `--tile_overlap` outside [0, 1) with a usage error."""
    if args.tile_size is not None and args.tile_size < 0:
        parser.error(f"--tile_size must be a positive number of pixels (0 for no tiles), got {args.tile_size}")
    if args.tile_overlap is not None and not 0.0 <= args.tile_overlap < 1.0:
        parser.error(f"--tile_overlap must lie in [0, 1) (a fraction of a tile), got {args.tile_overlap}")


def with_inference_mode(
    processor: CLIPADAImageProcessor,
    resize_mode: str | None = None,
    tile_size: int | None = None,
    tile_overlap: float | None = None,
) -> CLIPADAImageProcessor:
    """The processor with the given settings replaced (`None`: keep the checkpoint's; `tile_size=0`: no tiles)."""
    overrides = {"resize_mode": resize_mode, "tile_size": tile_size, "tile_overlap": tile_overlap}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if not overrides:
        return processor
    settings = {**processor.to_dict(), **overrides}
    settings["tile_size"] = settings.get("tile_size") or None
    changed = type(processor).from_dict(settings)
    if describe_mode(changed) != describe_mode(processor):
        print(
            f"note: inputs are {describe_mode(changed)} instead of the checkpoint's {describe_mode(processor)}: scores "
            "and maps change scale, so calibrated thresholds do not carry over; calibrate in this mode "
            "(clipada calibrate with a preprocessor_config.json that records it)",
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


__all__ = [
    "add_inference_mode_arguments",
    "check_inference_mode_arguments",
    "describe_mode",
    "input_mode",
    "with_inference_mode",
]
