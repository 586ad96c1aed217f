"""The built wheel, installed into a fresh virtual environment without the checkout, runs every command."""

import email
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from training.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(command: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> tuple[Path, dict]:
    """A venv holding only the clipada wheel; its dependencies come from this interpreter's site-packages through
    a path entry (whose own .pth files, like an editable install of the checkout, are not processed)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", "outputs", "build", "dist", "*.egg-info", "__pycache__"),
    )
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), "."],
        source,
        dict(os.environ),
    )
    (wheel,) = (root / "dist").glob("clipada-*.whl")
    environment = root / "venv"
    venv.create(environment, with_pip=False)
    python = environment / "bin" / "python"
    site_packages = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site_packages / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", str(wheel)],
        root,
        dict(os.environ),
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(PATH=f"{environment / 'bin'}:{env['PATH']}", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return environment, env


def test_the_wheel_holds_every_package_and_no_checkout_is_on_the_path(wheel_env, tmp_path):
    environment, env = wheel_env
    code = (
        "import modeling_clipada, processing, training, training.data, training.synthesis, training.metrics\n"
        "print(training.__file__)\n"
    )
    location = _run([str(environment / "bin" / "python"), "-c", code], tmp_path, env).stdout.strip()
    assert location.startswith(str(environment)) and not location.startswith(str(REPO))


def test_torch_is_an_install_extra_and_the_base_serves_exports(wheel_env):
    environment, _ = wheel_env
    (wheel,) = (environment.parent / "dist").glob("clipada-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(name))
    requirements = [Requirement(line) for line in metadata.get_all("Requires-Dist")]

    def names(extra: str | None) -> set[str]:
        """The distributions of the base install (None) or of `extra`."""
        if extra is None:
            return {canonicalize_name(r.name) for r in requirements if r.marker is None}
        return {canonicalize_name(r.name) for r in requirements if r.marker and r.marker.evaluate({"extra": extra})}

    assert {"transformers", "huggingface-hub", "safetensors", "numpy", "filelock"} <= names(None)
    assert not names(None) & {"torch", "accelerate", "datasets", "evaluate", "tensorboard", "onnxruntime", "gradio"}
    assert names("torch") == {"torch", "accelerate", "datasets", "evaluate", "tensorboard"}
    assert names("onnxruntime") == {"onnxruntime"} and names("onnx") == {"onnxruntime", "onnx", "onnxscript"}
    assert {"torch", "onnxruntime", "onnx", "openvino", "demo", "dev"} <= set(metadata.get_all("Provides-Extra"))


def test_console_scripts_train_and_evaluate_from_the_wheel(wheel_env, tmp_path):
    environment, env = wheel_env
    demo = _run(["clipada-demo", "--output_dir", str(tmp_path / "demo"), "--max_train_steps", "2"], tmp_path, env)
    assert "| Mean |" in demo.stdout
    model = tmp_path / "demo" / "model"
    arguments = ["--model_name_or_path", str(model), "--dataset_name", str(tmp_path / "demo" / "demo_dataset")]
    evaluation = _run(["clipada-eval", *arguments, "--output_dir", str(tmp_path / "evaluation")], tmp_path, env)
    assert "| Mean |" in evaluation.stdout and (tmp_path / "evaluation" / "metrics.json").is_file()
    for command in ("clipada-train", "clipada-eval", "clipada-prepare-dataset", "clipada-demo", "clipada-calibrate",
                    "clipada-predict"):  # fmt: skip
        assert "usage:" in _run([command, "--help"], tmp_path, env).stdout


def test_the_clipada_command_lists_every_command_and_shows_predicts_help(wheel_env, tmp_path):
    _, env = wheel_env
    usage = _run(["clipada", "--help"], tmp_path, env).stdout
    assert usage.startswith("usage: clipada")
    listed = re.findall(r"^ {4}(\S+)", usage, flags=re.MULTILINE)  # argparse indents each command's name by 4
    assert listed == list(COMMANDS), usage  # the checkout's commands, all in the installed umbrella
    predict = _run(["clipada", "predict", "--help"], tmp_path, env).stdout
    assert predict.startswith("usage: clipada predict")  # the command's own parser, named after the umbrella
    assert "--model_name_or_path" in predict and "--no-overlays" in predict


def test_accelerate_launch_of_the_installed_module(wheel_env, tmp_path):
    environment, env = wheel_env
    python = str(environment / "bin" / "python")
    _run(
        [python, "-m", "training.demo", "--output_dir", str(tmp_path / "demo"), "--max_train_steps", "1"], tmp_path, env
    )
    command = [
        python,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "training.train",
        "--model_name_or_path",
        str(tmp_path / "demo" / "smoke_clip"),
        "--dataset_name",
        str(tmp_path / "demo" / "demo_dataset"),
        "--output_dir",
        str(tmp_path / "run"),
        "--max_train_steps",
        "2",
        "--skip_evaluation",
    ]
    _run(command, tmp_path, env)
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_the_evaluate_module_loads_from_the_wheel(wheel_env, tmp_path):
    environment, env = wheel_env
    code = (
        "import evaluate, numpy as np\n"
        "from training.metrics import EVALUATE_MODULE_PATH\n"
        f"metric = evaluate.load(EVALUATE_MODULE_PATH, cache_dir={str(tmp_path / 'cache')!r})\n"
        "r = metric.compute(predictions=[[[0.9, 0.1], [0.2, 0.3]], [[0.1, 0.2], [0.1, 0.1]]],\n"
        "    references=[[[1, 0], [0, 0]], [[0, 0], [0, 0]]], image_scores=[0.9, 0.2], image_labels=[1, 0])\n"
        "print(r['pixel_auroc'], r['aupro'])\n"
    )
    env = {**env, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    assert _run([str(environment / "bin" / "python"), "-c", code], tmp_path, env).stdout.split() == ["1.0", "1.0"]
