"""`--num_threads` on every command, and a default that leaves busy cores alone."""

import pytest
import torch

from inference import predict
from inference.deploy import export, runners
from inference.devices import configure_threads, default_num_threads
from training import calibrate, demo, evaluation, prepare_dataset, train


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_default_subtracts_the_cores_other_processes_keep_busy(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr("os.getloadavg", lambda: (2.6, 0.0, 0.0))
    assert default_num_threads() == 5
    monkeypatch.setattr("os.getloadavg", lambda: (30.0, 0.0, 0.0))
    assert default_num_threads() == 1


def test_configure_threads_sets_torch_and_refuses_zero():
    assert configure_threads(1) == 1 and torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="--num_threads"):
        configure_threads(0)


@pytest.mark.parametrize("module", [train, evaluation, calibrate, demo, prepare_dataset, predict, export])
def test_every_command_takes_num_threads(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(["--help"])
    assert exit_info.value.code == 0 and "--num_threads" in capsys.readouterr().out


@pytest.mark.slow
def test_training_uses_the_given_number_of_threads(workspace, trained_run, tmp_path, caplog):
    from run_helpers import training_args

    argv = training_args(workspace, tmp_path / "run", "--max_train_steps", "1", "--skip_evaluation")
    train.main([*argv, "--num_threads", "1"])
    assert "threads=1 " in caplog.text


@pytest.mark.parametrize("module", [train, evaluation, calibrate, demo, prepare_dataset, predict, export, runners])
def test_every_command_refuses_fewer_than_one_thread(module, capsys):
    parse = module.cli if module is runners else module.parse_args
    with pytest.raises(SystemExit) as exit_info:
        parse(["--num_threads", "0"])
    assert exit_info.value.code == 2 and "--num_threads: must be at least 1" in capsys.readouterr().err


def test_the_torch_free_runner_takes_num_threads(capsys):
    with pytest.raises(SystemExit) as exit_info:
        runners.cli(["--help"])
    assert exit_info.value.code == 0 and "--num_threads" in capsys.readouterr().out
