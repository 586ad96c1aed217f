"""The 0.1 module paths that moved to `inference/` in 0.2: each still works, and warns where Python's default filters
show it (`training.moved`)."""

import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import inference.loading
import training.models

ROOT = Path(__file__).resolve().parents[1]

# old module path -> new module path
ALIASES = {
    "training.deploy": "inference.deploy",
    "training.deploy.runners": "inference.deploy.runners",
    "training.deploy.graph": "inference.deploy.graph",
    "training.predict": "inference.predict",
    "training.export": "inference.deploy.export",
    "training.app": "inference.app",
}


def run_python(*args: str) -> subprocess.CompletedProcess:
    """A fresh interpreter in the repository root, with Python's default warning filters (no -W, no PYTHONWARNINGS)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_importing_each_old_path_warns_at_the_importing_line():
    # one import per line: `<string>:N` says which line, so which alias, each warning points at
    lines = [f"import {old}" for old in ALIASES]
    result = run_python("-c", "\n".join(lines))
    assert result.returncode == 0, result.stderr[-2000:]
    for number, (old, new) in enumerate(ALIASES.items(), start=1):
        assert f"<string>:{number}: FutureWarning: {old} moved to {new} in 0.2" in result.stderr, (old, result.stderr)


def test_the_old_deploy_paths_import_without_torch():
    script = "import sys\nsys.modules['torch'] = None  # `import torch` raises ImportError from here on\n"
    result = run_python(
        "-c", script + "import training.deploy, training.deploy.runners\nassert 'torch.nn' not in sys.modules"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "training.deploy.runners moved to inference.deploy.runners" in result.stderr


@pytest.mark.parametrize(
    ("old", "warnings_expected"),
    [
        (
            "training.predict",
            {"predict.py": "training.predict moved to inference.predict in 0.2 (or run: clipada predict)"},
        ),
        (
            "training.deploy.runners",
            {
                "deploy/__init__.py": "training.deploy moved to inference.deploy in 0.2",  # the package is an alias too
                "deploy/runners.py": "training.deploy.runners moved to inference.deploy.runners in 0.2 "
                "(or run: python -m inference.deploy.runners)",
            },
        ),
    ],
)
def test_running_an_old_path_with_python_m_warns_and_runs_the_new_command(old, warnings_expected):
    result = run_python("-m", old, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:")
    for file, expected in warnings_expected.items():  # nothing but runpy imported it: it points at the alias itself
        assert f"{ROOT / 'training' / file}:5: FutureWarning: {expected}" in result.stderr, result.stderr


@pytest.mark.filterwarnings("ignore:training.*moved to inference:FutureWarning")
@pytest.mark.parametrize(("old", "new"), ALIASES.items())
def test_an_old_path_holds_the_new_modules_objects(old, new):
    alias, module = importlib.import_module(old), importlib.import_module(new)
    assert alias.__all__ == module.__all__  # `from old import *` gives what `from new import *` gives
    for name in [*module.__all__, "cli", "main"]:
        if hasattr(module, name):
            assert getattr(alias, name) is getattr(module, name), name


def test_a_loading_name_from_training_models_warns_and_is_the_inference_loading_one():
    with pytest.warns(
        FutureWarning, match=r"training\.models\.load_clipada_model moved to inference\.loading"
    ) as record:
        from training.models import load_clipada_model
    assert load_clipada_model is inference.loading.load_clipada_model
    assert record[0].filename == __file__  # points at the import above, not at training/models.py


@pytest.mark.parametrize(
    "name",
    [
        "ModelLoadError",
        "add_class_names",
        "check_model_location",
        "load_clipada_model",
        "load_processor",
        "saved_model_type",
    ],
)
def test_every_loading_name_0_1_kept_in_training_models_still_resolves(name):
    with pytest.warns(FutureWarning, match=rf"training\.models\.{name} moved to inference\.loading\.{name}"):
        value = getattr(training.models, name)
    assert value is getattr(inference.loading, name)


def test_an_unknown_name_in_training_models_raises_attribute_error_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="'training.models' has no attribute 'load_nothing'"):
            training.models.load_nothing  # noqa: B018
        assert not hasattr(training.models, "load_with_named_errors_typo")
