"""Training runs that must lose nothing and say what is wrong in one line: finished and unfinished run folders,
resumes at and past the last step, damaged training state, full and read-only disks, the Hub offline, launching
several processes, and what a run leaves behind (issue 19, items 5, 9, 17, 18, 19, 20, 22, 25)."""

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from run_helpers import stop_after_steps, training_args
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from inference.output_folder import OUTPUT_MARKER
from training import checkpointing, train
from training.run_dir import HOLDER_FILE, LOCK_FILE

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
QUICK = ("--skip_evaluation", "--calibration_fraction", "0")


def _exit(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    return exit_info.value.code


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (the run's own marker aside)."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != OUTPUT_MARKER
    }


def _steps_logged(folder: Path) -> list[int]:
    return [entry["step"] for entry in json.loads((folder / "training_log.json").read_text())["log_history"]]


def _copy(trained_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


def _preempted_run(workspace: Path, folder: Path, monkeypatch, stop_at: int, *extra: str) -> None:
    """A run of 6 steps (checkpoints every 2) stopped by a simulated SIGTERM after `stop_at` steps."""
    stop_after_steps(monkeypatch, stop_at)
    argv = training_args(workspace, folder, "--max_train_steps", "6", "--checkpointing_steps", "2", *QUICK, *extra)
    assert _exit(argv) == train.PREEMPTED_EXIT_CODE
    monkeypatch.undo()


def _one_line_error(capsys) -> str:
    error = capsys.readouterr().err
    assert "Traceback" not in error, error
    return error.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------- item 5: whose folder


def test_training_into_a_finished_runs_folder_is_refused_and_changes_nothing(workspace, trained_run, tmp_path, capsys):
    run = _copy(trained_run, tmp_path)
    before = _snapshot(run)
    argv = training_args(workspace, run, "--max_train_steps", "3", "--checkpointing_steps", "1", *QUICK)
    assert _exit(argv) == 2
    error = _one_line_error(capsys)
    assert error.startswith(f"error: --output_dir {run} holds a finished run") and "--overwrite_output_dir" in error
    assert _snapshot(run) == before


def test_overwrite_output_dir_replaces_only_what_training_wrote(workspace, trained_run, tmp_path):
    run = _copy(trained_run, tmp_path)
    train.main(training_args(workspace, run, "--max_train_steps", "3", *QUICK, "--overwrite_output_dir"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_3"]  # no step_2 / step_4 of the other
    assert _steps_logged(run) == [1, 2, 3]
    card = (run / "README.md").read_text()  # written in a staging folder, naming the run folder
    assert f'from_pretrained("{run}"' in card and ".partial_final" not in card


def test_a_finished_run_is_never_resumed_and_keeps_its_training_log(workspace, trained_run, tmp_path, capsys):
    run = _copy(trained_run, tmp_path)
    before = _snapshot(run)
    for flags in ([], ["--overwrite_output_dir"]):
        argv = training_args(workspace, run, "--max_train_steps", "4", *QUICK, "--resume_from_checkpoint", "latest")
        assert _exit([*argv, *flags]) == 2
        assert "holds a finished run; --resume_from_checkpoint continues only an unfinished one" in _one_line_error(
            capsys
        )
    assert _snapshot(run) == before and _steps_logged(run) == [1, 2, 3, 4]


def test_a_marker_naming_a_path_outside_is_refused_before_anything_is_removed(workspace, trained_run, tmp_path, capsys):
    run = _copy(trained_run, tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("mine")
    marker = json.loads((run / OUTPUT_MARKER).read_text())
    (run / OUTPUT_MARKER).write_text(json.dumps({**marker, "entries": [*marker["entries"], "../victim"]}))
    before = _snapshot(run)
    assert _exit([*training_args(workspace, run, "--max_train_steps", "1", *QUICK), "--overwrite_output_dir"]) == 2
    assert "'../victim' contains a path separator" in _one_line_error(capsys)
    assert _snapshot(run) == before and (victim / "precious.txt").read_text() == "mine"


@pytest.mark.parametrize("flags", [[], ["--overwrite_output_dir"]])
def test_a_foreign_folder_is_refused_even_with_the_flag_and_not_touched(workspace, tmp_path, capsys, flags):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / LOCK_FILE).write_text("my own lock file")
    (folder / "notes.txt").write_text("my notes")
    times = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    assert _exit([*training_args(workspace, folder, "--max_train_steps", "1", *QUICK), *flags]) == 2
    error = _one_line_error(capsys)
    assert str(folder) in error and "was not written by clipada train" in error
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE, "notes.txt"]
    assert (folder / LOCK_FILE).read_text() == "my own lock file"
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == times


def test_an_unfinished_run_is_resumed_or_started_over_only_when_asked(workspace, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "run"
    _preempted_run(workspace, folder, monkeypatch, stop_at=3)
    before = _snapshot(folder)
    assert _exit(training_args(workspace, folder, "--max_train_steps", "6", "--checkpointing_steps", "2", *QUICK)) == 2
    error = _one_line_error(capsys)
    assert (
        "holds an unfinished run (checkpoints step_2, step_3)" in error and "--resume_from_checkpoint latest" in error
    )
    assert _snapshot(folder) == before


@pytest.mark.parametrize("source", ["dataset", "clip"])
def test_the_output_folder_is_never_an_input(workspace, tmp_path, capsys, source):
    copy = tmp_path / "workspace"
    shutil.copytree(workspace, copy)
    before = _snapshot(copy)
    output_dir = copy / "data" if source == "dataset" else copy / "clip" / "run"
    argv = training_args(copy, output_dir, "--max_train_steps", "1", *QUICK, "--overwrite_output_dir")
    assert _exit(argv) == 2
    assert "the command's own input" in _one_line_error(capsys)
    assert _snapshot(copy) == before


# ---------------------------------------------------------------------------------------------- item 9: the last step


def test_a_run_stopped_at_its_end_resumes_without_training_a_step_more(workspace, tmp_path, monkeypatch):
    # 10 images at batch 4: 3 steps per epoch, so the last step (4) lies off an epoch boundary.
    folder = tmp_path / "run"
    argv = training_args(workspace, folder, "--max_train_steps", "4", "--skip_evaluation")

    def killed(*args, **kwargs):
        raise RuntimeError("SIGTERM during the end-of-run calibration")

    monkeypatch.setattr("training.finish.calibrate_model", killed)
    with pytest.raises(RuntimeError):
        train.main(argv)
    monkeypatch.undo()
    assert not (folder / "model.safetensors").exists()
    for _ in range(2):  # a requeued job may be started again and again
        if (folder / "model.safetensors").exists():
            assert _exit([*argv, "--resume_from_checkpoint", "latest"]) == 2  # finished: never resumed
        else:
            train.main([*argv, "--resume_from_checkpoint", "latest"])
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step_4"]
    assert _steps_logged(folder) == [1, 2, 3, 4]
    straight = tmp_path / "straight"
    train.main(training_args(workspace, straight, "--max_train_steps", "4", "--skip_evaluation"))
    resumed, reference = load_file(folder / "model.safetensors"), load_file(straight / "model.safetensors")
    assert all(torch.equal(resumed[name], reference[name]) for name in reference)


def test_training_log_holds_every_step_after_a_preemption_and_resume(workspace, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    _preempted_run(workspace, folder, monkeypatch, stop_at=3)
    argv = training_args(workspace, folder, "--max_train_steps", "6", "--checkpointing_steps", "2", *QUICK)
    train.main([*argv, "--resume_from_checkpoint", "latest"])
    assert _steps_logged(folder) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("steps", [1e9, 10**9, -5, 0, "3", True, None])
def test_a_bad_completed_steps_is_refused_naming_the_file(workspace, tmp_path, capsys, monkeypatch, steps):
    folder = tmp_path / "run"
    _preempted_run(workspace, folder, monkeypatch, stop_at=3)
    state_file = folder / "checkpoints" / "step_3" / "training_state.json"
    state = json.loads(state_file.read_text())
    state["completed_steps"] = steps
    state_file.write_text(json.dumps(state))
    before = _snapshot(folder)
    argv = training_args(workspace, folder, "--max_train_steps", "6", *QUICK, "--resume_from_checkpoint", "latest")
    assert _exit(argv) == 2
    error = _one_line_error(capsys)
    assert str(folder / "checkpoints" / "step_3") in error
    assert _snapshot(folder) == before


# ---------------------------------------------------------------------------------------------- item 17


def test_fp16_on_a_machine_without_cuda_is_a_clear_error(workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = training_args(workspace, tmp_path / "run", "--max_train_steps", "1", *QUICK, "--mixed_precision", "fp16")
    assert _exit(argv) == 2
    assert "--mixed_precision fp16 needs a CUDA GPU" in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- item 18


def _damage_state(key: str, value):
    def damage(checkpoint: Path) -> None:
        path = checkpoint / "training_state.json"
        state = json.loads(path.read_text())
        target = state
        *parents, last = key.split("/")
        for parent in parents:
            target = target[int(parent) if parent.isdigit() else parent]
        target[last] = value
        path.write_text(json.dumps(state))

    return damage


def _nan_learning_rate(checkpoint: Path) -> None:
    path = checkpoint / "training_state.json"
    path.write_text(path.read_text().replace('"lr": 0.01', '"lr": NaN', 1))


def _wrong_optimizer_shapes(checkpoint: Path) -> None:
    path = checkpoint / "optimizer.safetensors"
    tensors = load_file(path)
    name = next(key for key in tensors if key.endswith("exp_avg"))
    tensors[name] = torch.zeros(3)
    save_file(tensors, path)


def _rng(change):
    def damage(checkpoint: Path) -> None:
        from safetensors import safe_open

        path = checkpoint / "rng_state_0.safetensors"
        with safe_open(path, framework="pt") as file:
            metadata, tensors = file.metadata(), {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
        change(tensors, metadata)
        save_file(tensors, path, metadata=metadata)

    return damage


DAMAGES = {
    "completed_steps -5": _damage_state("completed_steps", -5),
    "NaN learning rate": _nan_learning_rate,
    "negative learning rate": _damage_state("optimizer_param_groups/0/lr", -1.0),
    "scheduler not an object": _damage_state("scheduler", "garbage"),
    "scheduler garbage values": _damage_state("scheduler/last_epoch", "yesterday"),
    "scheduler without its fields": _damage_state("scheduler", {"x": 1}),
    "optimizer groups garbage": _damage_state("optimizer_param_groups", [{"lr": "fast"}]),
    "optimizer tensors of the wrong shape": _wrong_optimizer_shapes,
    "rng state of the wrong size": _rng(lambda t, m: t.update(torch_cpu=torch.zeros(10, dtype=torch.uint8))),
    "rng state missing": _rng(lambda t, m: t.update(other=t.pop("torch_cpu"))),
    "numpy rng garbage": _rng(lambda t, m: m.update(numpy='["MT19937", [1, 2], 0, 0, 0.0]')),
    "rng file missing": lambda checkpoint: (checkpoint / "rng_state_0.safetensors").unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_training_state_is_one_line_naming_the_file(workspace, tmp_path, capsys, monkeypatch, damage):
    folder = tmp_path / "run"
    _preempted_run(workspace, folder, monkeypatch, stop_at=3)
    checkpoint = folder / "checkpoints" / "step_3"
    DAMAGES[damage](checkpoint)
    argv = training_args(workspace, folder, "--max_train_steps", "6", *QUICK, "--resume_from_checkpoint", "latest")
    assert _exit(argv) == 2
    error = _one_line_error(capsys)
    assert error.startswith("error: ") and str(checkpoint) in error
    assert "earlier checkpoint" in error or "is missing" in error


# ---------------------------------------------------------------------------------------------- item 19: full disk


@pytest.mark.parametrize("error", ["safetensors", "oserror"])
def test_a_full_disk_while_checkpointing_leaves_no_partial_checkpoint(workspace, tmp_path, capsys, monkeypatch, error):
    original = checkpointing.save_file

    def save_file(tensors, path, metadata=None):
        if "partial_step_4" in str(path):
            if error == "safetensors":
                raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                      '"No space left on device" })')  # fmt: skip
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpointing, "save_file", save_file)
    folder = tmp_path / "run"
    argv = training_args(workspace, folder, "--max_train_steps", "6", "--checkpointing_steps", "2", *QUICK)
    assert _exit(argv) == 2
    message = _one_line_error(capsys)
    assert "No space left on device" in message and "step_4" in message and "MB free" in message
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step_2"]
    assert str(folder / "checkpoints" / "step_2") in message


def test_a_full_disk_at_the_final_save_keeps_no_half_model_and_resumes(workspace, tmp_path, capsys, monkeypatch):
    from transformers import PreTrainedModel

    def full(self, folder, *args, **kwargs):
        (Path(folder) / "config.json").write_text("{}")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    folder = tmp_path / "run"
    argv = training_args(workspace, folder, "--max_train_steps", "4", "--skip_evaluation")
    assert _exit(argv) == 2
    message = _one_line_error(capsys)
    assert "cannot write the final model" in message and "MB free" in message and "resume_from_checkpoint" in message
    present = sorted(p.name for p in folder.iterdir())
    assert present == [OUTPUT_MARKER, "checkpoints", "training_log.json"], present
    monkeypatch.undo()
    train.main([*argv, "--resume_from_checkpoint", "latest"])
    assert (folder / "model.safetensors").is_file() and _steps_logged(folder) == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------- item 20


def test_a_folder_that_cannot_be_written_is_one_line(workspace, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    original = Path.write_text

    def read_only(self, *args, **kwargs):
        if folder in self.parents:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only)
    assert _exit(training_args(workspace, folder, "--max_train_steps", "1", *QUICK)) == 2
    error = _one_line_error(capsys)
    assert error == f"error: cannot write into --output_dir {folder} (Permission denied); choose another folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_one_line(workspace, tmp_path, capsys):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert _exit(training_args(workspace, folder, "--max_train_steps", "1", *QUICK)) == 2
    finally:
        folder.chmod(0o755)
    assert "Permission denied" in _one_line_error(capsys)


def test_push_to_hub_offline_keeps_the_run_and_says_how_to_push_later(workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    folder = tmp_path / "run"
    argv = training_args(workspace, folder, "--max_train_steps", "2", *QUICK, "--push_to_hub", "--hub_model_id", "me/x")
    assert _exit(argv) == 2
    error = _one_line_error(capsys)
    assert "the run is complete and kept" in error and f"python -m training.hub {folder} me/x" in error
    assert (folder / "model.safetensors").is_file()
    assert json.loads((folder / OUTPUT_MARKER).read_text())["finished"] is True


# ---------------------------------------------------------------------------------------------- item 22: processes


def _command(*words: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(list(words), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_num_processes_launches_accelerate_and_the_users_error_is_the_last_line(workspace, tmp_path):
    # every process fails on the missing dataset, the second one too while it waits for the first: one line remains
    argv = training_args(workspace, tmp_path / "run", "--max_train_steps", "1", *QUICK)
    argv[argv.index("--dataset_name") + 1] = str(tmp_path / "nowhere")
    result = _command(sys.executable, "-m", "training.train", *argv, "--num_processes", "2", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Training with 2 processes" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "nowhere" in lines[-1]
    assert "Traceback" not in result.stderr and sum(line.startswith("error: ") for line in lines) == 1


def test_accelerate_launch_of_two_processes_without_multi_gpu_warns(workspace, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1"]
    launcher += ["--mixed_precision", "no", "--dynamo_backend", "no", "--quiet", "-m", "training.train"]
    result = _command(*launcher, *training_args(workspace, foreign, "--max_train_steps", "1"), cwd=tmp_path)
    assert "Training with 1 process on cpu." in result.stdout
    assert "warning: 2 processes were asked for, but this run uses 1" in result.stderr


# ---------------------------------------------------------------------------------------------- item 25: leftovers


def test_a_run_leaves_no_lock_files_when_it_ends(workspace, tmp_path, capsys, monkeypatch):
    finished = tmp_path / "finished"
    train.main(training_args(workspace, finished, "--max_train_steps", "1", *QUICK))
    preempted = tmp_path / "preempted"
    _preempted_run(workspace, preempted, monkeypatch, stop_at=1)
    failed = tmp_path / "failed"
    argv = training_args(workspace, failed, "--max_train_steps", "1", *QUICK, "--resume_from_checkpoint", "latest")
    assert _exit(argv) == 2
    for folder in (finished, preempted, failed):
        assert not (folder / LOCK_FILE).exists() and not (folder / HOLDER_FILE).exists(), folder


def test_checkpoints_total_limit_keeps_the_newest_and_the_resumed_one(workspace, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    limit = ["--checkpoints_total_limit", "2"]
    _preempted_run(workspace, folder, monkeypatch, 3, *limit)
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step_2", "step_3"]
    argv = training_args(workspace, folder, "--max_train_steps", "6", "--checkpointing_steps", "1", *QUICK, *limit)
    train.main([*argv, "--resume_from_checkpoint", str(folder / "checkpoints" / "step_2")])
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step_2", "step_5", "step_6"]


def test_written_files_follow_the_umask(workspace, tmp_path):
    previous = os.umask(0o027)
    try:
        folder = tmp_path / "run"
        train.main(training_args(workspace, folder, "--max_train_steps", "2", "--checkpointing_steps", "1", *QUICK))
    finally:
        os.umask(previous)
    for path in [folder / "model.safetensors", *(folder / "checkpoints").rglob("*.safetensors")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
