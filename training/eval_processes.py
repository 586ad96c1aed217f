"""Evaluation across processes (`accelerate launch --num_processes N -m training.evaluation ...`): each process scores
its own contiguous share of every category, and the main process gathers what the exact metrics need.

The metrics are exact (every pixel's score, no binning), so a mean of per-process metrics would be wrong. Instead each
process other than the main one records the batches it would feed the accumulators (`AnomalyMetrics.update` and any
other accumulator's: maps and masks at the size the metrics use, scores, labels), and the main process replays them
after its own, process by process. Shares are contiguous and in process order, so the main process feeds the
accumulators the same batches in the same order as one process would: the metrics, the saved predictions and the
heatmaps are those of one process. One category is gathered at a time: the main process holds the maps of one
category of the other processes (4 bytes a pixel, plus 1 for the mask) on top of its accumulators.

With one process (no `accelerate launch`, or `--num_processes 1`) every method is the identity and nothing is
imported.

Example:
    ```python
    >>> processes = current_processes()                 # rank and world size from `accelerate launch`
    >>> rows = processes.share(len(category_rows))      # this process's contiguous slice
    >>> metrics = processes.recorder(AnomalyMetrics())  # records on the other processes, is the accumulator on main
    >>> (metrics,), predictions, skip = processes.gather_category([metrics], predictions, non_finite.count)
    ```
"""

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.atomic import atomic_dir


class UpdateRecorder:
    """Stands in for an accumulator on a process other than the main one: keeps every `update` call for the main
    process to replay.

    Args:
        target: The accumulator it stands in for (replayed into on the main process only).
    """

    def __init__(self, target: Any):
        self.target = target
        self.calls: list[tuple[tuple, dict]] = []

    def update(self, *args, **kwargs) -> None:
        self.calls.append((args, kwargs))


@dataclass
class EvalProcesses:
    """The processes of one evaluation and what they exchange.

    Attributes:
        rank: This process's index (0: the main process, which writes the output).
        world_size: How many processes evaluate.
        device: The GPU `accelerate` gave this process (None on the CPU and with one process: `--device` decides).
    """

    rank: int = 0
    world_size: int = 1
    device: Any = None
    _state: Any = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, count: int) -> range:
        """This process's contiguous share of `count` rows (process 0 first; sizes differ by at most one)."""
        return range(count * self.rank // self.world_size, count * (self.rank + 1) // self.world_size)

    def recorder(self, accumulator: Any) -> Any:
        """`accumulator` itself on the main process (it comes first), an [`UpdateRecorder`] on the others; None
        stays None."""
        if accumulator is None or self.is_main:
            return accumulator
        return UpdateRecorder(accumulator)

    def gather_category(
        self, accumulators: Sequence[Any], predictions: dict[str, list], non_finite: int
    ) -> tuple[list[Any], dict[str, list], bool]:
        """The gather step at the end of a category: every process's updates and saved predictions reach the main
        process, in process order.

        Args:
            accumulators: This process's accumulators or recorders ([`recorder`]), in a fixed order; None entries
                are skipped.
            predictions: Lists of per-batch arrays (`save_predictions`) of this process's share.
            non_finite: How many images this process found NaN or infinite so far.

        Returns:
            `(accumulators, predictions, skip)`: on the main process its accumulators with every process's updates
            replayed, and the predictions of all shares in row order; elsewhere what was given. `skip` is True on
            every process when any process found non-finite scores (the category's metrics are then not computed).
        """
        if self.world_size == 1:
            return list(accumulators), predictions, non_finite > 0
        calls = [None if item is None else getattr(item, "calls", []) for item in accumulators]
        gathered = self._gather((calls, predictions))
        skip = any(count > 0 for count in self._all_gather(non_finite))
        if not self.is_main:
            return list(accumulators), predictions, skip
        merged = {key: list(values) for key, values in predictions.items()}
        for other_calls, other_predictions in gathered[1:]:
            for accumulator, recorded in zip(accumulators, other_calls):
                for args, kwargs in recorded or []:
                    accumulator.update(*args, **kwargs)
            for key, values in other_predictions.items():
                merged[key].extend(values)
        return list(accumulators), merged, skip

    def merged(self, counter: Any, fields: Sequence[str] = ("count", "total", "per_category")) -> Any:
        """`counter` (e.g. a `NonFiniteCount`) with the `fields` of every process added up, on every process."""
        if self.world_size == 1:
            return counter
        values = self._all_gather({name: getattr(counter, name) for name in fields})
        for name in fields:
            total = values[0][name]
            for other in values[1:]:
                total = total + other[name]
            setattr(counter, name, total)
        return counter

    def broadcast(self, value: Any) -> Any:
        """The main process's `value`, on every process."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Runs the block on the main process first, then on the others (dataset caches are written once)."""
        if self.world_size == 1:
            yield
            return
        with self._state.main_process_first():
            yield

    @contextlib.contextmanager
    def output_folder(self, target: Path) -> Iterator[Path]:
        """`inference.atomic.atomic_dir(target)` on the main process; every process gets its staging folder (they
        write their own heatmaps there: the folder must be on a file system they share). The folder is swapped in
        once every process is done."""
        if self.world_size == 1:
            with atomic_dir(target) as staging:
                yield staging
            return
        if not self.is_main:
            staging = self.broadcast(None)
            yield staging
            self._state.wait_for_everyone()
            return
        with atomic_dir(target) as staging:
            self.broadcast(staging)
            yield staging
            self._state.wait_for_everyone()

    def _gather(self, value: Any) -> list | None:
        import torch.distributed as dist

        gathered = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered

    def _all_gather(self, value: Any) -> list:
        import torch.distributed as dist

        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered


def current_processes() -> EvalProcesses:
    """The processes of this evaluation: one, unless started by `accelerate launch` (or `torchrun`) with several
    (`WORLD_SIZE` > 1); then `accelerate.PartialState` joins them (gloo on the CPU, nccl on GPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return EvalProcesses()
    import torch
    from accelerate import PartialState

    # without CUDA, cpu=True joins the processes in one gloo group (else each would evaluate everything alone)
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes <= 1:
        raise RuntimeError(
            f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but accelerate joined no process group: launch with "
            "`accelerate launch --multi_gpu --num_processes N` (on a CPU too)"
        )
    # a GPU per process; on the CPU `--device` decides (torch computes on "cpu:0" slightly unlike on "cpu")
    device = state.device if state.device.type != "cpu" else None
    return EvalProcesses(state.process_index, state.num_processes, device, state)


__all__ = ["EvalProcesses", "UpdateRecorder", "current_processes"]
