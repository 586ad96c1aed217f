"""The module paths that moved to `inference/` in 0.2: each old path still works for one release, with a warning."""

import warnings


def warn_moved(old: str, new: str, command: str) -> None:
    """A `DeprecationWarning` (shown by default under `python -m`, where the old module is `__main__`)."""
    warnings.warn(
        f"{old} moved to {new} (or run: clipada {command}); the old path goes away in the next release",
        DeprecationWarning,
        stacklevel=3,
    )


__all__ = ["warn_moved"]
