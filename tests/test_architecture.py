"""The import rules of docs/architecture.md, checked on every file: training -> inference -> modeling_clipada /
processing, remote code self-contained, and the serving path free of torch where an export runs."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REMOTE_CODE_IMPORTS = {"transformers", "torch", "numpy", "PIL", "huggingface_hub", "safetensors"}
# the only inference modules that import torch when they are imported
TORCH_MODULES = {
    "inference/torch_backend.py",
    "inference/deploy/graph.py",
    "inference/deploy/graph_memory.py",  # part of the graph, imported by graph.py alone
    "inference/deploy/export.py",
}


def imported_modules(file: Path, module_level_only: bool = False) -> list[tuple[str, int]]:
    """`(top-level name, relative level)` of every import in `file` (module level only: not in function bodies)."""
    found, pending = [], list(ast.parse(file.read_text(encoding="utf-8")).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append(((node.module or "").split(".")[0], node.level))
        if module_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        pending += list(ast.iter_child_nodes(node))
    return found


def python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", ["inference", "modeling_clipada", "processing"])
def test_nothing_below_training_imports_training(package):
    offenders = [
        str(file.relative_to(ROOT))
        for file in python_files(package)
        if any(name == "training" and level == 0 for name, level in imported_modules(file))
    ]
    assert not offenders


@pytest.mark.parametrize("package", ["modeling_clipada", "processing"])
def test_remote_code_imports_only_its_own_folder_and_its_libraries(package):
    for file in python_files(package):
        for name, level in imported_modules(file):
            if level == 0:
                assert name in sys.stdlib_module_names or name in REMOTE_CODE_IMPORTS, (file.name, name)


def test_only_the_torch_backend_and_the_exporter_import_torch_when_imported():
    for file in python_files("inference"):
        relative = file.relative_to(ROOT).as_posix()
        imports_torch = any(name == "torch" for name, _ in imported_modules(file, module_level_only=True))
        assert imports_torch == (relative in TORCH_MODULES), relative


def test_the_serving_path_of_exports_imports_without_torch():
    """Where `import torch` fails, everything `clipada predict` and `clipada app` need for an export imports."""
    script = (
        "import sys\n"
        "sys.modules['torch'] = None  # `import torch` raises ImportError from here on\n"
        "import inference.predict, inference.app.model, inference.app.results, inference.deploy.runners\n"
        "import inference.scoring, modeling_clipada.decisions, processing, training.cli\n"
        "from modeling_clipada import CLIPADAConfig\n"
        "assert 'torch.nn' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
