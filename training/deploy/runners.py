"""Deprecated alias of `inference.deploy.runners` (moved in 0.2); goes away in the next release."""

from training.moved import warn_moved

warn_moved("training.deploy.runners", "inference.deploy.runners", "predict --backend onnxruntime")

from inference.deploy.runners import *  # noqa: E402,F403
from inference.deploy.runners import cli  # noqa: E402,F401

if __name__ == "__main__":
    cli()
