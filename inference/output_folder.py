"""One ownership rule for every folder a `clipada` command writes, and names that stay inside their folder.

A command writes only into a new (or empty) folder or into one it wrote itself earlier; it refuses any other folder,
naming it. Every folder it writes holds `.clipada_output.json`: the command that wrote it and the entries (top-level
file and folder names) it wrote. With `--overwrite_output_dir` a command replaces its own earlier entries and nothing
else: a folder that also holds entries it did not write is refused, flag or not. It never writes into its own input or
source (the checkpoint it reads, the images it scores), nor into a folder that contains them.

Values that become file names (category names, defect types, image names) go through `safe_name`, and paths built
from them through `inside`, so no value of a dataset or a flag can reach outside the output folder.

Example:
    ```python
    >>> folder = claim_output_folder(
    ...     Path("outputs/line3"), "clipada predict", ["predictions.csv", "predictions.jsonl", "overlays"],
    ...     overwrite=False, sources=[Path("line3")], contained_sources=[Path("line3")],
    ... )
    >>> inside(folder, folder / "overlays" / f"{safe_name(name, 'image name')}.png")
    ```
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

OUTPUT_MARKER = ".clipada_output.json"
# most file systems limit one name to 255 bytes; keep room for a suffix such as ".png" or "_0001.png"
MAX_NAME_BYTES = 200
_SHOWN = 5


class OutputFolderError(ValueError):
    """A folder this command may not write into, or a name that would leave its folder."""


def safe_name(value: str, field: str) -> str:
    """Returns `value` when it can be one file name inside a folder; raises otherwise.

    Refused: empty names, `.` and `..`, path separators (`/`, and `\\` everywhere), NUL and other control
    characters (a newline in a file name breaks line-based tools), names over `MAX_NAME_BYTES` bytes in UTF-8.

    Args:
        value: The name (a category, a defect type, an image's stem).
        field: What it is, for the error (e.g. `"category"`, `"VisA csv column 'object' in row 12"`).

    Raises:
        OutputFolderError: Naming `field` and the value.
    """
    if not isinstance(value, str):
        raise OutputFolderError(f"{field} must be text, got {type(value).__name__}")
    problem = None
    if value in ("", ".", ".."):
        problem = "is not a file name"
    elif "/" in value or "\\" in value or (os.altsep and os.altsep in value):
        problem = "contains a path separator"
    elif any(ord(character) < 32 or ord(character) == 127 for character in value):
        problem = "contains a control character (newline, tab, NUL, ...)"
    elif len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        problem = f"is longer than {MAX_NAME_BYTES} bytes"
    if problem:
        raise OutputFolderError(f"{field} {value!r} {problem}; it must be usable as one file name")
    return value


def inside(folder: Path, path: Path) -> Path:
    """Returns `path` when it resolves (symbolic links followed) to a place inside `folder`; raises otherwise.

    Raises:
        OutputFolderError: Naming both paths.
    """
    resolved_folder, resolved = Path(folder).resolve(), Path(path).resolve()
    if resolved != resolved_folder and resolved_folder not in resolved.parents:
        raise OutputFolderError(f"{path} would be written outside its output folder {folder}")
    return path


def read_marker(folder: Path) -> dict | None:
    """The marker of a folder a `clipada` command wrote: `{"written_by": ..., "entries": [...]}`; None when the
    folder holds no marker, or a damaged one (a folder with a damaged marker is not ours)."""
    try:
        marker = json.loads((Path(folder) / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("written_by"), str):
        return None
    entries = marker.get("entries")
    if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
        return None
    return marker


def write_marker(folder: Path, command: str, entries: Iterable[str] | None = None) -> None:
    """Marks `folder` as written by `command`, listing `entries` (default: every entry it holds now)."""
    folder = Path(folder)
    if entries is None:
        entries = (path.name for path in folder.iterdir() if path.name != OUTPUT_MARKER)
    marker = {"written_by": command, "entries": sorted(set(entries))}
    (folder / OUTPUT_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def check_output_folder(
    folder: Path,
    command: str,
    *,
    overwrite: bool,
    sources: Sequence[Path] = (),
    contained_sources: Sequence[Path] = (),
    flag: str = "--output_dir",
) -> None:
    """Raises unless `command` may write `folder`: absent or empty, or written by `command` earlier and holding only
    its own entries (replaced only with `overwrite`).

    Args:
        folder: The output folder.
        command: The command's name as the user types it, e.g. `"clipada predict"`.
        overwrite: `--overwrite_output_dir`: replace the command's own earlier entries.
        sources: What the command reads (checkpoints, input folders and files): `folder` may be none of them, lie
            inside none of them, and contain none of them.
        contained_sources: Sources `folder` may lie inside (predict's input folder may hold its output folder;
            predict then skips it as it holds our marker).
        flag: The flag that named `folder`, for the errors.

    Raises:
        OutputFolderError: Naming the folder and what is wrong.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{flag} {folder} exists and is not a folder")
    resolved = folder.resolve()
    for source in [*sources, *contained_sources]:
        source_resolved = Path(source).resolve()
        if resolved == source_resolved:
            raise OutputFolderError(f"{flag} {folder} is the command's own input {source}; choose another folder")
        if resolved in source_resolved.parents:
            raise OutputFolderError(f"{flag} {folder} contains the command's own input {source}; choose another folder")
        if source_resolved in resolved.parents and source not in contained_sources:
            raise OutputFolderError(
                f"{flag} {folder} lies inside the command's own input {source}; choose another folder"
            )
    if not folder.exists():
        return
    present = sorted(path.name for path in folder.iterdir())
    if not present:
        return
    marker = read_marker(folder)
    if marker is None:
        raise OutputFolderError(
            f"{flag} {folder} is not empty ({_show(present)}) and was not written by {command}; choose a new folder "
            "(nothing is replaced in a folder this command did not write, even with --overwrite_output_dir)"
        )
    if marker["written_by"] != command:
        raise OutputFolderError(
            f"{flag} {folder} holds the output of {marker['written_by']}, not of {command}; choose another folder"
        )
    foreign = [name for name in present if name != OUTPUT_MARKER and name not in marker["entries"]]
    if foreign:
        raise OutputFolderError(
            f"{flag} {folder} holds files {command} did not write ({_show(foreign)}); move them or choose another "
            "folder"
        )
    earlier = [name for name in present if name != OUTPUT_MARKER]
    if earlier and not overwrite:
        raise OutputFolderError(
            f"{flag} {folder} already holds the output of an earlier {command} ({_show(earlier)}); choose another "
            "folder or pass --overwrite_output_dir to replace it"
        )


def clear_own_entries(folder: Path) -> None:
    """Removes the entries the folder's marker lists (the earlier output of the command that wrote it), and
    nothing else."""
    folder = Path(folder)
    marker = read_marker(folder)
    for name in [] if marker is None else marker["entries"]:
        path = folder / safe_name(name, f"entry of {folder / OUTPUT_MARKER}")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def claim_output_folder(
    folder: Path,
    command: str,
    entries: Iterable[str],
    *,
    overwrite: bool,
    sources: Sequence[Path] = (),
    contained_sources: Sequence[Path] = (),
    flag: str = "--output_dir",
) -> Path:
    """Checks `folder` (`check_output_folder`), removes the command's earlier entries, creates it and marks it as
    written by `command` with `entries` (the names it will write), for commands that write as they go.

    Commands that write a whole folder at once (export, a calibrated checkpoint) call `check_output_folder` before and
    `write_marker` into their staging folder instead.

    Returns:
        `folder`.
    """
    folder = Path(folder)
    check_output_folder(
        folder, command, overwrite=overwrite, sources=sources, contained_sources=contained_sources, flag=flag
    )
    if folder.exists():
        clear_own_entries(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_marker(folder, command, entries)
    return folder


def _show(names: Sequence[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")


__all__ = [
    "MAX_NAME_BYTES",
    "OUTPUT_MARKER",
    "OutputFolderError",
    "check_output_folder",
    "claim_output_folder",
    "clear_own_entries",
    "inside",
    "read_marker",
    "safe_name",
    "write_marker",
]
