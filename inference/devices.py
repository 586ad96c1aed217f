"""Devices and CPU threads for every command: `--device` checked up front, and a `--num_threads` default that does
not collapse on a busy machine.

PyTorch uses one thread per core by default. When other processes keep some of those cores busy, its threads
wait for each other at every parallel region (the slowest, preempted thread sets the pace) and a job can run
10-20x slower than with fewer threads. The default here is the number of cores this process may use minus the
cores other processes already keep busy (the 1-minute load average, rounded), and at least 1. Set it explicitly
on shared machines and in containers whose CPU quota is below the visible core count. More threads than the cores
this process may use are capped at that number, with a note. The flags themselves
(`--device`, `--num_threads`) are declared in `inference.command_line`.

Example:
    ```python
    >>> configure_threads(None)  # `--num_threads` not given: the cores not kept busy; returns the number used
    >>> resolve_device(None)  # `--device` not given: cuda when available
    ```
"""

import os
import sys

# the precisions a model can run in (`--dtype`)
DTYPE_NAMES = ("float32", "bfloat16")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_num_threads() -> int:
    """Available cores minus those that other processes keep busy, at least 1."""
    cores = available_cores()
    try:
        busy = round(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, min(cores, cores - busy))


def capped_num_threads(num_threads: int) -> int:
    """`num_threads`, or the cores this process may use when it asks for more (with a note on stderr): threads
    beyond the cores only wait for each other, and a huge number would make the runtime try to start them all.

    Raises:
        ValueError: If `num_threads` is below 1.
    """
    if num_threads < 1:
        raise ValueError(f"--num_threads must be at least 1, got {num_threads}")
    cores = available_cores()
    if num_threads > cores:
        print(
            f"note: --num_threads {num_threads} is more than the {cores} cores this process may use; using {cores}",
            file=sys.stderr,
        )
        return cores
    return num_threads


def configure_threads(num_threads: int | None) -> int:
    """Sets torch's intra-op threads (`num_threads`, at most the available cores, or `default_num_threads()` when
    None); returns the number.

    Raises:
        ValueError: If `num_threads` is below 1.
    """
    num_threads = default_num_threads() if num_threads is None else capped_num_threads(num_threads)
    import torch  # here, so that the torch-free runners of exported models can use `default_num_threads`

    torch.set_num_threads(num_threads)
    return num_threads


def resolve_device(name: str | None = None):
    """`--device` as a `torch.device`; None: `cuda` when a GPU is available, else `cpu`. A CUDA device on a machine
    without one is refused here, with the flag named, instead of failing deep inside CUDA."""
    import torch  # here: the torch-free runners import this module too

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name!r} is not a device name (cpu, cuda, cuda:1, ...)") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is available on this machine; use --device cpu")
    return device


__all__ = [
    "DTYPE_NAMES",
    "available_cores",
    "capped_num_threads",
    "configure_threads",
    "default_num_threads",
    "resolve_device",
]
