"""Training and evaluation against tampered checkpoints, foreign folders, concurrent runs, faults and signals."""

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from run_helpers import training_args
from safetensors.torch import load_file

from inference.output_folder import OUTPUT_MARKER
from training import checkpointing, evaluation, train
from training.run_dir import HOLDER_FILE, LOCK_FILE, OutputDirError, RunDirectory

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _exit_code(function, argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        function(argv)
    return exit_info.value.code


class _Payload:
    """Unpickling this writes the marker file: proof that code from a checkpoint ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code from the checkpoint ran"))


def _copy_run(trained_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    (copy / LOCK_FILE).unlink(missing_ok=True)
    return copy


def _unfinished_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the shared run as if it had been stopped at its end, before it was marked finished: resumable."""
    copy = _copy_run(trained_run, tmp_path)
    marker = json.loads((copy / OUTPUT_MARKER).read_text())
    (copy / OUTPUT_MARKER).write_text(json.dumps({**marker, "finished": False}))
    return copy


# ---------------------------------------------------------------------------------------------- code execution


def test_resume_never_unpickles_anything_in_a_checkpoint(workspace, trained_run, tmp_path, capsys):
    run = _unfinished_copy(trained_run, tmp_path)
    checkpoint = run / "checkpoints" / "step_4"
    marker = tmp_path / "marker.txt"
    payload = pickle.dumps(_Payload(marker))
    # accelerate's own file names too: a loader that reached for any of them would run the payload
    planted = [p.name for p in checkpoint.iterdir()] + [
        "custom_checkpoint_0.pkl",
        "random_states_0.pkl",
        "optimizer.bin",
        "scheduler.bin",
        "sampler.bin",
    ]
    for name in planted:
        (checkpoint / name).write_bytes(payload)
        torch.save(_Payload(marker), checkpoint / f"{name}.pt")
    argv = training_args(workspace, run, "--max_train_steps", "6", "--skip_evaluation")
    code = _exit_code(train.main, [*argv, "--resume_from_checkpoint", str(checkpoint)])
    assert code == 2 and "training_state.json is damaged" in capsys.readouterr().err
    assert not marker.exists()


def test_checkpoint_holds_only_safetensors_and_json(trained_run):
    files = sorted(p.name for p in (trained_run / "checkpoints" / "step_4").iterdir())
    assert files == ["optimizer.safetensors", "rng_state_0.safetensors", "trainable_weights.safetensors",
                     "training_state.json"]  # fmt: skip


# ---------------------------------------------------------------------------------------------- data loss


def test_a_foreign_non_empty_output_dir_is_refused_and_left_untouched(workspace, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "README.md").write_text("my notes")
    (folder / "config.json").write_text("{}")
    for flags in ([], ["--overwrite_output_dir"]):  # the flag replaces only what training wrote: nothing here
        argv = training_args(workspace, folder, "--max_train_steps", "1", "--skip_evaluation", *flags)
        code = _exit_code(train.main, argv)
        error = capsys.readouterr().err
        assert code == 2 and str(folder) in error and "even with --overwrite_output_dir" in error
        assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json"]
        assert (folder / "README.md").read_text() == "my notes" and (folder / "config.json").read_text() == "{}"


def test_a_second_run_into_a_locked_folder_stops_naming_the_holder(workspace, tmp_path, capsys):
    folder = tmp_path / "run"
    with RunDirectory(folder):
        code = _exit_code(train.main, training_args(workspace, folder, "--max_train_steps", "1"))
    error = capsys.readouterr().err
    assert code == 2 and str(folder) in error and f"PID {os.getpid()}" in error
    assert not (folder / "model.safetensors").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(workspace, tmp_path):
    folder = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder.mkdir()
    (folder / LOCK_FILE).write_text("")
    (folder / HOLDER_FILE).write_text(f"{dead.stdout.strip()} on somewhere\n")
    train.main(training_args(workspace, folder, "--max_train_steps", "1", "--skip_evaluation"))
    assert (folder / "model.safetensors").is_file()


def test_the_lock_of_a_killed_run_is_taken_over_and_a_live_one_names_its_pid(tmp_path):
    folder = tmp_path / "run"
    holder = "from training.run_dir import RunDirectory\nimport sys, time\nwith RunDirectory(sys.argv[1]):\n"
    holder += "    print('locked', flush=True)\n    time.sleep(300)\n"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", holder, str(folder)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirError, match=f"in use by another training run \\(PID {process.pid} on "):
            RunDirectory(folder).__enter__()
    finally:
        process.kill()
        process.wait()
    with RunDirectory(folder):
        assert (folder / HOLDER_FILE).read_text().startswith(f"{os.getpid()} on ")


# ---------------------------------------------------------------------------------------------- silent wrong results


def test_latest_refuses_a_checkpoint_of_another_run_naming_the_differences(workspace, trained_run, tmp_path, capsys):
    run = _unfinished_copy(trained_run, tmp_path)
    argv = training_args(workspace, run, "--max_train_steps", "6", "--skip_evaluation", "--learning_rate", "0.5")
    code = _exit_code(train.main, [*argv, "--resume_from_checkpoint", "latest"])
    error = capsys.readouterr().err
    assert code == 2 and "learning_rate: 0.01 -> 0.5" in error
    before = load_file(trained_run / "model.safetensors")
    assert all(torch.equal(before[k], v) for k, v in load_file(run / "model.safetensors").items())


def test_an_explicit_checkpoint_of_another_run_resumes_with_a_warning(workspace, trained_run, tmp_path, caplog):
    run = _unfinished_copy(trained_run, tmp_path)
    checkpoint = run / "checkpoints" / "step_2"
    argv = training_args(workspace, run, "--max_train_steps", "3", "--skip_evaluation", "--seed", "7")
    train.main([*argv, "--resume_from_checkpoint", str(checkpoint)])
    assert "seed: 42 -> 7" in caplog.text


# ---------------------------------------------------------------------------------------------- clear errors


@pytest.mark.parametrize("damaged", ["optimizer.safetensors", "rng_state_0.safetensors", "training_state.json"])
def test_damaged_checkpoint_files_are_named_with_a_hint(workspace, trained_run, tmp_path, capsys, damaged):
    run = _unfinished_copy(trained_run, tmp_path)
    path = run / "checkpoints" / "step_4" / damaged
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    argv = training_args(workspace, run, "--max_train_steps", "6", "--skip_evaluation")
    code = _exit_code(train.main, [*argv, "--resume_from_checkpoint", "latest"])
    error = capsys.readouterr().err
    assert code == 2 and str(path) in error and "earlier checkpoint" in error
    assert "Traceback" not in error


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(workspace, tmp_path, capsys, monkeypatch):
    original, calls = checkpointing.save_file, []

    def save_file(tensors, path, metadata=None):
        calls.append(path)
        if "partial_step_4" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpointing, "save_file", save_file)
    folder = tmp_path / "run"
    argv = training_args(workspace, folder, "--max_train_steps", "6", "--checkpointing_steps", "2")
    code = _exit_code(train.main, argv)
    error = capsys.readouterr().err
    assert code == 2 and "No space left on device" in error and "step_4" in error
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step_2"]
    assert len(list((folder / "checkpoints" / "step_2").iterdir())) == 4


def test_a_typo_in_the_model_path_says_the_folder_does_not_exist(workspace, tmp_path, capsys):
    argv = training_args(workspace, tmp_path / "run")
    argv[argv.index("--model_name_or_path") + 1] = str(tmp_path / "clip-vit-typo")
    assert _exit_code(train.main, argv) == 2
    error = capsys.readouterr().err
    assert "no such folder" in error and "clip-vit-typo" in error


def _eval(workspace: Path, model: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        str(model),
        "--dataset_name",
        str(workspace / "data"),
        "--output_dir",
        str(tmp_path / "evaluation"),
        *extra,
    ]


def test_eval_refuses_a_plain_clip_checkpoint(workspace, tmp_path, capsys):
    assert _exit_code(evaluation.main, _eval(workspace, workspace / "clip", tmp_path)) == 2
    assert "is a 'clip' checkpoint, not one of this library's (CLIP-ADA, AnomalyCLIP" in capsys.readouterr().err


def test_eval_without_a_processor_config_asks_for_image_size(workspace, trained_run, tmp_path, capsys):
    run = _copy_run(trained_run, tmp_path)
    (run / "preprocessor_config.json").unlink()
    assert _exit_code(evaluation.main, _eval(workspace, run, tmp_path)) == 2
    assert "--image_size" in capsys.readouterr().err
    metrics = evaluation.main(_eval(workspace, run, tmp_path, "--image_size", "32", "--num_heatmaps", "0"))
    assert set(metrics["per_category"]) == {"disc", "weave"}


@pytest.mark.parametrize("case", ["no weights", "truncated weights"])
def test_eval_of_a_broken_checkpoint_names_the_file(workspace, trained_run, tmp_path, capsys, case):
    run = _copy_run(trained_run, tmp_path)
    weights = run / "model.safetensors"
    if case == "no weights":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:1000])
    assert _exit_code(evaluation.main, _eval(workspace, run, tmp_path)) == 2
    error = capsys.readouterr().err
    assert str(run) in error and "Traceback" not in error


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_eval_on_cuda_without_a_gpu_is_a_clear_error(workspace, trained_run, tmp_path, capsys):
    assert _exit_code(evaluation.main, _eval(workspace, trained_run, tmp_path, "--device", "cuda")) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_eval_names_the_image_whose_mask_has_another_size(trained_run, tmp_path, capsys):
    import datasets
    from PIL import Image

    from training.data import anomaly_features

    image, mask = Image.new("RGB", (32, 32), "gray"), Image.new("L", (30, 32), 255)
    row = {"image": image, "mask": mask, "label": 1, "category": "disc", "defect_type": "scratch"}
    row["image_path"] = "disc/test/scratch/007.png"
    features = anomaly_features()
    rows = [{name: row[name] for name in features}]
    split = datasets.Dataset.from_list(rows, features=features)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(tmp_path / "data")
    argv = _eval(tmp_path, trained_run, tmp_path)
    assert _exit_code(evaluation.main, argv) == 2
    assert "disc/test/scratch/007.png: mask size 30x32 differs from image size 32x32" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- interruptions


