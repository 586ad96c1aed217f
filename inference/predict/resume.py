"""`clipada predict --resume`: go on with a run that was stopped (Ctrl-C, a crash, SIGKILL) without losing or
repeating a row.

Predict writes its rows in input order, each whole, so its files always hold the rows of a prefix of the inputs,
perhaps followed by one torn line (a kill in the middle of a write) and with one file a few rows ahead of the other
(each flushes on its own). [`recover_rows`] keeps the whole rows both files agree on, cuts the rest, and the run
scores the inputs after them: every input gets exactly one row.

A run records what decides its rows in `predict_run.json` ([`run_fingerprint`]): the model (its path and the size
and modification time of its files), the settings that change a row (category, thresholds, dtype, input mode,
overlays, maps) and the inputs (their count and a hash of their paths). A resume with anything else is refused,
naming what differs ([`check_fingerprint`]). Batch size, workers, threads and device only change the speed and are
not recorded.

Example:
    ```python
    >>> fingerprint = run_fingerprint("outputs/run", "torch", {"category": "bottle", ...}, paths)
    >>> check_fingerprint(output_dir, fingerprint)         # raises ResumeError naming what differs
    >>> recover_rows(output_dir, paths).count             # the rows already written; the files cut to them
    ```
"""

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from inference.predict.rows import COLUMNS
from inference.predict.writers import csv_header, csv_line

RUN_RECORD = "predict_run.json"
FORMAT_VERSION = 1


class ResumeError(ValueError):
    """An output folder a run cannot be resumed into (another model, other settings or inputs, no record)."""


def run_fingerprint(model: str, backend: str, settings: Mapping, paths: Sequence[Path]) -> dict:
    """What decides a run's rows, as recorded in `predict_run.json`.

    Args:
        model: `--model_name_or_path`.
        backend: The backend's name (`torch`, `onnxruntime`, `openvino`).
        settings: The flags that change a row, by flag name (`--category`, `--dtype`, ...), JSON values.
        paths: Every input, in order.

    Returns:
        `{"version", "model", "model_files", "backend", "settings", "inputs"}`: `model_files` maps each file at the
        top of a local model folder to `[size, mtime_ns]` (empty for a Hub id); `inputs` holds `count` and the
        SHA-256 of the paths.
    """
    folder = Path(model)
    files = {}
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            if entry.is_file():
                status = entry.stat()
                files[entry.name] = [status.st_size, status.st_mtime_ns]
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.fsencode(path) + b"\0")
    return {
        "version": FORMAT_VERSION,
        "model": str(folder.resolve()) if folder.is_dir() else model,
        "model_files": files,
        "backend": backend,
        "settings": dict(settings),
        "inputs": {"count": len(paths), "sha256": digest.hexdigest()},
    }


