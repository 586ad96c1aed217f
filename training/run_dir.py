"""The output folder of a training run: one run at a time (a lock), never a folder that is not ours, never a
finished run replaced by surprise.

A run follows the ownership rule of every `clipada` command (`inference.output_folder`): it writes only into a new
(or empty) folder or into one `clipada train` wrote, whose marker `.clipada_output.json` lists the entries training
wrote there; a folder holding anything else is refused, even with `--overwrite_output_dir`, and so is a folder that is,
holds or lies inside one of the run's inputs (the CLIP, the dataset, the textures). Nothing is written into a refused
folder. The marker also records whether the run finished (its model is saved):

- a finished run's folder is refused unless `--overwrite_output_dir`, which removes only what training wrote there;
  `--resume_from_checkpoint` continues only an unfinished run;
- an unfinished run's folder (checkpoints, no final model: a preempted, killed or failed run) is resumed with
  `--resume_from_checkpoint latest`; starting over in it needs `--overwrite_output_dir` (two runs' checkpoints never
  mix).

While it runs, a run holds an exclusive lock on `.clipada_run.lock`: an OS file lock (`filelock.FileLock`: `flock` on
Linux and macOS, `msvcrt.locking` on Windows) that the OS releases when its process dies, so the lock of a killed run
is simply taken over. The holder writes its PID and host into `.clipada_run.pid` (a refused run names it); both files
are removed when the run ends.

Example:
    ```python
    >>> with RunDirectory("outputs/run", overwrite=False, resume=None, sources=["data/mvtec"]) as directory:
    ...     train()  # a second run into outputs/run now fails with "... is in use by another training run (PID 1234)"
    ...     directory.record_entries(["model.safetensors", "config.json"])  # before writing them
    ...     directory.mark_finished()
    ```
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

from inference.output_folder import OUTPUT_MARKER, OutputFolderError, check_output_folder, read_marker, safe_name

COMMAND = "clipada train"
LEGACY_RUN_MARKER = ".clipada_run.json"  # what runs of version 0.1 wrote instead of OUTPUT_MARKER
RUN_MARKER = OUTPUT_MARKER
LOCK_FILE = ".clipada_run.lock"
HOLDER_FILE = ".clipada_run.pid"
CHECKPOINTS = "checkpoints"
FINAL_MODEL = "model.safetensors"
STAGING = ".partial_final"  # the final model while it is written (finish.py)
# What a run writes besides the saved model's files (recorded before they are written); "clipada" and "runs" are the
# trackers' logs, the .tmp files what an atomic write leaves when killed midway
RUN_ENTRIES = (
    LOCK_FILE,
    HOLDER_FILE,
    CHECKPOINTS,
    STAGING,
    "training_log.json",
    "training_log.json.tmp",
    f"{OUTPUT_MARKER}.tmp",
    "clipada",
    "runs",
)


class OutputDirError(ValueError):
    """The output folder cannot be used: in use by another run, not ours, a finished run, or not writable."""


class RunDirectory:
    """Claims `output_dir` for one run: checks it (before touching anything), locks it, marks it ours.

    Args:
        output_dir: The run's output folder (created when missing).
        overwrite: `--overwrite_output_dir`: start over in a folder of an earlier run of ours, removing only what
            training wrote there.
        resume: `--resume_from_checkpoint` (None, "latest" or a checkpoint folder).
        sources: The run's local inputs (model, dataset, texture folders): the output folder may be none of them,
            hold none of them, and lie inside none of them.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        overwrite: bool = False,
        resume: str | None = None,
        sources: Sequence[str | os.PathLike] = (),
    ):
        self.path = Path(output_dir)
        self.overwrite = overwrite
        self.resume = resume
        self.sources = [Path(source) for source in sources if source and Path(source).exists()]
        self._lock: FileLock | None = None
        self._marker: dict = {}

    # ------------------------------------------------------------------------------------------ entering, leaving

    def __enter__(self) -> RunDirectory:
        self._check_ownership()  # read-only: a refused folder is never touched
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if self._is_empty():  # a new folder is marked ours before its lock file is created
                self._write_marker({"entries": [], "finished": False})
            self._acquire()
        except OSError as error:
            raise _not_writable(self.path, error) from error
        try:
            self._check_ownership()  # again, now that no other run can change the folder
            marker = self._read_marker()
            self._check_status(marker)
            if self.overwrite:
                self._remove_own_entries(marker)
                marker = {"entries": marker["entries"], "finished": False}
            self._write_marker({**marker, "finished": False})
            (self.path / HOLDER_FILE).write_text(f"{os.getpid()} on {socket.gethostname()}\n")
        except OSError as error:
            self._release()
            raise _not_writable(self.path, error) from error
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._release()

    # ------------------------------------------------------------------------------------------ while running

    def record_entries(self, names: Iterable[str]) -> None:
        """Adds top-level `names` to what training wrote here; call it before writing them."""
        self._write_marker({**self._marker, "entries": sorted({*self._marker.get("entries", ()), *names})})

    def mark_finished(self) -> None:
        """Records that the run's model is saved: the folder now holds a finished run."""
        self._write_marker({**self._marker, "finished": True})

    # ------------------------------------------------------------------------------------------ checks

    def _check_ownership(self) -> None:
        """Refuses a folder that is not ours (or is one of the run's inputs), whatever the flags."""
        if self.path.exists() and not self.path.is_dir():
            raise OutputDirError(f"--output_dir {self.path} exists and is not a folder")
        self._adopt_earlier_version_folder()
        try:
            check_output_folder(self.path, COMMAND, overwrite=True, sources=self.sources)
        except OutputFolderError as error:
            raise OutputDirError(str(error)) from None

    def _adopt_earlier_version_folder(self) -> None:
        """A folder written by version 0.1 (its `.clipada_run.json`, or only an empty lock file a killed run left) is
        ours: it gets the marker of this version, listing what it holds."""
        if not self.path.is_dir() or (self.path / OUTPUT_MARKER).exists():
            return
        names = sorted(path.name for path in self.path.iterdir())
        if _written_by_training_0_1(self.path / LEGACY_RUN_MARKER) or _only_a_stale_lock(self.path, names):
            finished = (self.path / FINAL_MODEL).is_file() and (self.path / "config.json").is_file()
            self._write_marker({"entries": names, "finished": finished})

    def _check_status(self, marker: dict) -> None:
        """A finished run is replaced only with `--overwrite_output_dir` and never resumed; an unfinished run with
        checkpoints is resumed, or started over only with `--overwrite_output_dir`."""
        if marker.get("finished"):
            if self.resume:
                raise OutputDirError(
                    f"--output_dir {self.path} holds a finished run; --resume_from_checkpoint continues only an "
                    f"unfinished one. To train it further, start a new run from it (--model_name_or_path "
                    f"{self.path} --output_dir <new folder>), or start over with --overwrite_output_dir"
                )
            if not self.overwrite:
                raise OutputDirError(
                    f"--output_dir {self.path} holds a finished run (its {FINAL_MODEL}); choose another folder or "
                    "pass --overwrite_output_dir to replace what training wrote there"
                )
            return
        checkpoints = sorted(p.name for p in (self.path / CHECKPOINTS).glob("step_*")) if self._has(CHECKPOINTS) else []
        if self.overwrite and self.resume and self._resumes_inside():
            raise OutputDirError(
                f"--overwrite_output_dir would delete the checkpoint --resume_from_checkpoint {self.resume} resumes "
                f"(in {self.path}); pass only one of them"
            )
        if checkpoints and not self.resume and not self.overwrite:
            raise OutputDirError(
                f"--output_dir {self.path} holds an unfinished run (checkpoints {', '.join(checkpoints[-3:])}); "
                "continue it with --resume_from_checkpoint latest, or start over with --overwrite_output_dir"
            )

    def _resumes_inside(self) -> bool:
        if self.resume == "latest":
            return True
        checkpoint, folder = Path(self.resume).resolve(), self.path.resolve()
        return folder == checkpoint or folder in checkpoint.parents

    # ------------------------------------------------------------------------------------------ files

    def _has(self, name: str) -> bool:
        return (self.path / name).exists()

    def _is_empty(self) -> bool:
        return not any(self.path.iterdir())

    def _read_marker(self) -> dict:
        marker = read_marker(self.path)
        if marker is None:  # checked just before: only a folder emptied meanwhile has none
            return {"entries": [], "finished": False}
        try:
            raw = json.loads((self.path / OUTPUT_MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = {}
        return {"entries": marker["entries"], "finished": raw.get("finished") is True}

    def _write_marker(self, fields: dict) -> None:
        """Writes the marker atomically: `{"written_by": "clipada train", "entries": [...], "finished": ...}`."""
        self._marker = {"finished": False, **fields}
        self._marker["entries"] = sorted({*self._marker.get("entries", ()), *RUN_ENTRIES})
        marker = {"written_by": COMMAND, **self._marker, "pid": os.getpid(), "updated": time.time()}
        temporary = self.path / f"{OUTPUT_MARKER}.tmp"
        temporary.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, self.path / OUTPUT_MARKER)

    def _remove_own_entries(self, marker: dict) -> None:
        """`--overwrite_output_dir`: removes what training wrote here, and nothing else (not the lock we hold); every
        name is checked before anything is removed."""
        where = f"entry of {self.path / OUTPUT_MARKER}"
        kept = (LOCK_FILE, HOLDER_FILE, OUTPUT_MARKER)
        paths = [self.path / safe_name(name, where) for name in marker["entries"] if name not in kept]
        for path in paths:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        (self.path / LEGACY_RUN_MARKER).unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------ the lock

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

    def _holder(self) -> str:
        """The PID and host the lock's holder wrote, or "unknown" while it has not written them yet."""
        try:
            return (self.path / HOLDER_FILE).read_text(errors="replace").strip() or "unknown"
        except OSError:
            return "unknown"

    def _release(self) -> None:
        """Removes the PID and lock files (while still holding the lock), then releases it."""
        if self._lock is None:
            return
        for name in (HOLDER_FILE, LOCK_FILE):  # a run waiting on the removed lock file sees it is gone and retries
            try:
                (self.path / name).unlink(missing_ok=True)
            except OSError:
                pass  # a read-only folder keeps them; the next run takes them over
        self._lock.release()
        self._lock = None


def _not_writable(path: Path, error: OSError) -> OutputDirError:
    return OutputDirError(f"cannot write into --output_dir {path} ({error.strerror or error}); choose another folder")


def _written_by_training_0_1(marker: Path) -> bool:
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("written_by") == "clipada training"
    except (OSError, ValueError, AttributeError):
        return False


def _only_a_stale_lock(folder: Path, names: list[str]) -> bool:
    """The folder holds only the empty lock file (and the PID file) a killed 0.1 run left."""
    if LOCK_FILE not in names or not set(names) <= {LOCK_FILE, HOLDER_FILE}:
        return False
    holder = folder / HOLDER_FILE
    holder_text = holder.read_text(errors="replace") if holder.is_file() else "0 on host"
    return (folder / LOCK_FILE).stat().st_size == 0 and re.fullmatch(r"\d+ on \S*\n?", holder_text) is not None


__all__ = [
    "COMMAND",
    "HOLDER_FILE",
    "LOCK_FILE",
    "RUN_MARKER",
    "STAGING",
    "OutputDirError",
    "RunDirectory",
]
