"""`clipada predict` as a pipeline: loader processes read, the main process runs the model, a writer pool finishes.

```
paths -> [loader workers: read, check, resize]  -bounded->  [main: forward, batch by batch]
      -bounded->  [writer pool: map at the image's size, row, overlay, map file]  -in input order->  CSV + JSONL
```

- Loaders (`num_workers` processes, forked; 0 = read in the main process) each read one image at a time
  ([`inference.predict.stages.load_image`]); at most `loading_bound` images are read ahead of the model.
- The main process stacks a batch, runs the backend once ([`inference.predict.stages.forward`]), hands every image
  to the writer pool and goes on with the next batch.
- Writers (`num_writers` threads; 0 = finish in the main process, batch after batch) bring each map back to its
  image's size, decide, draw and write its files ([`inference.predict.stages.finish_image`]); at most
  `writing_bound` images wait there. Threads, not processes: the work is mostly numpy, scipy, zlib and Pillow,
  which release the GIL for their large arrays, and a process pool would copy every picture once more
  (`benchmarks/results/predict.md` measures both).
- The main process writes the rows in input order, each whole, and flushes them after every batch: the files hold
  a prefix of the inputs at any moment (what `--resume` continues from), and the same inputs give the same files.

Memory is flat at any image count: at most `loading_bound + batch_size + writing_bound` images are held at once.

Example:
    ```python
    >>> stats = PipelineStats()
    >>> counts = run_pipeline(items, names, backend, settings, output_dir, writer, batch_size=8, num_workers=2,
    ...                       num_writers=2, stats=stats)
    >>> stats.loading_peak <= stats.loading_bound
    True
    ```
"""

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from inference.devices import available_cores
from inference.predict.stages import FinishSettings, LoadedImage, finish_image, forward, load_image

WRITER_KINDS = ("thread", "process")


class LoaderError(RuntimeError):
    """A loader process died (killed, out of memory, or crashed by a file's decoder): the rows written so far are
    kept; `--resume` goes on from there."""


@dataclass
class PipelineStats:
    """How full the pipeline's queues got, to check its bounds.

    Attributes:
        loading_bound: Most images read (or being read) ahead of the model.
        writing_bound: Most images waiting for or in the writer pool.
        loading_peak: The most images that were read ahead at once.
        writing_peak: The most images that waited for the writer pool at once.
    """

    loading_bound: int = 0
    writing_bound: int = 0
    loading_peak: int = 0
    writing_peak: int = 0


def default_num_workers() -> int:
    """Loader processes that fit the machine: one core for the main process (the model), up to 4 for reading."""
    return max(0, min(4, available_cores() - 1))


def default_num_writers() -> int:
    """Writer threads: 2 (they share the GIL; a second one overlaps Pillow's and zlib's work with the first)."""
    return 2


def loaded_batches(
    items: Sequence[tuple[int, Path, str | None]],
    processor,
    keep_picture: bool,
    batch_size: int,
    num_workers: int = 0,
    stats: PipelineStats | None = None,
) -> Iterator[list[LoadedImage]]:
    """The images read and preprocessed, batch by batch, in the order of `items`.

    Args:
        items: `(index, path, category)` per image to score, in output order.
        processor: The run's `CLIPADAImageProcessor`.
        keep_picture: Keep each image's uint8 picture for its overlay.
        batch_size: Images per batch.
        num_workers: Loader processes; 0 reads in this process, one batch at a time.
        stats: Records the read-ahead's peak (`loading_peak`) against its bound.

    Yields:
        Lists of up to `batch_size` [`LoadedImage`], in order.

    Raises:
        LoaderError: A loader process died.
    """
    stats = stats if stats is not None else PipelineStats()
    if num_workers == 0:
        stats.loading_bound = batch_size
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            stats.loading_peak = max(stats.loading_peak, len(chunk))
            yield [load_image(index, path, category, processor, keep_picture) for index, path, category in chunk]
        return
    stats.loading_bound = bound = max(2 * batch_size, 2 * num_workers)
    # fork on Linux: instant, and the loaders run no torch (only PIL and numpy); spawn elsewhere
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    pool = ProcessPoolExecutor(
        num_workers, mp_context=context, initializer=_start_loader, initargs=(processor, keep_picture, os.getpid())
    )
    try:
        pending: deque[Future] = deque()
        remaining = iter(items)
        batch: list[LoadedImage] = []
        while True:
            for index, path, category in remaining:
                pending.append(pool.submit(_load, index, path, category))
                if len(pending) >= bound:
                    break
            stats.loading_peak = max(stats.loading_peak, len(pending))
            if not pending:
                break
            try:
                batch.append(pending.popleft().result())
            except BrokenProcessPool as error:
                raise LoaderError(
                    "a loader process died (killed, out of memory, or crashed reading a file); the rows written so "
                    "far are kept: rerun with --resume (with --num_workers 0 to see which file)"
                ) from error
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_LOADER: dict = {}


