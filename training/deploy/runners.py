"""Deprecated alias of `inference.deploy.runners` (moved in 0.2); goes away in the next release."""

from training.moved import warn_moved

warn_moved("training.deploy.runners", "inference.deploy.runners", "python -m inference.deploy.runners")

from inference.deploy.runners import *  # noqa: E402,F403
from inference.deploy.runners import __all__, cli  # noqa: E402,F401

if __name__ == "__main__":
    cli()