def _launch(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "training.train", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_sigterm_checkpoints_and_a_resume_is_bit_identical(workspace, tmp_path):
    steps = ["--max_train_steps", "60", "--skip_evaluation", "--checkpointing_steps", "3"]
    process = _launch(training_args(workspace, tmp_path / "preempted", *steps), tmp_path)
    _wait_for(tmp_path / "preempted" / "checkpoints" / "step_3", process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == train.PREEMPTED_EXIT_CODE, stderr[-2000:]
    stopped_at = max(int(p.name[5:]) for p in (tmp_path / "preempted" / "checkpoints").glob("step_*"))
    assert 3 <= stopped_at < 60 and not (tmp_path / "preempted" / "model.safetensors").exists()
    train.main(training_args(workspace, tmp_path / "preempted", *steps, "--resume_from_checkpoint", "latest"))
    train.main(training_args(workspace, tmp_path / "straight", *steps))
    resumed = load_file(tmp_path / "preempted" / "model.safetensors")
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


def test_ctrl_c_prints_one_line_and_exits_130(workspace, tmp_path):
    argv = training_args(workspace, tmp_path / "run", "--max_train_steps", "100000", "--skip_evaluation")
    process = _launch([*argv, "--checkpointing_steps", "2"], tmp_path)
    _wait_for(tmp_path / "run" / "checkpoints" / "step_2", process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130
    assert "Traceback" not in stderr and "interrupted: training stopped" in stderr
    assert json.loads((tmp_path / "run" / "checkpoints" / "step_2" / "training_state.json").read_text())
