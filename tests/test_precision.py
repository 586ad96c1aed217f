"""`--mixed_precision bf16` = the frozen CLIP cast to bf16 once, head and optimizer fp32, checkpoints fp32."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from run_helpers import training_args
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
# Largest relative difference between the fp32 and the bf16 loss at any of the 30 steps (measured: about 1%).
LOSS_TOLERANCE = 0.03
pytestmark = pytest.mark.slow


def _train(workspace: Path, output_dir: Path, precision: str) -> list[float]:
    argv = training_args(workspace, output_dir, "--max_train_steps", "30", "--skip_evaluation")
    # a process of its own: accelerate keeps one mixed-precision setting per process
    command = [sys.executable, "-m", "training.train", *argv, "--mixed_precision", precision]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [entry["loss"] for entry in json.loads((output_dir / "training_log.json").read_text())["log_history"]]


def test_bf16_training_follows_the_fp32_loss_curve_and_saves_fp32(workspace, tmp_path):
    fp32 = np.array(_train(workspace, tmp_path / "fp32", "no"))
    bf16 = np.array(_train(workspace, tmp_path / "bf16", "bf16"))
    assert fp32.shape == bf16.shape == (30,)
    assert np.max(np.abs(bf16 - fp32) / fp32) <= LOSS_TOLERANCE
    saved = load_file(tmp_path / "bf16" / "model.safetensors")
    assert {tensor.dtype for tensor in saved.values()} == {torch.float32}
    source = load_file(workspace / "clip" / "model.safetensors")
    for name, value in source.items():  # the frozen weights are the source's, not bf16-rounded copies
        assert torch.equal(saved[f"clip.{name}"], value), name