def _start_loader(processor, keep_picture: bool, parent: int) -> None:
    """A loader process: keeps the processor, leaves Ctrl-C to the main process, and ends when the main process is
    gone (even killed with SIGKILL), so no loader outlives a run."""
    _LOADER.update(processor=processor, keep_picture=keep_picture)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _load(index: int, path: Path, category: str | None) -> LoadedImage:
    return load_image(index, path, category, _LOADER["processor"], _LOADER["keep_picture"])


def run_pipeline(
    items: Sequence[tuple[int, Path, str | None]],
    names: Sequence[str],
    backend,
    settings: FinishSettings,
    output_dir: Path,
    write_row: Callable[[dict], None],
    flush: Callable[[], None],
    batch_size: int = 8,
    num_workers: int = 0,
    num_writers: int = 0,
    writer_kind: str = "thread",
    progress: Callable[[int], None] | None = None,
    stats: PipelineStats | None = None,
) -> Counter:
    """Scores `items` through the pipeline and hands their rows to `write_row` in the order of `items`.

    Args:
        items: `(index, path, category)` per image to score, in output order.
        names: The unique output stem of every index (`inference.predict.inputs.output_names` of all paths).
        backend: Any backend; called in this process only.
        settings: The finish stage's [`FinishSettings`].
        output_dir: The output folder.
        write_row: Writes one row (in input order).
        flush: Called after each batch's rows are written.
        batch_size: Images per backend call.
        num_workers: Loader processes (0: read here).
        num_writers: Writer threads (0: finish here, each batch written before the next forward).
        writer_kind: `thread` or `process` (a process pool; for measuring: the overlay function must pickle).
        progress: Called with the number of rows written at each flush.
        stats: Records the queues' peaks against their bounds.

    Returns:
        How many rows got each decision.
    """
    stats = stats if stats is not None else PipelineStats()
    if writer_kind not in WRITER_KINDS:
        raise ValueError(f"writer_kind {writer_kind!r}: choose one of {', '.join(WRITER_KINDS)}")
    counts: Counter = Counter()
    keep_picture = settings.overlays == "all"
    batches = loaded_batches(items, settings.processor, keep_picture, batch_size, num_workers, stats)
    pool: Executor | None = None
    if num_writers:
        pool = ThreadPoolExecutor(num_writers) if writer_kind == "thread" else ProcessPoolExecutor(num_writers)
    # with a pool: up to two batches finishing while the next one is submitted
    waiting = max(2 * batch_size, 2 * num_writers) if pool else 0
    stats.writing_bound = waiting + batch_size
    pending: deque = deque()

    def write_ready(most: int) -> None:
        """Writes the finished rows at the head of the queue, waiting until at most `most` images wait."""
        written = 0
        while pending and (len(pending) > most or not isinstance(pending[0], Future) or pending[0].done()):
            head = pending.popleft()
            row = head.result() if isinstance(head, Future) else head
            write_row(row)
            counts[row["decision"]] += 1
            written += 1
        if written:
            flush()
            if progress is not None:
                progress(written)

    try:
        for batch in batches:
            outcomes = forward(backend, batch)
            for loaded, outcome in zip(batch, outcomes):
                arguments = (loaded, outcome, settings, output_dir, names[loaded.index])
                pending.append(pool.submit(finish_image, *arguments) if pool else finish_image(*arguments))
            stats.writing_peak = max(stats.writing_peak, len(pending))
            write_ready(waiting)
        write_ready(0)
    finally:
        batches.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return counts


__all__ = [
    "WRITER_KINDS",
    "LoaderError",
    "PipelineStats",
    "default_num_workers",
    "default_num_writers",
    "loaded_batches",
    "run_pipeline",
]
