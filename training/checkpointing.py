"""Resumable training checkpoints in formats that cannot execute code: safetensors for tensors, JSON for the rest.

A checkpoint `checkpoints/step_N/` holds only what trains and what a resume needs, never the frozen CLIP:

- `trainable_weights.safetensors`: the trainable parameters by name;
- `optimizer.safetensors` + `training_state.json`: the optimizer's tensors, its parameter groups, the learning-rate
  scheduler, the number of optimizer steps done and the run's fingerprint (what shaped the run, see
  `run_fingerprint`);
- `rng_state_<rank>.safetensors`: each process's torch (CPU and CUDA) generator states, with Python's and numpy's
  generator states as JSON in the file's metadata;
- the loss and learning rate of every step so far (`log_history` in `training_state.json`), so that a resumed run's
  `training_log.json` holds every step.

Nothing is unpickled on resume, and everything is checked before anything is restored: a damaged value (a negative
step, a NaN learning rate, a scheduler or optimizer state that does not fit, a generator state of the wrong size) is
a `CheckpointError` naming the file. A checkpoint is written into `.partial_step_N` and renamed when complete; any
error (a kill, a full disk, safetensors' own errors) leaves no `.partial_step_N` and no broken `step_N`, and the
latest complete checkpoint stays "latest". Written files follow the umask, as any other file. The data order needs
no state: the sampler is seeded by (seed, epoch) and the batches already done are skipped.

Example:
    ```python
    >>> save_checkpoint(accelerator, "outputs/run", step=100, model=model, optimizer=optimizer, scheduler=scheduler,
    ...                 fingerprint=fingerprint)
    >>> step = load_checkpoint(accelerator, Path("outputs/run/checkpoints/step_100"), model, optimizer, scheduler)
    ```
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from inference.atomic import replace_dir

CHECKPOINTS_DIR = "checkpoints"
TRAINABLE_WEIGHTS = "trainable_weights.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
TRAINING_STATE = "training_state.json"
FORMAT_VERSION = 1
# what an optimizer's parameter group and the scheduler's state must hold (torch versions add others)
_REQUIRED_STATE_KEYS = {"lr", "initial_lr", "betas", "eps", "weight_decay", "params", "milestones", "gamma",
                        "base_lrs", "last_epoch"}  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: missing, damaged, or of another run. The message names the file."""


def rng_state_file(rank: int) -> str:
    return f"rng_state_{rank}.safetensors"


