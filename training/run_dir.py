"""The output folder of a training run: one run at a time (a lock), and never a folder that is not ours.

A run writes `.clipada_run.json` (what wrote the folder) into its output folder and holds an exclusive lock on
`.clipada_run.lock` while it runs. The lock is an OS file lock (`fcntl.flock`): the kernel releases it when its
process dies, so a lock file left by a killed run is simply taken over; a live holder's PID is named in the error.

Example:
    ```python
    >>> with RunDirectory("outputs/run", overwrite=False):
    ...     train()  # a second run into outputs/run now fails with "... is in use by PID 1234"
    ```
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

RUN_MARKER = ".clipada_run.json"
LOCK_FILE = ".clipada_run.lock"


class OutputDirError(ValueError):
    """The output folder cannot be used: in use by another run, or a folder this project did not write."""


class RunDirectory:
    """Claims `output_dir` for one run: checks it is ours (or empty, or `overwrite`), locks it, marks it ours.

    Args:
        output_dir: The run's output folder (created when missing).
        overwrite: Accept a non-empty folder that holds no CLIP-ADA run (`--overwrite_output_dir`).
    """

    def __init__(self, output_dir: str | os.PathLike, overwrite: bool = False):
        self.path = Path(output_dir)
        self.overwrite = overwrite
        self._lock_fd: int | None = None

    def __enter__(self) -> RunDirectory:
        if self.path.exists() and not self.path.is_dir():
            raise OutputDirError(f"--output_dir {self.path} exists and is not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._check_ownership()
            (self.path / RUN_MARKER).write_text(
                json.dumps({"written_by": "clipada training", "pid": os.getpid(), "started": time.time()}) + "\n"
            )
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._unlock()

    def _lock(self) -> None:
        descriptor = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise OutputDirError(
                f"--output_dir {self.path} is in use by another training run (PID {holder}); "
                "wait for it to finish or choose another folder"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._lock_fd = descriptor

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the lock; the file stays for the next run to take
            self._lock_fd = None

    def _check_ownership(self) -> None:
        """A folder with our marker, an empty folder, or `overwrite`; anything else is refused."""
        if (self.path / RUN_MARKER).is_file() or self.overwrite:
            return
        foreign = sorted(p.name for p in self.path.iterdir() if p.name != LOCK_FILE)
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise OutputDirError(
                f"--output_dir {self.path} is not empty ({shown}) and holds no CLIP-ADA run; "
                "choose another folder or pass --overwrite_output_dir to write into it"
            )


__all__ = ["LOCK_FILE", "RUN_MARKER", "OutputDirError", "RunDirectory"]
