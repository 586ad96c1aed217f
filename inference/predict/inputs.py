"""The images `inference.predict` scores: files, folders (recursive), globs and list files -> paths and output names.

Every input found gets a row: a file that cannot be read (a broken or looping link, a device, a pipe, a folder that
cannot be listed) is kept, and [`input_problem`] names what is wrong with it for its `ERROR` row. Folders holding
`inference.output_folder.OUTPUT_MARKER` (the output of an earlier `clipada` command inside an input folder) are
skipped, so predict never scores its own overlays.

Example:
    ```python
    >>> paths = collect_inputs(["line3/", "extra/*.png", "todo.txt"])   # sorted within each input, duplicates dropped
    >>> output_names(paths)                                            # unique stems: ["crack_000", "good_000", ...]
    ```
"""

import errno
import glob
import os
import stat
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from inference.output_folder import MAX_NAME_BYTES, OUTPUT_MARKER

# Every extension Pillow can open, plus the usual ones in case a plugin is missing.
IMAGE_SUFFIXES = frozenset(Image.registered_extensions()) | {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
LIST_SUFFIXES = frozenset({".txt", ".lst"})
_GLOB_CHARACTERS = set("*?[")
_NAME_ROOM = 10  # bytes left below MAX_NAME_BYTES for the `_2`, `_3`, ... that make names unique


class InputError(ValueError):
    """An input argument that names nothing usable (a missing path, a glob without matches, an unreadable list
    file)."""


@dataclass
class FoundInputs:
    """What the command-line inputs expand to.

    Attributes:
        paths: The image paths, each once, in the order given (some may be unreadable: [`input_problem`]).
        skipped_outputs: Folders below an input that hold a `clipada` command's output marker, not scored.
    """

    paths: list[Path]
    skipped_outputs: list[Path] = field(default_factory=list)


def find_inputs(inputs: list[str]) -> FoundInputs:
    """Expands the command-line inputs into image paths, in the order given.

    - an image file (any suffix that is not a list suffix) is taken as it is, even when it will fail to read: it
      then gets an ERROR row;
    - a folder contributes every image file below it (recursive, sorted, hidden files and folders skipped, links
      followed once, folders holding a `clipada` output marker skipped); a sub-folder that cannot be listed is kept
      itself, for its ERROR row;
    - a glob (`*`, `?`, `[`; `**` recurses) contributes its matching files, sorted, outside marked folders;
    - a `.txt`/`.lst` file lists one path per line (blank lines and lines starting with `#` skipped); relative paths
      are relative to the list file's folder; each listed path is taken as it is (missing ones get ERROR rows).

    Args:
        inputs: The positional arguments of `inference.predict`.

    Returns:
        [`FoundInputs`]: paths each once (the first occurrence wins).

    Raises:
        InputError: An input that does not exist (naming every such input), a glob that matches no file, or a list
            file that cannot be read.
    """
    found = FoundInputs([])
    missing = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.paths.extend(_images_below(path, found.skipped_outputs))
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            found.paths.extend(_read_list_file(path))
        elif not os.path.lexists(path) and _GLOB_CHARACTERS & set(item):
            found.paths.extend(_glob_matches(item))
        elif os.path.lexists(path):
            found.paths.append(path)  # a file, or a broken link, a device, a pipe: read (or named) for its row
        else:
            missing.append(item)
    if missing:
        raise InputError(f"no such file or folder: {', '.join(missing)}")
    unique: dict[str, Path] = {}
    for path in found.paths:
        unique.setdefault(os.path.realpath(path), path)  # realpath, unlike Path.resolve, survives link loops
    found.paths = list(unique.values())
    return found


def collect_inputs(inputs: list[str]) -> list[Path]:
    """The image paths of [`find_inputs`]."""
    return find_inputs(inputs).paths


def input_problem(path: Path) -> str | None:
    """Why `path` cannot be read as an image file, in words for its ERROR row; None when it is a regular file.

    Checked before reading, so that a pipe or a device is never opened (reading `/dev/zero` never ends).
    """
    try:
        mode = os.stat(path).st_mode  # follows links
    except FileNotFoundError:
        return f"broken symbolic link to {os.readlink(path)}" if os.path.islink(path) else "no such file"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop: the link leads back to itself"
        return f"cannot read it: {error.strerror}"
    if stat.S_ISDIR(mode):
        try:
            _folder_entries(path)
        except OSError as error:
            return f"cannot list this folder ({error.strerror}): its images were not scored"
        return "is a folder, not an image file"
    if not stat.S_ISREG(mode):
        return "not a regular file (a device, pipe or socket): only image files are read"
    return None


def _folder_entries(folder: Path) -> list[os.DirEntry]:
    """The entries of one folder, sorted by name (raises OSError when it cannot be listed)."""
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda entry: entry.name)


