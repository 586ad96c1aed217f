"""Command lines of the tiny training runs the tests make, a simulated preemption, and scripts run where this
project cannot be imported."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

# Put first in a script: importing the project's packages then fails, as where only a checkpoint is at hand.
_BLOCK_PROJECT = """
import importlib.abc, sys
class BlockProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("modeling_clipada", "processing", "training"):
            raise ImportError(f"{name} is blocked: the checkpoint must not need this project")
sys.meta_path.insert(0, BlockProject())
"""


def run_without_project(script: str, workdir: Path) -> subprocess.CompletedProcess:
    """Runs `script` (dedented) in a fresh Python where modeling_clipada, processing and training cannot be imported,
    offline, with its own transformers module cache under `workdir`."""
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(workdir / "modules")}
    code = _BLOCK_PROJECT + textwrap.dedent(script)
    return subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True)


def training_args(workspace: Path, output_dir: Path, *extra: str) -> list[str]:
    """The command line of a tiny training run on `workspace` into `output_dir`."""
    return [
        "--model_name_or_path",
        str(workspace / "clip"),
        "--dataset_name",
        str(workspace / "data"),
        "--output_dir",
        str(output_dir),
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "0.01",
        "--lr_milestones",
        "2",
        "--num_heatmaps",
        "2",
        *extra,
    ]


def stop_after_steps(monkeypatch, steps: int) -> None:
    """Makes the training loop see a SIGTERM after `steps` optimizer steps of this process (a preemption): it
    writes a checkpoint and the run exits with code 143, unfinished."""
    from training import loop

    class Preempted(loop.PreemptionHandler):
        calls = 0

        def requested(self, accelerator) -> bool:
            Preempted.calls += 1
            return Preempted.calls >= steps

    monkeypatch.setattr(loop, "PreemptionHandler", Preempted)
