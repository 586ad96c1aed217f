"""Deprecated alias of `inference.deploy.graph` (moved in 0.2); goes away in the next release."""

from training.moved import warn_moved

warn_moved("training.deploy.graph", "inference.deploy.graph")

from inference.deploy.graph import *  # noqa: E402,F403
from inference.deploy.graph import __all__  # noqa: E402,F401