def write_fingerprint(output_dir: Path, fingerprint: dict) -> None:
    """Writes `predict_run.json` whole (a temporary file renamed over it)."""
    temporary = output_dir / f".{RUN_RECORD}.tmp"
    temporary.write_text(json.dumps(fingerprint, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, output_dir / RUN_RECORD)


def check_fingerprint(output_dir: Path, fingerprint: dict) -> None:
    """Raises unless the run that wrote `output_dir` had this fingerprint.

    Raises:
        ResumeError: No (or a damaged) `predict_run.json`, or a fingerprint that differs, naming each difference.
    """
    try:
        recorded = json.loads((output_dir / RUN_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ResumeError(
            f"--resume: {output_dir} holds no readable {RUN_RECORD} (written by an older clipada predict, or "
            f"damaged: {error}); start again with --overwrite_output_dir"
        ) from error
    if not isinstance(recorded, dict) or recorded.get("version") != FORMAT_VERSION:
        raise ResumeError(f"--resume: {output_dir / RUN_RECORD} is not a record this version writes")
    differences = _differences(recorded, fingerprint)
    if differences:
        raise ResumeError(
            f"--resume: {output_dir} was written with other settings: {'; '.join(differences)}; resume with the "
            "same ones, or choose another --output_dir (or --overwrite_output_dir to start again)"
        )


def _differences(recorded: dict, current: dict) -> list[str]:
    """Each way `current` differs from `recorded`, in words."""
    found = []
    if recorded.get("model") != current["model"]:
        found.append(f"--model_name_or_path ({recorded.get('model')} there, {current['model']} now)")
    else:
        there, now = recorded.get("model_files") or {}, current["model_files"]
        changed = sorted(name for name in set(there) | set(now) if there.get(name) != now.get(name))
        if changed:
            found.append(f"the model's files changed since ({', '.join(changed[:5])})")
    if recorded.get("backend") != current["backend"]:
        found.append(f"--backend ({recorded.get('backend')} there, {current['backend']} now)")
    there = recorded.get("settings") or {}
    for flag, value in current["settings"].items():
        if there.get(flag) != value:
            found.append(f"{flag} ({there.get(flag)} there, {value} now)")
    inputs = recorded.get("inputs") or {}
    if inputs != current["inputs"]:
        count = inputs.get("count")
        found.append(
            f"the inputs ({count} images there, {current['inputs']['count']} now)"
            if count != current["inputs"]["count"]
            else f"the inputs (the same count, {count}, but other paths or another order)"
        )
    return found


@dataclass
class RecoveredRows:
    """The rows an earlier run left, once the files are cut to them.

    Attributes:
        count: How many rows were kept: those of the first `count` inputs.
        decisions: How many of them got each decision.
    """

    count: int
    decisions: Counter


def recover_rows(output_dir: Path, paths: Sequence[Path], multiple_of: int = 1) -> RecoveredRows:
    """The rows an earlier run wrote, with both files cut to exactly them; streams, so memory stays flat.

    Keeps the JSONL's whole lines (ending in a newline, parsing as a row) while each is the row of the next input
    in order; cuts the JSONL after the last one kept (a torn line, or rows past a damaged one, are dropped: those
    inputs are scored again), and writes the CSV again from the rows kept (a new file renamed over the old one), so
    both files hold the same rows, whole.

    Args:
        output_dir: The folder of the run to continue.
        paths: Every input, in order (the same as the earlier run's: `check_fingerprint` first).
        multiple_of: Keep a multiple of this many rows (the batch size): the run then goes on with the batches of
            an uninterrupted run, and its rows are the same to the bit (a model's results can differ in the last
            bit with the other images of its batch).

    Returns:
        [`RecoveredRows`]: the rows of `paths[:count]` are kept.
    """
    jsonl = output_dir / "predictions.jsonl"
    count = sum(1 for _ in _valid_rows(jsonl, paths))
    if count < len(paths):
        count -= count % multiple_of
    decisions: Counter = Counter()
    kept = 0
    temporary = output_dir / ".predictions.csv.tmp"
    with open(temporary, "w", encoding="utf-8", errors="backslashreplace", newline="") as file:
        file.write(csv_header())
        for _, (row, size) in zip(range(count), _valid_rows(jsonl, paths)):
            file.write(csv_line(row))
            decisions[row["decision"]] += 1
            kept += size
    if jsonl.is_file() and jsonl.stat().st_size != kept:
        with open(jsonl, "r+b") as file:
            file.truncate(kept)
    os.replace(temporary, output_dir / "predictions.csv")
    return RecoveredRows(count, decisions)


def _valid_rows(jsonl: Path, paths: Sequence[Path]) -> Iterator[tuple[dict, int]]:
    """`(row, bytes of its line)` for the JSONL's leading whole lines that are the rows of `paths`, in order."""
    if not jsonl.is_file():
        return
    with open(jsonl, "rb") as file:
        for index, line in enumerate(file):
            if index == len(paths) or not line.endswith(b"\n"):
                return
            try:
                row = json.loads(line)
            except ValueError:
                return
            if not isinstance(row, dict) or tuple(row) != COLUMNS or row["path"] != str(paths[index]):
                return
            yield row, len(line)


__all__ = [
    "RUN_RECORD",
    "RecoveredRows",
    "ResumeError",
    "check_fingerprint",
    "recover_rows",
    "run_fingerprint",
    "write_fingerprint",
]
