"""`clipada predict`: score files, folders, globs and lists of images; OK/NG rows, overlays and maps."""

from .command import cli, main, parse_args, predict_images

__all__ = ["cli", "main", "parse_args", "predict_images"]
