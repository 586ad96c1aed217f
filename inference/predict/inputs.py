"""The images `inference.predict` scores: files, folders (recursive), globs and list files -> paths and output names.

Example:
    ```python
    >>> paths = collect_inputs(["line3/", "extra/*.png", "todo.txt"])   # sorted within each input, duplicates dropped
    >>> output_names(paths)                                            # unique stems: ["crack_000", "good_000", ...]
    ```
"""

import glob
from collections import defaultdict
from pathlib import Path

from PIL import Image

# Every extension Pillow can open, plus the usual ones in case a plugin is missing.
IMAGE_SUFFIXES = frozenset(Image.registered_extensions()) | {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
LIST_SUFFIXES = frozenset({".txt", ".lst"})
_GLOB_CHARACTERS = set("*?[")


class InputError(ValueError):
    """An input argument that names nothing usable (a glob without matches, an unreadable list file)."""


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Expands the command-line inputs into image paths, in the order given.

    - an image file (any suffix that is not a list suffix) is taken as it is, even when it will fail to read: it
      then gets an ERROR row;
    - a folder contributes every image file below it (recursive, sorted, hidden files and folders skipped);
    - a glob (`*`, `?`, `[`; `**` recurses) contributes its matching files, sorted;
    - a `.txt`/`.lst` file lists one path per line (blank lines and lines starting with `#` skipped); relative paths
      are relative to the list file's folder; each listed path is taken as it is (missing ones get ERROR rows);
    - a path that does not exist is kept, so that it gets an ERROR row.

    Args:
        inputs: The positional arguments of `inference.predict`.

    Returns:
        Paths, each once (the first occurrence wins).

    Raises:
        InputError: A glob matches no file, or a list file cannot be read.
    """
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(_images_below(path))
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            paths.extend(_read_list_file(path))
        elif not path.exists() and _GLOB_CHARACTERS & set(item):
            matches = sorted(Path(match) for match in glob.glob(item, recursive=True) if Path(match).is_file())
            if not matches:
                raise InputError(f"the pattern {item!r} matches no file")
            paths.extend(matches)
        else:
            paths.append(path)
    unique: dict[str, Path] = {}
    for path in paths:
        unique.setdefault(str(path.resolve()), path)
    return list(unique.values())


def _images_below(folder: Path) -> list[Path]:
    """Image files below `folder`, recursive and sorted; hidden files and anything in hidden folders skipped."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            found.append(path)
    return sorted(found)


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
    the stems get `_2`, `_3`, ... in input order (`0`, `0_2`).

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
            groups[name].append(index)
        clashing = [group for group in groups.values() if len(group) > 1]
        deeper = [index for group in clashing for index in group if depth[index] < len(paths[index].parent.parts)]
        if not deeper:
            break
        for index in deeper:
            depth[index] += 1
            names[index] = _name(paths[index], depth[index])
    counts: dict[str, int] = defaultdict(int)
    for name in names:
        counts[name] += 1
    names = [path.stem if counts[name] > 1 else name for path, name in zip(paths, names)]  # folders did not help
    used: set[str] = set()
    unique = []
    for name in names:
        candidate, number = name, 1
        while candidate in used:
            number += 1
            candidate = f"{name}_{number}"
        used.add(candidate)
        unique.append(candidate)
    return unique


def _name(path: Path, depth: int) -> str:
    parents = [part for part in path.parent.parts[len(path.parent.parts) - depth :] if part not in ("/", "\\")]
    return "_".join([*parents, path.stem]) if depth else path.stem


__all__ = ["IMAGE_SUFFIXES", "LIST_SUFFIXES", "InputError", "collect_inputs", "output_names"]
