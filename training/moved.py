"""The module paths that moved to `inference/` in 0.2: each old path still works for one release, with a warning."""

import sys
import warnings


def warn_moved(old: str, new: str, command: str | None = None) -> None:
    """Warns that `old` moved to `new` in 0.2 (and names the command that replaces it, if any).

    Called from an old module's top level, or from the module `__getattr__` that hands out a moved name. The
    warning is a `FutureWarning`: Python's default filters show it wherever it is raised, where a
    `DeprecationWarning` shows only when attributed to `__main__` (so not under `python -m`, nor on an import in a
    user's own module). It points at the line that imported the old path (or read the moved name); where only
    Python's `-m` machinery (runpy) imported it, there is no such line, and it points at the old module itself.

    Args:
        old: The 0.1 path, e.g. `"training.predict"`.
        new: Where it lives now, e.g. `"inference.predict"`.
        command: The command line that replaces running the old module, e.g. `"clipada predict"`.
    """
    run_instead = f" (or run: {command})" if command else ""
    importer = _importer_name(sys._getframe(1))
    warnings.warn(
        f"{old} moved to {new} in 0.2{run_instead}; the old path goes away in the next release",
        FutureWarning,
        stacklevel=2 if importer in (None, "runpy") else 3,  # 2: the old module itself; 3: whoever imported it
    )


def _importer_name(old_module_frame) -> str | None:
    """The `__name__` of the code that imported (or read from) the old module, importlib's own frames skipped as
    `warnings` skips them; None at the bottom of the stack."""
    frame = old_module_frame.f_back
    while frame is not None and "importlib" in frame.f_code.co_filename and "_bootstrap" in frame.f_code.co_filename:
        frame = frame.f_back
    return None if frame is None else frame.f_globals.get("__name__")


__all__ = ["warn_moved"]