def _images_below(folder: Path, skipped_outputs: list[Path]) -> list[Path]:
    """Image files below `folder`, recursive and sorted; hidden files and folders skipped, folders holding an output
    marker skipped (appended to `skipped_outputs`), each real folder walked once (link loops end there), and
    sub-folders that cannot be listed returned themselves."""
    found, walked = [], set()
    pending = [folder]
    while pending:
        directory = pending.pop()
        real = os.path.realpath(directory)
        if real in walked:  # a link back to a folder already walked: its images are listed once
            continue
        walked.add(real)
        try:
            entries = _folder_entries(directory)
        except OSError:
            found.append(directory)  # its ERROR row says why (input_problem)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = directory / entry.name
            if _is_folder(entry):
                if _holds_output_marker(path):
                    skipped_outputs.append(path)
                else:
                    pending.append(path)
            elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(path)
    return sorted(found)


def _holds_output_marker(folder: Path) -> bool:
    """Whether `folder` holds a `clipada` command's output marker; False where it cannot be looked into (that
    folder's own row then says why)."""
    try:
        return (folder / OUTPUT_MARKER).is_file()
    except OSError:
        return False


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links; False for a broken or looping link
    except OSError:
        return False


def _glob_matches(pattern: str) -> list[Path]:
    """The files `pattern` matches, sorted, except those in folders below its fixed part that hold an output
    marker."""
    parts = Path(pattern).parts
    fixed = Path(*parts[: next(i for i, part in enumerate(parts) if _GLOB_CHARACTERS & set(part))])
    matches = []
    for match in sorted(Path(match) for match in glob.glob(pattern, recursive=True)):
        if os.path.isdir(match) or not os.path.lexists(match):
            continue
        below = match.parent.relative_to(fixed).parts if match.parent.is_relative_to(fixed) else ()
        folders = [fixed.joinpath(*below[: depth + 1]) for depth in range(len(below))]
        if not any(_holds_output_marker(folder) for folder in folders):
            matches.append(match)
    if not matches:
        raise InputError(f"the pattern {pattern!r} matches no file")
    return matches


def _read_list_file(list_file: Path) -> list[Path]:
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the list file {list_file}: {error}") from error
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return [entry if entry.is_absolute() else list_file.parent / entry for entry in map(Path, entries)]


def output_names(paths: list[Path]) -> list[str]:
    """One unique file-name stem per path, for overlays and maps: the input's stem where that is unique.

    Clashing stems get their parent folders' names prefixed, one level at a time (`good/000.png` and
    `crack/000.png` -> `good_000`, `crack_000`); where the folders do not tell them apart (`a/0.png`, `a/0.jpg`)
    the stems get `_2`, `_3`, ... in input order (`0`, `0_2`). Every name is one valid file name: control
    characters and backslashes become `_`, long names are cut to fit (`inference.output_folder.MAX_NAME_BYTES`),
    and names differ also where letter case does not count (`A`, `a_2`).

    Args:
        paths: The input paths.

    Returns:
        One stem per path, without suffix.
    """
    depth = [0] * len(paths)
    names = [_name(path, 0) for path in paths]
    while True:
        groups: dict[str, list[int]] = defaultdict(list)
        for index, name in enumerate(names):
            groups[name.casefold()].append(index)
        clashing = [group for group in groups.values() if len(group) > 1]
        deeper = [index for group in clashing for index in group if depth[index] < len(paths[index].parent.parts)]
        if not deeper:
            break
        for index in deeper:
            depth[index] += 1
            names[index] = _name(paths[index], depth[index])
    counts: dict[str, int] = defaultdict(int)
    for name in names:
        counts[name.casefold()] += 1
    names = [_name(path, 0) if counts[name.casefold()] > 1 else name for path, name in zip(paths, names)]
    used: set[str] = set()
    unique = []
    for name in names:
        candidate, number = name, 1
        while candidate.casefold() in used:
            number += 1
            candidate = f"{name}_{number}"
        used.add(candidate.casefold())
        unique.append(candidate)
    return unique


def _name(path: Path, depth: int) -> str:
    parents = [part for part in path.parent.parts[len(path.parent.parts) - depth :] if part not in ("/", "\\")]
    return _file_name("_".join([*parents, path.stem]) if depth else path.stem)


def _file_name(text: str) -> str:
    """`text` made one valid file name: no control characters or separators, not `.`/`..`, at most
    `MAX_NAME_BYTES - _NAME_ROOM` bytes of UTF-8."""
    text = "".join("_" if not character.isprintable() or character in "/\\" else character for character in text)
    if text.strip(".") == "":
        text = f"_{text}"
    limit = MAX_NAME_BYTES - _NAME_ROOM
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore") if len(text.encode("utf-8")) > limit else text


__all__ = [
    "IMAGE_SUFFIXES",
    "LIST_SUFFIXES",
    "FoundInputs",
    "InputError",
    "collect_inputs",
    "find_inputs",
    "input_problem",
    "output_names",
]
