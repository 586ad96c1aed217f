"""Deprecated alias of `inference.deploy` (moved in 0.2); goes away in the next release. Like it, imports no torch."""

from training.moved import warn_moved

warn_moved("training.deploy", "inference.deploy")

from inference.deploy import *  # noqa: E402,F403
from inference.deploy import __all__  # noqa: E402,F401
