"""`accelerate launch` of `training.evaluation` on several processes gives the metrics, predictions and heatmaps of one
process, and the gather step replays every process's batches in row order."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_predict import _save_checkpoint

from training import evaluation
from training.demo_data import make_demo_dataset
from training.eval_processes import EvalProcesses, UpdateRecorder


@pytest.mark.parametrize("count", [0, 1, 5, 7])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shares_are_contiguous_and_cover_every_row_once(count, world_size):
    shares = [EvalProcesses(rank, world_size).share(count) for rank in range(world_size)]
    assert [row for share in shares for row in share] == list(range(count))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_recorders_stand_in_on_the_other_processes_only():
    accumulator = object()
    assert EvalProcesses(0, 2).recorder(accumulator) is accumulator
    recorder = EvalProcesses(1, 2).recorder(accumulator)
    assert isinstance(recorder, UpdateRecorder) and recorder.target is accumulator
    recorder.update(np.ones(2), mask_available=None)
    assert len(recorder.calls) == 1 and EvalProcesses(1, 2).recorder(None) is None


def test_one_process_gathers_nothing():
    processes, marker = EvalProcesses(), object()
    predictions = {"image_scores": [np.ones(1)]}
    assert processes.gather_category([marker, None], predictions, 0) == ([marker, None], predictions, False)
    assert processes.gather_category([marker], predictions, 2)[2] is True
    assert processes.broadcast(marker) is marker


@pytest.fixture(scope="module")
def evaluation_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny calibrated checkpoint and the demo dataset: 2 categories x 9 test images (3 normal, 3 defect types x 2),
    so that 2 processes get shares of 4 and 5 images, in batches of 2 that do not divide them."""
    root = tmp_path_factory.mktemp("eval_distributed")
    checkpoint = _save_checkpoint(root / "checkpoint", image_threshold=0.5, pixel_threshold=0.5)
    data = make_demo_dataset(root / "data", num_train=1, num_test_good=3, num_test_defect=2, image_size=32)
    return checkpoint, data


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_processes_write_the_evaluation_of_one(evaluation_inputs, tmp_path):
    checkpoint, data = evaluation_inputs
    common = ["--model_name_or_path", str(checkpoint), "--dataset_name", str(data), "--num_threads", "1"]
    common += ["--per_device_eval_batch_size", "2", "--num_heatmaps", "3", "--save_predictions"]
    one, two = tmp_path / "one", tmp_path / "two"
    evaluation.main([*common, "--output_dir", str(one)])
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher += ["--main_process_port", str(_free_port())]
    result = subprocess.run(
        [*launcher, "-m", "training.evaluation", *common, "--output_dir", str(two)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("| Category |") == 1  # only the main process prints the table

    assert json.loads((two / "metrics.json").read_text()) == json.loads((one / "metrics.json").read_text())
    assert (two / "metrics.md").read_text() == (one / "metrics.md").read_text()
    files = sorted(path.relative_to(one).as_posix() for path in one.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(two).as_posix() for path in two.rglob("*") if path.is_file())
    assert sum(name.startswith("heatmaps/") for name in files) == 6  # 3 per category, drawn by either process
    for name in files:
        if name.startswith("heatmaps/"):
            assert (two / name).read_bytes() == (one / name).read_bytes(), name
    for category in ("disc", "weave"):
        first, second = (
            np.load(one / "predictions" / f"{category}.npz"),
            np.load(two / "predictions" / f"{category}.npz"),
        )
        assert sorted(first.files) == sorted(second.files)
        for key in first.files:  # every image, in row order: 9 of them
            np.testing.assert_array_equal(second[key], first[key], err_msg=f"{category}: {key}")
        assert len(first["image_scores"]) == 9


def test_the_gather_step_replays_the_other_shares_after_the_main_one(evaluation_inputs, monkeypatch):
    """Two processes simulated in one: the main process's accumulators, fed its share, then the other's recorded
    batches, compute exactly what one process computes over all rows."""
    from datasets import Dataset

    from inference.loading import load_clipada_model
    from inference.modes import load_processors
    from training.data import load_anomaly_dataset

    checkpoint, data = evaluation_inputs
    model = load_clipada_model(str(checkpoint))
    processor, _ = load_processors(str(checkpoint), None)
    test = load_anomaly_dataset(str(data), categories=["disc"])["test"]
    assert isinstance(test, Dataset)
    alone, _ = evaluation.evaluate_model(model, processor, test, batch_size=2, num_heatmaps=0)

    recorded = {}

    def gather_category(self, accumulators, predictions, non_finite):
        if self.rank == 1:  # the other process: keep what it would send
            recorded["calls"] = [getattr(item, "calls", None) for item in accumulators]
            return list(accumulators), predictions, False
        for accumulator, calls in zip(accumulators, recorded["calls"]):
            for args, kwargs in calls or []:
                accumulator.update(*args, **kwargs)
        return list(accumulators), predictions, False

    monkeypatch.setattr(EvalProcesses, "gather_category", gather_category)
    monkeypatch.setattr(EvalProcesses, "merged", lambda self, counter: counter)
    monkeypatch.setattr(EvalProcesses, "broadcast", lambda self, value: value)
    with torch.no_grad():
        evaluation.evaluate_model(model, processor, test, batch_size=2, num_heatmaps=0, processes=EvalProcesses(1, 2))
        shared, _ = evaluation.evaluate_model(
            model, processor, test, batch_size=2, num_heatmaps=0, processes=EvalProcesses(0, 2)
        )
    assert recorded["calls"][0]  # the other process did record batches
    assert shared == alone
