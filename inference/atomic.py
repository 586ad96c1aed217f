"""Write a folder atomically: fill a hidden sibling staging folder, then swap it in place of the target.

A reader of the target sees either the old folder or the complete new one, never a half-written one;
on any error the staging folder is removed and the target is left as it was.

Example:
    >>> from pathlib import Path
    >>> from inference.atomic import atomic_dir
    >>> with atomic_dir(Path("/data/out")) as staging:
    ...     (staging / "result.txt").write_text("done")
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def staging_dir(target: Path, tag: str) -> Path:
    """Return a fresh hidden folder name beside ``target`` (same disk, so it can be renamed onto it).

    The folder is not created.

    Args:
        target: The folder that will be written.
        tag: A word naming the purpose, e.g. ``"tmp"`` or ``"old"``.

    Returns:
        ``<parent>/.<name>.<tag>-<random hex>``.
    """
    return target.parent / f".{target.name}.{tag}-{uuid.uuid4().hex[:12]}"


def replace_dir(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``, replacing an existing ``target`` only once the move can happen.

    An existing ``target`` is renamed aside, ``staging`` renamed in, then the old folder removed; if the
    second rename fails the old folder is renamed back.

    Args:
        staging: The complete new folder.
        target: The folder to create or replace (it may not exist).
    """
    if not target.exists():
        staging.rename(target)
        return
    backup = staging_dir(target, "old")
    target.rename(backup)
    try:
        staging.rename(target)
    except BaseException:
        backup.rename(target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target`` and swap it in place of ``target`` on normal exit.

    On an exception the staging folder is removed, ``target`` is left untouched and the exception
    propagates. The parent of ``target`` is created when missing. Unlike `tempfile.mkdtemp` the staging
    folder gets the default permissions, which ``target`` keeps.

    Args:
        target: The folder to create or replace.

    Yields:
        The staging folder to fill.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(target, "tmp")
    staging.mkdir()
    try:
        yield staging
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


__all__ = ["atomic_dir", "replace_dir", "staging_dir"]
