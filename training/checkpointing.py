"""Resumable training checkpoints in formats that cannot execute code: safetensors for tensors, JSON for the rest.

A checkpoint `checkpoints/step_N/` holds only what trains and what a resume needs, never the frozen CLIP:

- `trainable_weights.safetensors`: the trainable parameters by name;
- `optimizer.safetensors` + `training_state.json`: the optimizer's tensors, its parameter groups, the learning-rate
  scheduler, the number of optimizer steps done and the run's fingerprint (what shaped the run, see
  `run_fingerprint`);
- `rng_state_<rank>.safetensors`: each process's torch (CPU and CUDA) generator states, with Python's and numpy's
  generator states as JSON in the file's metadata.

Nothing is unpickled on resume. A checkpoint is written into `.partial_step_N` and renamed when complete, so a
kill or a full disk never leaves a broken `step_N`. The data order needs no state: the sampler is seeded by
(seed, epoch) and the batches already done are skipped.

Example:
    ```python
    >>> save_checkpoint(accelerator, "outputs/run", step=100, model=model, optimizer=optimizer, scheduler=scheduler,
    ...                 fingerprint=fingerprint)
    >>> step = load_checkpoint(accelerator, Path("outputs/run/checkpoints/step_100"), model, optimizer, scheduler)
    ```
"""

from __future__ import annotations

import json
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
) -> Path:
    """Writes `checkpoints/step_<step>` atomically; every process calls it. Returns the folder."""
    checkpoints = Path(output_dir) / CHECKPOINTS_DIR
    final, partial = checkpoints / f"step_{step}", checkpoints / f".partial_step_{step}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
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
            }
            (partial / TRAINING_STATE).write_text(json.dumps(state, indent=2) + "\n")
    except OSError:  # e.g. a full disk: the previous checkpoints stay as they were
        shutil.rmtree(partial, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_dir(partial, final)
    accelerator.wait_for_everyone()
    return final


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

    Raises:
        CheckpointError: Naming the file that is missing or damaged.
    """
    state = read_training_state(checkpoint)
    model = accelerator.unwrap_model(model)
    weights = _load_tensors(checkpoint / TRAINABLE_WEIGHTS)
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        raise CheckpointError(
            f"{checkpoint / TRAINABLE_WEIGHTS} holds {sorted(weights)}, but the model trains {sorted(expected)}"
        )
    optimizer_tensors = _load_tensors(checkpoint / OPTIMIZER_TENSORS)
    try:
        optimizer.load_state_dict(_join_optimizer_state(optimizer_tensors, state["optimizer_param_groups"]))
        scheduler.load_state_dict(_scheduler_state_from_json(state["scheduler"]))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{checkpoint / OPTIMIZER_TENSORS} or {checkpoint / TRAINING_STATE} does not fit this optimizer "
            f"({error}); resume from an earlier checkpoint"
        ) from error
    model.load_state_dict(weights, strict=False)
    _load_rng_state(checkpoint / rng_state_file(accelerator.process_index))
    return int(state["completed_steps"])


def read_training_state(checkpoint: Path) -> dict:
    """The checkpoint's `training_state.json` (step, optimizer groups, scheduler, fingerprint), validated."""
    path = checkpoint / TRAINING_STATE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {checkpoint} is not a complete CLIP-ADA checkpoint")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {state.get('format_version')!r}, expected {FORMAT_VERSION}")
        int(state["completed_steps"])
        state["optimizer_param_groups"], state["scheduler"], state["fingerprint"]  # noqa: B018 (presence check)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is damaged ({error}); resume from an earlier checkpoint") from error
    return state


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; resume from an earlier checkpoint")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is damaged ({error}); resume from an earlier checkpoint") from error


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


def _load_rng_state(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (was the run started with another number of processes?)")
    try:
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata()
            tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (safe_open API)
        version, internal, gauss = json.loads(metadata["python"])
        kind, keys, position, has_gauss, cached = json.loads(metadata["numpy"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path} is damaged ({error}); resume from an earlier checkpoint") from error
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        cuda_states = [
            tensors[f"torch_cuda_{i}"] for i in range(torch.cuda.device_count()) if f"torch_cuda_{i}" in tensors
        ]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


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
    "fingerprint_differences",
    "list_checkpoints",
    "load_checkpoint",
    "read_training_state",
    "resolve_checkpoint",
    "save_checkpoint",
    "trainable_state",
]
