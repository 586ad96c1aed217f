"""Deprecated alias of `inference.app` (moved in 0.2); goes away in the next release."""

from training.moved import warn_moved

warn_moved("training.app", "inference.app", "clipada app")

from inference.app import *  # noqa: E402,F403
from inference.app import __all__, cli, main  # noqa: E402,F401

if __name__ == "__main__":
    cli()
