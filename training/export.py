"""Deprecated alias of `inference.deploy.export` (moved in 0.2); goes away in the next release."""

from training.moved import warn_moved

warn_moved("training.export", "inference.deploy.export", "clipada export")

from inference.deploy.export import *  # noqa: E402,F403
from inference.deploy.export import __all__, cli, main  # noqa: E402,F401

if __name__ == "__main__":
    cli()