# ---------------------------------------------------------------------------------------------- saving


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    fingerprint: dict[str, Any],
    log_history: list[dict] | None = None,
) -> Path:
    """Writes `checkpoints/step_<step>` atomically; every process calls it. Returns the folder.

    Args:
        log_history: The `{"step", "loss", "lr"}` entries of every step so far.

    Raises:
        OSError, SafetensorError: When a file cannot be written (e.g. a full disk); `.partial_step_<step>` is then
            removed and the earlier checkpoints are as they were.
    """
    checkpoints = Path(output_dir) / CHECKPOINTS_DIR
    final, partial = checkpoints / f"step_{step}", checkpoints / f".partial_step_{step}"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        accelerator.wait_for_everyone()
        _save_rng_state(partial / rng_state_file(accelerator.process_index))
        if accelerator.is_main_process:
            save_file(trainable_state(accelerator.unwrap_model(model)), partial / TRAINABLE_WEIGHTS)
            tensors, groups = _split_optimizer_state(optimizer.state_dict())
            save_file(tensors, partial / OPTIMIZER_TENSORS)
            state = {
                "format_version": FORMAT_VERSION,
                "completed_steps": step,
                "optimizer_param_groups": groups,
                "scheduler": _scheduler_state_to_json(scheduler.state_dict()),
                "num_processes": accelerator.num_processes,
                "fingerprint": fingerprint,
                "log_history": list(log_history or []),
            }
            (partial / TRAINING_STATE).write_text(json.dumps(state, indent=2) + "\n")
    except BaseException:  # a full disk raises OSError or SafetensorError: the earlier checkpoints stay as they were
        shutil.rmtree(partial, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        follow_umask(partial)
        replace_dir(partial, final)
    accelerator.wait_for_everyone()
    return final


def checkpoint_size(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """About how many bytes one checkpoint takes: the trainable weights, their optimizer state, the generators."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    optimizer_state = sum(
        value.numel() * value.element_size()
        for values in optimizer.state_dict()["state"].values()
        for value in values.values()
        if isinstance(value, torch.Tensor)
    )
    return weights + optimizer_state + 64 * 1024


def follow_umask(path: Path) -> None:
    """Gives `path` (a file, or a folder and everything in it) the permissions a new file gets under the umask:
    safetensors writes its files readable by their owner only."""
    umask = os.umask(0)
    os.umask(umask)
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        if not item.is_symlink():
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~umask)


def prune_checkpoints(output_dir: str | Path, keep: int, protected: Path | None = None) -> list[Path]:
    """`--checkpoints_total_limit`: removes the oldest complete checkpoints beyond the newest `keep`, never
    `protected` (the one this run resumed from). Returns the removed folders."""
    checkpoints = list_checkpoints(output_dir)
    removable = [path for path in checkpoints[: max(0, len(checkpoints) - keep)] if path != protected]
    for path in removable:
        shutil.rmtree(path, ignore_errors=True)
    return removable


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, detached, contiguous, on the CPU."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def _save_rng_state(path: Path) -> None:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"torch_cuda_{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    metadata = {
        "python": json.dumps([version, list(internal), gauss]),
        "numpy": json.dumps([kind, keys.tolist(), position, has_gauss, cached]),
    }
    save_file(tensors, path, metadata=metadata)


def _split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """`optimizer.state_dict()` -> tensors named `<param index>.<name>` and JSON-able parameter groups."""
    tensors = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {index}.{name} is a {type(value).__name__}, not a tensor")
            tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
    return tensors, state["param_groups"]


def _scheduler_state_to_json(state: dict) -> dict:
    state = dict(state)
    if isinstance(state.get("milestones"), Counter):  # MultiStepLR
        state["milestones"] = sorted(state["milestones"].elements())
    return state


# ---------------------------------------------------------------------------------------------- loading


def load_checkpoint(
    accelerator: Accelerator,
    checkpoint: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> int:
    """Restores a checkpoint written by `save_checkpoint`; returns the number of optimizer steps done.

    Every file is read and checked against this run's model, optimizer and scheduler before anything is restored.

    Raises:
        CheckpointError: Naming the file that is missing or damaged.
    """
    state = read_training_state(checkpoint)
    model = accelerator.unwrap_model(model)
    weights = _load_tensors(checkpoint / TRAINABLE_WEIGHTS)
    _check_weights(checkpoint / TRAINABLE_WEIGHTS, weights, model)
    optimizer_tensors = _load_tensors(checkpoint / OPTIMIZER_TENSORS)
    _check_optimizer_tensors(checkpoint / OPTIMIZER_TENSORS, optimizer_tensors, optimizer, state["completed_steps"])
    path = checkpoint / TRAINING_STATE
    _check_like(path, "optimizer_param_groups", state["optimizer_param_groups"], optimizer.state_dict()["param_groups"])
    _check_like(path, "scheduler", state["scheduler"], _scheduler_state_to_json(scheduler.state_dict()))
    _check_scheduler_position(path, state)
    generators = _read_rng_state(checkpoint / rng_state_file(accelerator.process_index))
    try:
        optimizer.load_state_dict(_join_optimizer_state(optimizer_tensors, state["optimizer_param_groups"]))
        scheduler.load_state_dict(_scheduler_state_from_json(state["scheduler"]))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{checkpoint / OPTIMIZER_TENSORS} or {path} does not fit this optimizer ({error}); resume from an earlier "
            "checkpoint"
        ) from error
    model.load_state_dict(weights, strict=False)
    _restore_rng_state(generators)
    return state["completed_steps"]


def read_training_state(checkpoint: Path) -> dict:
    """The checkpoint's `training_state.json` (step, optimizer groups, scheduler, fingerprint, log), validated:
    `completed_steps` a positive integer, no NaN or infinity, the log's steps within the checkpoint's."""
    path = checkpoint / TRAINING_STATE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {checkpoint} is not a complete CLIP-ADA checkpoint")
    try:
        state = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
        if not isinstance(state, dict):
            raise ValueError(f"a JSON {type(state).__name__}, not an object")
        if state.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {state.get('format_version')!r}, expected {FORMAT_VERSION}")
        steps = state["completed_steps"]
        if type(steps) is not int or steps < 1:
            raise ValueError(f"completed_steps {steps!r} is not a positive whole number of steps")
        for name, kind in (("optimizer_param_groups", list), ("scheduler", dict), ("fingerprint", dict)):
            if not isinstance(state[name], kind):
                raise ValueError(f"{name} is a {type(state[name]).__name__}, not a {kind.__name__}")
        if "log_history" in state:  # absent from the checkpoints of version 0.1
            state["log_history"] = _checked_log(state["log_history"], steps)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is damaged ({error}); resume from an earlier checkpoint") from error
    return state


def _check_scheduler_position(path: Path, state: dict) -> None:
    """The scheduler has stepped once per process for every optimizer step at most (fp16 may skip some)."""
    last, processes = state["scheduler"].get("last_epoch"), state.get("num_processes", 1)
    if type(processes) is not int or processes < 1:
        raise CheckpointError(f"{path} is damaged (num_processes {processes!r}); resume from an earlier checkpoint")
    if type(last) is int and not 0 <= last <= state["completed_steps"] * processes:
        raise CheckpointError(
            f"{path} is damaged (scheduler.last_epoch {last} does not fit completed_steps "
            f"{state['completed_steps']}); resume from an earlier checkpoint"
        )


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _checked_log(log: object, steps: int) -> list[dict]:
    if not isinstance(log, list) or not all(isinstance(entry, dict) for entry in log):
        raise ValueError("log_history is not a list of entries")
    numbers = [entry.get("step") for entry in log]
    if any(type(number) is not int or not 1 <= number <= steps for number in numbers):
        raise ValueError(f"log_history names steps outside 1..{steps}")
    return log


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; resume from an earlier checkpoint")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path} is damaged ({error}); resume from an earlier checkpoint") from error


def _check_weights(path: Path, weights: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    expected = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(weights) != set(expected):
        raise CheckpointError(f"{path} holds {sorted(weights)}, but the model trains {sorted(expected)}")
    for name, value in weights.items():
        problem = _tensor_problem(value, expected[name].shape)
        if problem:
            raise CheckpointError(f"{path}: {name} {problem}; resume from an earlier checkpoint")


def _check_optimizer_tensors(
    path: Path, tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, steps: int
) -> None:
    """Each tensor `<param index>.<name>` belongs to a trained parameter and has its shape (`step`: a scalar, at
    most the checkpoint's number of steps)."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or int(index) >= len(parameters) or not name:
            raise CheckpointError(f"{path}: {key!r} names no parameter of this optimizer; resume from an earlier one")
        expected = torch.Size([]) if name == "step" else parameters[int(index)].shape
        problem = _tensor_problem(value, expected)
        if problem is None and name == "step" and not 0 <= value.item() <= steps:
            problem = f"is {value.item():g}, beyond the checkpoint's {steps} steps"
        if problem:
            raise CheckpointError(f"{path}: {key} {problem}; resume from an earlier checkpoint")


def _tensor_problem(value: torch.Tensor, shape: torch.Size) -> str | None:
    if value.shape != shape:
        return f"has shape {tuple(value.shape)}, expected {tuple(shape)}"
    if not value.is_floating_point():
        return f"is {value.dtype}, not floating point"
    if not torch.isfinite(value).all():
        return "holds NaN or infinite values"
    return None


def _check_like(path: Path, field: str, saved: object, current: object, where: str = "") -> None:
    """`saved` (from JSON) has `current`'s structure: the same keys, list lengths and kinds of value; numbers finite."""
    where = where or field

    def damaged(problem: str) -> CheckpointError:
        return CheckpointError(f"{path} is damaged ({where} {problem}); resume from an earlier checkpoint")

    if isinstance(current, dict):
        if not isinstance(saved, dict) or not _REQUIRED_STATE_KEYS & set(current) <= set(saved):
            shown = sorted(saved) if isinstance(saved, dict) else repr(saved)
            raise damaged(f"is {shown}, expected the keys {sorted(_REQUIRED_STATE_KEYS & set(current))}")
        for key in set(current) & set(saved):  # other keys differ between torch versions
            _check_like(path, field, saved[key], current[key], f"{where}.{key}")
    elif isinstance(current, (list, tuple)):
        if not isinstance(saved, list) or len(saved) != len(current):
            raise damaged(f"is {saved!r}, expected {len(current)} values")
        for index, (saved_item, current_item) in enumerate(zip(saved, current, strict=True)):
            _check_like(path, field, saved_item, current_item, f"{where}[{index}]")
    elif isinstance(current, bool) or current is None or isinstance(current, str):
        if type(saved) is not type(current) and not (current is None and saved is None):
            raise damaged(f"is {saved!r}, expected {type(current).__name__}")
    elif isinstance(current, (int, float)):
        if isinstance(saved, bool) or not isinstance(saved, (int, float)) or not math.isfinite(saved):
            raise damaged(f"is {saved!r}, not a finite number")
        if isinstance(current, int) and not isinstance(saved, int):
            raise damaged(f"is {saved!r}, not a whole number")
        if where.endswith(("lr", "initial_lr", "base_lrs", "_last_lr")) or "base_lrs[" in where or "_last_lr[" in where:
            if saved < 0:
                raise damaged(f"is {saved!r}, a negative learning rate")


def _join_optimizer_state(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def _scheduler_state_from_json(state: dict) -> dict:
    state = dict(state)
    if isinstance(state.get("milestones"), list):
        state["milestones"] = Counter(state["milestones"])
    return state


def _read_rng_state(path: Path) -> tuple:
    """The generator states of `_save_rng_state`, each checked by loading it into a fresh generator."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (was the run started with another number of processes?)")
    try:
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (safe_open API)
        version, internal, gauss = json.loads(metadata["python"])
        kind, keys, position, has_gauss, cached = json.loads(metadata["numpy"])
        python_state = (version, tuple(internal), gauss)
        numpy_state = (kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached)
        random.Random().setstate(python_state)
        np.random.RandomState().set_state(numpy_state)
        torch.Generator().set_state(tensors["torch_cpu"])
    except (
        SafetensorError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        RuntimeError,
        OverflowError,
        IndexError,
    ) as error:
        raise CheckpointError(f"{path} is damaged ({error}); resume from an earlier checkpoint") from error
    cuda_states = [tensors[f"torch_cuda_{i}"] for i in range(_cuda_devices()) if f"torch_cuda_{i}" in tensors]
    return path, tensors["torch_cpu"], cuda_states, python_state, numpy_state


def _cuda_devices() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _restore_rng_state(generators: tuple) -> None:
    path, cpu_state, cuda_states, python_state, numpy_state = generators
    try:
        torch.set_rng_state(cpu_state)
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
    except RuntimeError as error:
        raise CheckpointError(f"{path} is damaged ({error}); resume from an earlier checkpoint") from error
    random.setstate(python_state)
    np.random.set_state(numpy_state)


# ---------------------------------------------------------------------------------------------- choosing


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints `checkpoints/step_N`, oldest first (partial writes are never named step_N)."""
    folder = Path(output_dir) / CHECKPOINTS_DIR
    found = [p for p in folder.glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def resolve_checkpoint(output_dir: str | Path, resume_from_checkpoint: str) -> Path:
    """'latest' -> the highest complete `checkpoints/step_N`; anything else must be a checkpoint folder."""
    if resume_from_checkpoint != "latest":
        path = Path(resume_from_checkpoint)
        if not path.is_dir():
            raise CheckpointError(f"--resume_from_checkpoint {path} is not a folder")
        return path
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        raise CheckpointError(f"--resume_from_checkpoint latest: no checkpoint in {Path(output_dir) / CHECKPOINTS_DIR}")
    return checkpoints[-1]


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fingerprint fields whose values differ, each as `name: saved -> current`."""
    names = sorted(set(saved) | set(current))
    return [
        f"{name}: {saved.get(name)!r} -> {current.get(name)!r}"
        for name in names
        if saved.get(name) != current.get(name)
    ]


__all__ = [
    "CHECKPOINTS_DIR",
    "TRAINABLE_WEIGHTS",
    "CheckpointError",
    "checkpoint_size",
    "fingerprint_differences",
    "follow_umask",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "read_training_state",
    "resolve_checkpoint",
    "save_checkpoint",
    "trainable_state",
]
