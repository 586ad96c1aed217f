"""`clipada app`: the inspection web app (gradio) on a checkpoint or an export, and its Hub Space."""

from .command import cli, main, parse_args

__all__ = ["cli", "main", "parse_args"]
