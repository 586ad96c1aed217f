"""The output folder of a training run: one run at a time (a lock), and never a folder that is not ours.

A run writes `.clipada_run.json` (what wrote the folder) into its output folder and holds an exclusive lock on
`.clipada_run.lock` while it runs. The lock is an OS file lock (`filelock.FileLock`: `flock` on Linux and macOS,
`msvcrt.locking` on Windows): the OS releases it when its process dies, so a lock file left by a killed run is simply
taken over. The holder writes its PID and host into `.clipada_run.pid` beside the lock (the lock file itself is
emptied or unreadable to other processes on some platforms), and a refused run names that PID in its error.

Example:
    ```python
    >>> with RunDirectory("outputs/run", overwrite=False):
    ...     train()  # a second run into outputs/run now fails with "... is in use by another training run (PID 1234)"
    ```
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

RUN_MARKER = ".clipada_run.json"
LOCK_FILE = ".clipada_run.lock"
HOLDER_FILE = ".clipada_run.pid"


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
        self._lock: FileLock | None = None

    def __enter__(self) -> RunDirectory:
        if self.path.exists() and not self.path.is_dir():
            raise OutputDirError(f"--output_dir {self.path} exists and is not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        self._acquire()
        try:
            self._check_ownership()
            (self.path / RUN_MARKER).write_text(
                json.dumps({"written_by": "clipada training", "pid": os.getpid(), "started": time.time()}) + "\n"
            )
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._release()

    def _acquire(self) -> None:
        lock = FileLock(self.path / LOCK_FILE, timeout=0)  # one attempt: a held folder is an error, not a wait
        try:
            lock.acquire()
        except Timeout:
            raise OutputDirError(
                f"--output_dir {self.path} is in use by another training run (PID {self._holder()}); "
                "wait for it to finish or choose another folder"
            ) from None
        self._lock = lock
        try:
            (self.path / HOLDER_FILE).write_text(f"{os.getpid()} on {socket.gethostname()}\n")
        except BaseException:
            self._release()
            raise

    def _holder(self) -> str:
        """The PID and host the lock's holder wrote, or "unknown" while it has not written them yet."""
        try:
            return (self.path / HOLDER_FILE).read_text(errors="replace").strip() or "unknown"
        except OSError:
            return "unknown"

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()  # the lock and PID files stay: the next run takes them over
            self._lock = None

    def _check_ownership(self) -> None:
        """A folder with our marker, an empty folder, or `overwrite`; anything else is refused."""
        if (self.path / RUN_MARKER).is_file() or self.overwrite:
            return
        foreign = sorted(p.name for p in self.path.iterdir() if p.name not in (LOCK_FILE, HOLDER_FILE))
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise OutputDirError(
                f"--output_dir {self.path} is not empty ({shown}) and holds no CLIP-ADA run; "
                "choose another folder or pass --overwrite_output_dir to write into it"
            )


__all__ = ["HOLDER_FILE", "LOCK_FILE", "RUN_MARKER", "OutputDirError", "RunDirectory"]
