"""The `clipada <command>` umbrella: the command list, dispatch by name, usage errors, and a torch-free predict."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from inference.command_line import usage_errors
from training import cli

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command_with_its_description(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    printed = " ".join(capsys.readouterr().out.split())  # argparse wraps the descriptions
    assert exit_info.value.code == 0 and printed.startswith("usage: clipada ")
    for name, (_, summary) in cli.COMMANDS.items():
        assert f" {name} " in printed and " ".join(summary.split()) in printed, name


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_a_command_help_is_its_own_under_the_clipada_name(name, capsys):
    program = sys.argv[0]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: clipada {name} ")
    assert sys.argv[0] == program


def test_predict_help_shows_the_predict_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", "--help"])
    printed = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--model_name_or_path" in printed and "--backend" in printed


@pytest.mark.parametrize("argv", [["fly"], [], ["--device", "cpu"]])
def test_an_unknown_or_missing_command_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2 and "clipada: error: " in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "module", "result"),
    [
        ("train", "training.train", None),
        ("eval", "training.evaluation", {}),
        ("calibrate", "training.calibrate", None),
        ("predict", "inference.predict.command", {"ERROR": 0}),
        ("export", "training.int8_gate", {}),
        ("app", "inference.app.command", None),
        ("prepare-dataset", "training.prepare_dataset", 0),
        ("demo", "training.demo", None),
    ],
)
def test_each_command_runs_its_module_main_with_the_rest_of_the_line(name, module, result, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)  # train's cli leaves early in multi-process runs
    calls = []

    def fake_main(argv=None):
        calls.append((argv, sys.argv[0]))
        return result

    monkeypatch.setattr(importlib.import_module(module), "main", fake_main)
    try:
        cli.main([name, "--output_dir", "out", "image.png"])
    except SystemExit as exit_info:  # prepare-dataset exits with its main's code
        assert exit_info.code == 0
    assert calls == [(["--output_dir", "out", "image.png"], f"clipada {name}")]
    assert cli.COMMANDS[name][0] == module


def test_predict_exits_1_when_an_image_failed(monkeypatch):
    monkeypatch.setattr(importlib.import_module("inference.predict.command"), "main", lambda argv: {"ERROR": 1})
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", "image.png"])
    assert exit_info.value.code == 1


def test_a_bad_flag_value_is_one_error_line_naming_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--per_device_eval_batch_size", "0"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert exit_info.value.code == 2
    assert errors == ["clipada eval: error: argument --per_device_eval_batch_size: must be at least 1, got 0"]


def test_usage_errors_print_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info, usage_errors():
        raise FileNotFoundError("data/mvtec: no such folder")
    assert exit_info.value.code == 2 and capsys.readouterr().err == "error: data/mvtec: no such folder\n"
    with pytest.raises(RuntimeError), usage_errors():  # not bad input: the traceback stays
        raise RuntimeError("a bug")
    with pytest.raises(ValueError), usage_errors(KeyError):  # only the named kinds
        raise ValueError("not named")
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_predict_help_imports_neither_torch_nor_training_code():
    """`clipada predict` is the serving path: where `import torch` fails (a torch-free install), its help works and
    nothing of `training` but the umbrella is imported. (With torch installed, `import transformers` loads it.)"""
    script = (
        "import sys\n"
        "sys.modules['torch'] = None  # `import torch` raises ImportError from here on\n"
        "import training.cli\n"
        "try:\n"
        "    training.cli.main(['predict', '--help'])\n"
        "except SystemExit as exit_info:\n"
        "    assert exit_info.code == 0, exit_info.code\n"
        "assert 'torch.nn' not in sys.modules\n"
        "print(sorted(name for name in sys.modules if name.startswith('training')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: clipada predict ")
    assert result.stdout.strip().splitlines()[-1] == "['training', 'training.cli']"


@pytest.mark.slow
def test_python_m_training_is_the_umbrella():
    result = subprocess.run(
        [sys.executable, "-m", "training", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "prepare-dataset" in result.stdout


@pytest.fixture(scope="module")
def tiny_checkpoint_dir(tmp_path_factory) -> Path:
    from tiny_clip import IMAGE_SIZE, make_tiny_clip

    from modeling_clipada import CLIPADAForAnomalySegmentation
    from processing import CLIPADAImageProcessor

    folder = tmp_path_factory.mktemp("checkpoint")
    CLIPADAForAnomalySegmentation.from_clip(*make_tiny_clip(), feature_layer=2).save_pretrained(folder)
    CLIPADAImageProcessor(size=IMAGE_SIZE).save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--help"],
        ["eval", "--help"],
        ["predict", "part.png", "--model_name_or_path", "CHECKPOINT", "--output_dir", "OUT"],
        ["app", "--model_name_or_path", "CHECKPOINT"],
    ],
)
def test_a_command_that_needs_torch_says_which_extra_to_install(argv, tiny_checkpoint_dir, tmp_path):
    """A torch-free install (`clipada[onnxruntime]`): the commands that need PyTorch, and predict or the app on a
    checkpoint instead of an export, fail with one line naming the extra, exit status 2, no traceback."""
    argv = [
        str(tiny_checkpoint_dir) if arg == "CHECKPOINT" else str(tmp_path / arg) if arg in ("OUT", "part.png") else arg
        for arg in argv
    ]
    Image.new("RGB", (8, 8)).save(tmp_path / "part.png")
    script = (
        "import sys\n"
        "sys.modules['torch'] = None  # `import torch` raises ImportError from here on\n"
        "import training.cli\n"
        "training.cli.main(sys.argv[1:])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: torch is not installed: pip install 'clipada[torch]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_older_scripts_are_the_umbrella_under_another_name(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "main", seen.append)
    monkeypatch.setattr(sys, "argv", ["clipada-prepare-dataset", "--help"])
    cli.aliases.prepare_dataset()
    assert seen == [["prepare-dataset", "--help"]]
    assert {name.replace("_", "-") for name in vars(cli.aliases)} == set(cli.COMMANDS)


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_ctrl_c_in_any_command_is_one_line_and_exit_130(name, monkeypatch, capsys):
    def interrupted(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(cli.COMMANDS[name][0]), "cli", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--output_dir", "out"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 130
    assert err.strip() == f"clipada {name}: interrupted (Ctrl-C)" and "Traceback" not in err


def test_ctrl_c_in_a_real_predict_process_prints_no_traceback(tiny_checkpoint_dir, tmp_path):
    """SIGINT while predict scores a long list of images: one line, exit 130, no KeyboardInterrupt traceback."""
    import signal
    import time

    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for index in range(1500):
        Image.new("RGB", (32, 32), (120, index % 256, 40)).save(images / f"part_{index:04d}.png")
    process = subprocess.Popen(
        [sys.executable, "-m", "training", "predict", str(images), "--model_name_or_path", str(tiny_checkpoint_dir),
         "--output_dir", str(tmp_path / "out"), "--no-overlays", "--num_threads", "1", "--device", "cpu"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    rows = tmp_path / "out" / "predictions.jsonl"
    while not (rows.exists() and rows.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "clipada predict: interrupted (Ctrl-C)" in err
