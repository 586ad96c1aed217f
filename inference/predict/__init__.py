"""`clipada predict`: score files, folders, globs and lists of images; OK/NG rows, overlays and maps."""

from .command import cli, main, parse_args, predict_images, prepare_output_dir

__all__ = ["cli", "main", "parse_args", "predict_images", "prepare_output_dir"]
