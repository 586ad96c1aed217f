"""What `inference.predict` writes as it goes: `predictions.csv`, `predictions.jsonl`, and raw maps on request.

Rows are written whole and flushed after every batch, so an interrupted run keeps every row it wrote (a torn last
line, from a kill in the middle of a write, is cut by `inference.predict.resume` before a run continues).

Example:
    ```python
    >>> with PredictionWriter(Path("out")) as writer:
    ...     writer.write(row)                   # keys: inference.predict.rows.COLUMNS
    >>> save_map(Path("out/maps/000"), anomaly_map, "png16")   # -> out/maps/000.png, 0..65535 = 0..1
    ```
"""

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from inference.predict.rows import COLUMNS

MAP_FORMATS = ("png16", "npz")
# the columns that hold text from the user or the files (paths, names, messages): the ones neutralised in the CSV;
# the others hold numbers and words this project writes itself
TEXT_COLUMNS = frozenset({"path", "category", "overlay", "map", "error"})
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class PredictionWriter:
    """Appends rows to `predictions.csv` and `predictions.jsonl` in `output_dir`: created afresh, or continued.

    In the CSV, `boxes` is a JSON list and missing values are empty cells; a text cell (`TEXT_COLUMNS`: a path, a
    category, a message) that starts with `=`, `+`, `-`, `@`, a tab or a carriage return gets a `'` in front, so
    that a spreadsheet shows it as text instead of running it as a formula (OWASP's advice on CSV injection). The
    JSONL holds the raw values, with `null` for missing ones. Each row goes to each file in one write call.

    Args:
        output_dir: The existing output folder.
        append: Continue existing files (`--resume`, after `inference.predict.resume.recover_rows` left them holding
            whole rows only) instead of creating them.
    """

    def __init__(self, output_dir: Path, append: bool = False):
        mode = "a" if append and (output_dir / "predictions.csv").is_file() else "w"
        # backslashreplace: a file name that is not valid UTF-8 (surrogate escapes) is written as `\udcff`, readable
        self.csv_file = open(  # noqa: SIM115
            output_dir / "predictions.csv", mode, encoding="utf-8", errors="backslashreplace", newline=""
        )
        self.jsonl_file = open(output_dir / "predictions.jsonl", mode, encoding="utf-8")  # noqa: SIM115
        if mode == "w":
            self.csv_file.write(csv_header())
        self.flush()

    def write(self, row: dict) -> None:
        """Writes one row (keys `COLUMNS`) to both files, each in one piece."""
        self.csv_file.write(csv_line(row))
        self.jsonl_file.write(json_line(row))

    def flush(self) -> None:
        """Pushes the rows written so far to disk."""
        self.csv_file.flush()
        self.jsonl_file.flush()

    def close(self) -> None:
        self.csv_file.close()
        self.jsonl_file.close()

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def csv_header() -> str:
    """The header line of `predictions.csv`."""
    return csv_line(dict(zip(COLUMNS, COLUMNS)), neutralise=False)


def csv_line(row: dict, neutralise: bool = True) -> str:
    """One row as its `predictions.csv` record (ends with `\r\n`; a cell with a newline is quoted)."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow([_csv_cell(row[key], neutralise and key in TEXT_COLUMNS) for key in COLUMNS])
    return buffer.getvalue()


def json_line(row: dict) -> str:
    """One row as its `predictions.jsonl` line."""
    return json.dumps({key: _json_value(row[key]) for key in COLUMNS}) + "\n"


def _csv_cell(value, text: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, list):
        return json.dumps(value)
    return neutralise_formula(str(value)) if text else str(value)


def neutralise_formula(cell: str) -> str:
    """`cell` with a `'` in front when a spreadsheet would read it as a formula (it starts with `=`, `+`, `-`, `@`,
    a tab or a carriage return); unchanged otherwise."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def _json_value(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def save_map(stem: Path, anomaly_map: np.ndarray, fmt: str) -> Path:
    """Writes a raw anomaly map at the image's size.

    Args:
        stem: The path without suffix.
        anomaly_map: `(H, W)` probabilities in [0, 1].
        fmt: `png16` (a 16-bit grey PNG, 0..65535 = 0..1) or `npz` (float32 array `anomaly_map`, compressed).

    Returns:
        The written file.

    Raises:
        ValueError: An unknown format.
    """
    if fmt == "png16":
        path = stem.with_suffix(".png")
        Image.fromarray(np.round(np.clip(anomaly_map, 0.0, 1.0) * 65535).astype(np.uint16)).save(path)
    elif fmt == "npz":
        path = stem.with_suffix(".npz")
        np.savez_compressed(path, anomaly_map=anomaly_map.astype(np.float32))
    else:
        raise ValueError(f"--save_maps {fmt!r}: choose one of {', '.join(MAP_FORMATS)}")
    return path


__all__ = [
    "FORMULA_STARTS",
    "MAP_FORMATS",
    "TEXT_COLUMNS",
    "PredictionWriter",
    "csv_header",
    "csv_line",
    "json_line",
    "neutralise_formula",
    "save_map",
]
