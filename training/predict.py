"""Deprecated alias of `inference.predict` (moved in 0.2); goes away in the next release."""

from training.moved import warn_moved

warn_moved("training.predict", "inference.predict", "clipada predict")

from inference.predict import *  # noqa: E402,F403
from inference.predict import __all__, cli, main  # noqa: E402,F401

if __name__ == "__main__":
    cli()
