"""Deprecated alias of `inference.deploy` (moved in 0.2); goes away in the next release."""
