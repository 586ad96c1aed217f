"""Preemption: SIGTERM (what a cluster sends before it takes the machine) stops training at the next step boundary.

The handler only records the request; the training loop then writes a resumable checkpoint and exits, so the job
continues exactly with `--resume_from_checkpoint latest`. With several processes the request is shared at every
step boundary, so all of them stop after the same step.

Example:
    ```python
    >>> with PreemptionHandler() as preemption:
    ...     for batch in loader:
    ...         step(batch)
    ...         if preemption.requested(accelerator):
    ...             save_checkpoint(...)
    ...             break
    ```
"""

from __future__ import annotations

import signal
from types import FrameType, TracebackType

import torch
from accelerate import Accelerator


class PreemptionHandler:
    """Installs a SIGTERM handler for the duration of a `with` block (the previous handler comes back after)."""

    def __init__(self) -> None:
        self._signalled = False
        self._previous = None

    def __enter__(self) -> PreemptionHandler:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = True

    def requested(self, accelerator: Accelerator) -> bool:
        """True when any process got SIGTERM (a collective call: every process must call it at the same step)."""
        if accelerator.num_processes == 1:
            return self._signalled
        flag = torch.tensor([float(self._signalled)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


__all__ = ["PreemptionHandler"]
