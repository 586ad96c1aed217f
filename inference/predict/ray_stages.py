"""The three stages of `clipada predict --engine ray` as Ray Data batch functions (a dict of column arrays in and
out): predict's own stages (`inference.predict.stages`: `load_image`, `forward`, `finish_image`) run by CPU tasks, a
model actor and CPU tasks, so a row is the one the single-process command writes. Nothing here imports Ray: the
functions run (and are tested) on plain numpy batches.

Columns between the stages (one entry per image):
    index (int64), path, source, category, name (str): the input as given, its absolute path (what the workers
        read: their working folder is not the driver's), its category ("" for none) and its output name.
    loaded: the pickled `inference.predict.stages.LoadedImage` (its `pixel_values` dropped after the model).
    outcome: the pickled `forward` outcome: `(model_map (N_i, h, w), model_score)`, an error, or None.

Example:
    ```python
    >>> batch = read_batch({"index": ..., "path": ..., "source": ..., "category": ..., "name": ...}, processor, True)
    >>> batch = ModelStage(settings)(batch)
    >>> summary = finish_batch(batch, finish_settings, output_dir, shards_dir)
    ```
"""

import hashlib
import json
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from inference.backends import load_backend
from inference.predict.stages import FinishSettings, finish_image, forward, load_image, message

# A test hook: a path; while a file `<path>` exists, the first model stage to claim it (renaming it to
# `<path>.fired`) ends its process at once, as a worker killed mid-run would (`os._exit`)
CRASH_ONCE_ENV = "CLIPADA_RAY_CRASH_ONCE"
SHARD_SUFFIX = ".jsonl"


@dataclass(frozen=True)
class ModelSettings:
    """How each model actor loads its backend (`inference.backends.load_backend`'s arguments).

    Attributes:
        backend: `torch`, `onnxruntime`, `openvino`, or None (the export's own runtime, else torch).
        model_name_or_path: A checkpoint folder or Hub id, or an export folder, as every node sees it.
        device: torch's device in the actor (None: the GPU Ray gave it, else the CPU).
        dtype: `float32` or `bfloat16`.
        num_threads: CPU threads per actor (None: the cores the actor may use).
    """

    backend: str | None
    model_name_or_path: str
    device: str | None = None
    dtype: str = "float32"
    num_threads: int | None = None


def read_batch(batch: dict, processor, keep_picture: bool) -> dict:
    """Reads and preprocesses the images of a batch (`inference.predict.stages.load_image`).

    Args:
        batch: Columns `index`, `path`, `source`, `category`, `name`.
        processor: The run's `CLIPADAImageProcessor` in predict's input mode.
        keep_picture: Keep each picture for its overlay (`--overlays all|ng`).

    Returns:
        The batch with `loaded` added.
    """
    loaded = []
    for index, path, source, category in zip(batch["index"], batch["path"], batch["source"], batch["category"]):
        image = load_image(int(index), Path(source), str(category) or None, processor, keep_picture)
        loaded.append(pickle.dumps(replace(image, path=str(path))))  # its row names the path as given
    return {**batch, "loaded": _objects(loaded)}


class ModelStage:
    """The model of a Ray actor: loads the backend once, then runs it once per batch
    (`inference.predict.stages.forward`: a batch it fails on is run image by image, so only that image gets an
    `ERROR` row).

    Args:
        settings: [`ModelSettings`].
    """

    def __init__(self, settings: ModelSettings):
        # Ray shows an actor its GPU as cuda:0, whichever `--device cuda:N` was asked for
        device = "cuda" if (settings.device or "").startswith("cuda") else settings.device
        self.backend = load_backend(
            settings.backend, settings.model_name_or_path, device, settings.dtype, settings.num_threads
        )

    def __call__(self, batch: dict) -> dict:
        """Adds `outcome`; drops the `pixel_values` from `loaded` (the finish stage needs none)."""
        _crash_once_when_asked()
        loaded = [pickle.loads(item) for item in batch["loaded"]]
        outcomes = [_picklable(outcome) for outcome in forward(self.backend, loaded)]
        slim = [pickle.dumps(replace(image, pixel_values=None)) for image in loaded]
        return {**batch, "loaded": _objects(slim), "outcome": _objects([pickle.dumps(item) for item in outcomes])}


def finish_batch(batch: dict, settings: FinishSettings, output_dir: str, shards_dir: str) -> dict:
    """Finishes each image (`inference.predict.stages.finish_image`: decision, overlay, map) and writes the batch's
    rows as one shard, atomically: a retried task replaces it, never adds to it.

    Args:
        settings: The run's `FinishSettings` (thresholds, `--overlays`, `--save_maps`).
        output_dir: The output folder (`overlays/`, `maps/` exist when wanted).
        shards_dir: Where the shard goes (`<first index>-<digest>.jsonl`, one `{"index", "row"}` a line).

    Returns:
        `{"index": (B,), "decision": (B,)}`: what the driver counts.
    """
    records = []
    for index, name, loaded, outcome in zip(batch["index"], batch["name"], batch["loaded"], batch["outcome"]):
        row = finish_image(pickle.loads(loaded), pickle.loads(outcome), settings, Path(output_dir), str(name))
        records.append((int(index), row))
    write_shard(Path(shards_dir), records)
    return {
        "index": np.asarray([index for index, _ in records], dtype=np.int64),
        "decision": np.asarray([row["decision"] for _, row in records]),
    }


def write_shard(shards_dir: Path, records: list[tuple[int, dict]]) -> Path | None:
    """Writes `(index, row)` records as one JSONL shard named by its first index and a digest of its indices, through
    a temporary file renamed into place: a shard is whole or absent, a retry of the same batch replaces it, and
    batches of other inputs never share a name."""
    if not records:
        return None
    indices = sorted(index for index, _ in records)
    digest = hashlib.sha1(",".join(map(str, indices)).encode()).hexdigest()[:16]
    path = shards_dir / f"{indices[0]:012d}-{digest}{SHARD_SUFFIX}"
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text("".join(json.dumps({"index": i, "row": row}) + "\n" for i, row in records), "utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _picklable(outcome):
    """A backend's exception as a plain `RuntimeError` with the same message (the row says `message(error)`): the
    exception types of a runtime need not unpickle on another node."""
    return RuntimeError(message(outcome)) if isinstance(outcome, Exception) else outcome


def _crash_once_when_asked() -> None:
    """The `CRASH_ONCE_ENV` test hook: ends this process once per armed file, as a killed worker."""
    armed = os.environ.get(CRASH_ONCE_ENV)
    if not armed:
        return
    try:
        os.rename(armed, f"{armed}.fired")  # only one process can claim it
    except OSError:
        return
    os._exit(1)


def _objects(values: list) -> np.ndarray:
    """A batch column of Python objects (here pickled bytes, kept whole: numpy's `S` type would drop trailing
    zero bytes)."""
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


__all__ = ["CRASH_ONCE_ENV", "SHARD_SUFFIX", "ModelSettings", "ModelStage", "finish_batch", "read_batch", "write_shard"]
