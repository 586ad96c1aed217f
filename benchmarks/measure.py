"""The benchmarks' instruments: timing in interleaved rounds (torch.utils.benchmark) and the peak memory of one call.

Example:
    ```python
    >>> samples = time_in_rounds({"bare": bare_call, "clipada": clipada_call}, rounds=7, min_run_time=0.25)
    >>> [c / b for c, b in zip(samples["clipada"], samples["bare"])]  # one ratio per round
    >>> peak_memory(clipada_call, torch.device("cpu"))  # {"peak_mib": ..., "extra_mib": ...}
    ```
"""

import ctypes
import datetime
import gc
import os
import platform
import threading
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from torch.utils import benchmark

MIB = 2**20
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def time_in_rounds(
    calls: dict[str, Callable[[], object]], rounds: int, min_run_time: float, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of every callable: one sample per round, the callables interleaved.

    Every round samples each callable once, in an order rotated by one per round, so that a drift of the
    machine's speed hits a model and its reference alike and a ratio taken round by round cancels it. A sample
    is `torch.utils.benchmark.Timer.blocked_autorange(min_run_time)`: it warms up while choosing how many calls
    one timed block holds, times blocks until `min_run_time` has passed (synchronising the accelerator around
    each), and gives the mean time per call over the blocks (the mean, not the median: a call whose cost varies,
    such as the synthesis, which leaves half the images normal, costs its mean). The timers run with
    `torch.get_num_threads()` threads.

    Returns:
        `{name: [seconds per call in round 0, round 1, ...]}`.
    """
    threads = torch.get_num_threads()
    timers = {
        name: benchmark.Timer("call()", globals={"call": call}, num_threads=threads) for name, call in calls.items()
    }
    for call in calls.values():
        for _ in range(warmup):
            call()
    names, samples = list(calls), {name: [] for name in calls}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(timers[name].blocked_autorange(min_run_time=min_run_time).mean)
    return samples


def memory_method(device: torch.device) -> str:
    """How `peak_memory` measures on this device and machine."""
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated"
    if not _STATUS.exists():
        return "unavailable"
    try:
        _CLEAR_REFS.write_text("5")  # resets the resident-set high-water mark VmHWM (Linux, own process)
        return "VmHWM"
    except OSError:
        return "VmRSS sampled every ms"


def peak_memory(call: Callable[[], object], device: torch.device) -> dict[str, float | None]:
    """Peak MiB during one call, and its rise over the memory in use just before (what the call itself needs).

    CPU: the process's resident set (Python, libraries and every model alive count in the peak, not in the rise);
    freed heap is handed back first (`malloc_trim`). CUDA: allocated tensors, not the caching allocator's reserve.
    """
    gc.collect()
    method = memory_method(device)
    if method == "unavailable":
        call()
        return {"peak_mib": None, "extra_mib": None}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device) / MIB
        torch.cuda.reset_peak_memory_stats(device)
        call()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / MIB
    else:
        _malloc_trim()
        base = _status_mib("VmRSS")
        if method == "VmHWM":
            _CLEAR_REFS.write_text("5")
            call()
            peak = _status_mib("VmHWM")
        else:
            peak = _sampled_peak(call)
    return {"peak_mib": round(peak, 1), "extra_mib": round(peak - base, 1)}


def _status_mib(key: str) -> float:
    for line in _STATUS.read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0]) / 1024
    raise KeyError(key)


def _sampled_peak(call: Callable[[], object]) -> float:
    """The largest VmRSS a thread sees every millisecond during the call."""
    peak, done = [_status_mib("VmRSS")], threading.Event()

    def sample() -> None:
        while not done.wait(0.001):
            peak[0] = max(peak[0], _status_mib("VmRSS"))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        call()
    finally:
        done.set()
        thread.join()
    return max(peak[0], _status_mib("VmRSS"))


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _malloc_trim() -> None:
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def tune_glibc_malloc() -> str:
    """Keeps freed heap memory in the process (no mmap for large blocks, no trimming); returns what was done.

    With glibc's defaults a training step frees its activations, glibc hands the pages back to the kernel and the
    next step page-faults them in again, zero-filled: a cost that depends on what ran before, not on the model.
    The `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647` environment variables do the same.
    """
    libc = _libc()
    m_trim_threshold, m_mmap_max = -1, -4
    if libc is not None and hasattr(libc, "mallopt"):
        if libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**31 - 1):
            return "glibc mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)"
    return "unchanged"


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            return next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    """What the figures depend on: date, hardware, threads, library versions, the memory method."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "cpu": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "memory_method": memory_method(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


__all__ = ["cpu_model_name", "environment", "memory_method", "peak_memory", "time_in_rounds", "tune_glibc_malloc"]
