"""`clipada predict --engine ray`: score images on a Ray cluster with Ray Data, with the rows of the single-process
command (`pip install 'clipada[ray]'`).

Ray Data streams the images through three stages (`inference.predict.ray_stages`): CPU tasks read and preprocess,
a pool of actors runs the model (one per GPU where the cluster has GPUs, else `--ray_concurrency` on the CPU; torch,
ONNX Runtime or OpenVINO), CPU tasks post-process, decide, draw the overlays and write each batch's rows as one shard.
Memory stays flat on the workers: Ray's streaming executor keeps a bounded number of batches in flight (the driver
holds the list of inputs, and one byte per input while it merges).

Exactly once: a worker killed mid-run is restarted and its task retried by Ray (Ray Data's own fault tolerance: model
actors with `max_restarts=-1` and `max_task_retries=-1`, tasks with `max_retries=-1`; they cover the death of a
worker, while our stages turn their own errors into `ERROR` rows). A retried batch rewrites its own shard (a whole
file, renamed into place) and its own overlays, never appending, and the driver merges the shards by input index,
keeping each input's first row, into `predictions.csv`/`.jsonl` in input order. Shards live in a hidden folder
inside the output folder (`.ray-shards`), removed once merged. The output folder, the inputs and the model must be at
the same paths on every node (a shared file system).

`ray.init()` starts Ray on this machine; `RAY_ADDRESS` or `--ray_address` joins a running cluster.

Example:
    ```bash
    pip install 'clipada[ray]'
    clipada predict line3/ --model_name_or_path outputs/run --output_dir outputs/line3 --engine ray
    RAY_ADDRESS=10.0.0.5:6379 clipada predict /nfs/line3/ --model_name_or_path /nfs/run-onnx \\
        --output_dir /nfs/out/line3 --engine ray --ray_concurrency 8
    ```
"""

import argparse
import heapq
import json
import math
import os
import shutil
import socket
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from inference.backends import AnomalyBackend
from inference.command_line import positive_int, usage_errors
from inference.predict.inputs import output_names
from inference.predict.ray_stages import SHARD_SUFFIX, ModelSettings, ModelStage, finish_batch, read_batch
from inference.predict.rows import Thresholds
from inference.predict.stages import OVERLAY_MODES, FinishSettings
from inference.predict.writers import PredictionWriter
from processing import CLIPADAImageProcessor

# The batches' shards, inside the output folder (an entry of predict's ownership marker, so an earlier run's leftovers
# after a kill go with --overwrite_output_dir); removed once merged.
RAY_SHARDS = ".ray-shards"

ENGINES = ("local", "ray")


# at most this many Ray blocks (one per batch below it): millions of inputs make blocks of several batches
MAX_BLOCKS = 20_000


class RayUnavailableError(ValueError):
    """`--engine ray` without Ray Data installed (a usage error)."""


class RayClusterError(ValueError):
    """A Ray cluster that cannot be joined, or that lacks what the flags ask for (a usage error)."""


class RayRunError(RuntimeError):
    """A Ray run that stopped part way or left inputs without a row; the rows it scored are written."""


def import_ray():
    """`ray` and `ray.data`, or a one-line error saying how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise RayUnavailableError(f"--engine ray needs Ray Data ({error}): pip install 'clipada[ray]'") from None
    return ray


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """`--engine local|ray`, `--ray_address` and `--ray_concurrency`."""
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: this process; ray: Ray Data on a Ray cluster (pip install 'clipada[ray]').",
    )
    parser.add_argument(
        "--ray_address",
        help="--engine ray: the cluster to join (host:port); default RAY_ADDRESS, else Ray on this machine.",
    )
    parser.add_argument(
        "--ray_concurrency",
        type=positive_int,
        help="--engine ray: model actors (default: one per GPU of the cluster, else 1; each uses --num_threads CPUs).",
    )


def check_engine_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exits with a usage error for Ray flags without `--engine ray`, `--engine ray` with `--resume` or without Ray
    Data, and a cluster address that accepts no connection."""
    if args.engine != "ray":
        given = [flag for flag in ("ray_address", "ray_concurrency") if getattr(args, flag) is not None]
        if given:
            parser.error(f"--{given[0]} needs --engine ray")
        return
    if getattr(args, "resume", False):
        parser.error("--resume continues a run of --engine local; --engine ray scores every input in one run")
    try:
        import_ray()
        check_reachable(args.ray_address or os.environ.get("RAY_ADDRESS"))  # before any folder is written
    except (RayUnavailableError, RayClusterError) as error:
        parser.error(str(error))


def predict_with_ray_args(
    args: argparse.Namespace,
    paths: list[Path],
    backend: AnomalyBackend,
    processor: CLIPADAImageProcessor,
    thresholds: Thresholds,
    categories: Sequence[str | None] | None = None,
    category_thresholds: Mapping[str, Thresholds] | None = None,
) -> Counter:
    """[`predict_with_ray`] with `clipada predict`'s parsed arguments (`backend` is the one the command loaded, for
    its `image_score_top_k`; each actor loads its own)."""
    model = ModelSettings(args.backend, args.model_name_or_path, args.device, args.dtype, args.num_threads)
    try:
        with usage_errors(RayClusterError):  # a cluster that cannot be joined: one line, exit code 2
            return predict_with_ray(
                paths, model, processor, thresholds, Path(args.output_dir), args.category, args.batch_size,
                args.overlays, args.save_maps, categories, category_thresholds,
                getattr(backend.decision_config, "image_score_top_k", None), args.ray_address, args.ray_concurrency,
            )  # fmt: skip
    except RayRunError as error:  # one line, exit code 1: the rows scored are written
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from error


def predict_with_ray(
    paths: list[Path],
    model: ModelSettings,
    processor: CLIPADAImageProcessor,
    thresholds: Thresholds,
    output_dir: Path,
    category: str | None = None,
    batch_size: int = 8,
    overlays: str = "all",
    map_format: str | None = None,
    categories: Sequence[str | None] | None = None,
    category_thresholds: Mapping[str, Thresholds] | None = None,
    image_score_top_k: int | None = None,
    address: str | None = None,
    concurrency: int | None = None,
) -> Counter:
    """Scores every image on Ray and writes `predictions.csv`/`.jsonl` (input order), `overlays/` and `maps/` into
    `output_dir`, as `inference.predict.command.predict_images` does.

    Args:
        paths: The images, in output order.
        model: How each actor loads the backend.
        processor: The processor in predict's input mode (shipped to the read and finish tasks).
        thresholds: The thresholds every image is decided with (but those of `category_thresholds`).
        output_dir: The existing output folder, on a file system every node sees.
        category: Written in each row and named to the model (else `categories`, one per path).
        batch_size: Images per Ray batch (per backend call).
        overlays: `all`, `ng` (NG images only) or `none`: which images get `overlays/<name>.png`.
        map_format: `png16` or `npz` to write `maps/<name>.<suffix>`, None for none.
        image_score_top_k: The model's `image_score_top_k` (letterbox and tiles; None: the processor's default).
        address: A cluster to join (`--ray_address`); None: `RAY_ADDRESS`, else a local Ray.
        concurrency: Model actors (None: one per GPU of the cluster, else 1).

    Returns:
        How many rows got each decision.

    Raises:
        RayUnavailableError: Ray Data is not installed.
        RayClusterError: The cluster cannot be joined, or has no GPU for `--device cuda`.
        RayRunError: The run stopped, or inputs got no row: the rows scored are written first.
    """
    ray = import_ray()
    if overlays not in OVERLAY_MODES:
        raise ValueError(f"overlays {overlays!r}: choose one of {', '.join(OVERLAY_MODES)}")
    started = not ray.is_initialized()
    if started:
        check_reachable(address or os.environ.get("RAY_ADDRESS"))
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = address or os.environ.get("RAY_ADDRESS") or "a local Ray"
            raise RayClusterError(f"cannot join the Ray cluster at {where}: {str(error).splitlines()[0]}") from None
    shards_dir = Path(output_dir).absolute() / RAY_SHARDS
    shutil.rmtree(shards_dir, ignore_errors=True)  # a killed run's: never merged into this run's rows
    try:
        shards_dir.mkdir()
        for folder, wanted in (("overlays", overlays != "none"), ("maps", map_format is not None)):
            if wanted:
                (output_dir / folder).mkdir(exist_ok=True)
        categories = [category] * len(paths) if categories is None else list(categories)
        settings = FinishSettings.for_run(
            processor, image_score_top_k, thresholds, category_thresholds, overlays, map_format
        )
        dataset = _pipeline(
            ray,
            _items(paths, categories),
            model,
            settings,
            Path(output_dir).absolute(),
            shards_dir,
            batch_size,
            concurrency,
        )
        stopped = None
        try:
            with tqdm(total=len(paths), unit="img", desc="predict (ray)") as progress:
                for summary in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                    progress.update(len(summary["index"]))
        except Exception as error:  # noqa: BLE001 - whatever stopped Ray, the rows scored so far are merged first
            stopped = error
        counts, missing = merge_shards(shards_dir, output_dir, len(paths))
        if stopped is not None or missing:
            reason = f"the Ray run stopped ({_first_line(stopped)})" if stopped is not None else "the Ray run ended"
            raise RayRunError(
                f"{reason}: {len(missing)} of {len(paths)} images got no row (first: {paths[missing[0]]}); the "
                f"{len(paths) - len(missing)} rows scored are in {output_dir / 'predictions.csv'}; run again into a "
                "new folder (or with --overwrite_output_dir)"
                if missing
                else f"{reason}, yet every image got its row: {output_dir / 'predictions.csv'}"
            ) from stopped
        return counts
    finally:
        shutil.rmtree(shards_dir, ignore_errors=True)
        if started:
            ray.shutdown()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Raises `RayClusterError` at once when a `host:port` cluster address accepts no connection (Ray itself would
    retry for minutes); other forms (None, `auto`, `ray://...`) are left to `ray.init`."""
    if not address or "://" in address or address.count(":") != 1:
        return
    host, port = address.rsplit(":", 1)
    if not port.isdigit():
        raise RayClusterError(f"--ray_address {address}: expected host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise RayClusterError(f"cannot join the Ray cluster at {address}: {error.strerror or error}") from None


def _items(paths: list[Path], categories: list[str | None]) -> list[dict]:
    """One Ray row per input: its index, the path as given, the absolute path the workers read, the category ("" for
    none) and its output name."""
    names = output_names(paths)
    return [
        {"index": index, "path": str(path), "source": os.path.abspath(path), "category": category or "", "name": name}
        for index, (path, category, name) in enumerate(zip(paths, categories, names))
    ]


def _pipeline(
    ray,
    items: list[dict],
    model: ModelSettings,
    settings: FinishSettings,
    output_dir: Path,
    shards_dir: Path,
    batch_size: int,
    concurrency: int | None,
):
    """The lazy Ray Dataset: read (tasks) -> model (actor pool) -> finish (tasks), one summary batch per shard."""
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # shards come in input order: the merge holds few rows
    context.enable_progress_bars = False
    blocks = min(MAX_BLOCKS, max(1, math.ceil(len(items) / batch_size)))
    dataset = ray.data.from_items(items, override_num_blocks=blocks)
    actors = _actor_resources(ray, model, concurrency)
    # readers: a task pool as large as the cluster's CPUs, never the actor pool's size (Ray would fuse reading into
    # the model actors, and the model would wait for each batch's files)
    readers = max(1, int(ray.cluster_resources().get("CPU", 1)))
    readers += readers == actors["compute"].max_size
    dataset = dataset.map_batches(
        read_batch, batch_size=batch_size, batch_format="numpy", num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=readers),
        fn_kwargs={"processor": settings.processor, "keep_picture": settings.overlays != "none"},
    )  # fmt: skip
    dataset = dataset.map_batches(
        ModelStage, batch_size=batch_size, batch_format="numpy", fn_constructor_kwargs={"settings": model}, **actors
    )
    return dataset.map_batches(
        finish_batch, batch_size=batch_size, batch_format="numpy", num_cpus=1,
        fn_kwargs={"settings": settings, "output_dir": str(output_dir), "shards_dir": str(shards_dir)},
    )  # fmt: skip


def _actor_resources(ray, model: ModelSettings, concurrency: int | None) -> dict:
    """`compute` (a fixed actor pool), `num_gpus` and `num_cpus` of the model actors: one per GPU of the cluster
    for torch without `--device cpu`, else `concurrency` (default 1) actors of `--num_threads` (default 1) CPUs each.

    Raises:
        RayClusterError: `--device cuda...` on a cluster without GPUs.
    """
    gpus = int(ray.cluster_resources().get("GPU", 0))
    wants_gpu = model.device not in (None, "cpu") and model.device.startswith("cuda")
    if wants_gpu and not gpus:
        raise RayClusterError(f"--device {model.device}: the Ray cluster has no GPU; drop --device or add GPU nodes")
    on_gpu = gpus > 0 and model.backend in (None, "torch") and (model.device is None or wants_gpu)
    if on_gpu:
        return {"compute": ray.data.ActorPoolStrategy(size=concurrency or gpus), "num_gpus": 1, "num_cpus": 1}
    return {"compute": ray.data.ActorPoolStrategy(size=concurrency or 1), "num_cpus": model.num_threads or 1}


def merge_shards(shards_dir: Path, output_dir: Path, num_inputs: int) -> tuple[Counter, list[int]]:
    """Writes `predictions.csv`/`.jsonl` from the shards: every input index once (the first row read wins over a
    retried task's copy), in input order.

    Shards are read in the order of their first index; a row is held back only until the rows before it are
    written, so memory stays small when shards come in input order.

    Args:
        num_inputs: How many inputs there are (indices `0 .. num_inputs - 1`).

    Returns:
        `(counts, missing)`: rows per decision, and the indices that got no row (their rows are not written; the
        rows after a missing one are written in order after it).
    """
    seen = np.zeros(num_inputs, dtype=bool)
    held: list[tuple[int, dict]] = []
    counts: Counter = Counter()
    next_index = 0
    with PredictionWriter(output_dir) as writer:
        for index, row in _shard_rows(shards_dir):
            if seen[index]:
                continue
            seen[index] = True
            heapq.heappush(held, (index, row))
            while held and held[0][0] == next_index:
                _, ready = heapq.heappop(held)
                writer.write(ready)
                counts[ready["decision"]] += 1
                next_index += 1
        for _, row in sorted(held, key=lambda record: record[0]):  # after a lost row: the rest, in order
            writer.write(row)
            counts[row["decision"]] += 1
    return counts, np.flatnonzero(~seen).tolist()


def _shard_rows(shards_dir: Path) -> Iterator[tuple[int, dict]]:
    """`(index, row)` of every shard, shards in the order of their first index."""
    shards = sorted(shards_dir.glob(f"*{SHARD_SUFFIX}"), key=lambda path: path.name)
    for shard in shards:
        with open(shard, encoding="utf-8") as file:
            for line in file:
                record = json.loads(line)
                yield int(record["index"]), record["row"]


__all__ = [
    "ENGINES",
    "MAX_BLOCKS",
    "RayClusterError",
    "RayRunError",
    "RayUnavailableError",
    "add_engine_arguments",
    "check_engine_arguments",
    "check_reachable",
    "import_ray",
    "merge_shards",
    "predict_with_ray",
    "predict_with_ray_args",
]
