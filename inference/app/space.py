"""A ready-to-push Hugging Face Space for one checkpoint: app.py, requirements.txt, README.md and the app's code.

The Space runs the same page as `python -m inference.app`. Its folder holds the project modules the page imports
(found by following the imports of `inference.app.model` and `inference.app.ui`), and requirements.txt installs
exactly the third-party packages those modules import, with this project's version bounds.

Example:
    ```python
    >>> write_space(Path("space"), "user/clipada-mvtec", examples=[Path("line3/crack.png")])
    >>> sorted(path.name for path in Path("space").iterdir())
    ['README.md', 'app.py', 'examples', 'modeling_clipada', 'processing', 'requirements.txt', 'training']
    ```
"""

import ast
import importlib.metadata
import shutil
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from inference.atomic import atomic_dir

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOCAL_PACKAGES = ("modeling_clipada", "processing", "inference", "training")
SPACE_ENTRY_MODULES = ("inference.app.model", "inference.app.ui")
SPACE_README = """---
title: Anomaly inspection
emoji: 🔍
colorFrom: blue
colorTo: gray
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
license: apache-2.0
models:
  - {model_id}
short_description: OK/NG anomaly inspection with {title_model}
---

# Anomaly inspection with `{model_id}`

Drop one or several images: the page shows the overlay, the raw anomaly map, the image score, the OK/NG decision
with the checkpoint's calibrated threshold and the anomalous regions' boxes. The sliders redraw masks and decisions
without running the model again; the results table downloads as CSV (the columns of `clipada-predict`).

Written by `python -m inference.app --write_space` of the clipada project; the folders `modeling_clipada/`,
`processing/` and `training/` hold the project code the page runs. Run it locally with
`pip install -r requirements.txt && python app.py`.
"""
SPACE_APP = '''"""Hub Space: anomaly inspection with {model_id} (written by `python -m inference.app --write_space`)."""

from pathlib import Path

import torch

from inference.app.model import checkpoint_examples, folder_examples, load_served_model
from inference.app.ui import build_demo, launch_options

MODEL_ID = "{model_id}"
EXAMPLES = Path(__file__).resolve().parent / "examples"

served = load_served_model(MODEL_ID, device="cuda" if torch.cuda.is_available() else "cpu")
examples = checkpoint_examples(MODEL_ID) + (folder_examples(EXAMPLES) if EXAMPLES.is_dir() else [])
demo = build_demo(served, examples=examples)

if __name__ == "__main__":
    demo.launch(allowed_paths=[str(EXAMPLES)], **launch_options())
'''


def write_space(output_dir: Path, model_id: str, examples: list[Path] = ()) -> Path:
    """Writes the Space folder for `model_id` (written whole, or not at all).

    Args:
        output_dir: A new or empty folder.
        model_id: The checkpoint's Hub id (`user/name`) the Space loads.
        examples: Images copied to the Space's `examples/` (the checkpoint's own `examples/` are offered too).

    Returns:
        `output_dir`.

    Raises:
        ValueError: `output_dir` holds files, or `model_id` is not a Hub id; naming them.
    """
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ValueError(f"--write_space {output_dir} is not an empty folder; choose a new one")
    if model_id.count("/") != 1 or Path(model_id).exists() or any(part.strip() == "" for part in model_id.split("/")):
        raise ValueError(f"--model_id {model_id!r} must be the checkpoint's Hub id user/name (a Space cannot read "
                         "a local folder: push the checkpoint first)")  # fmt: skip
    try:  # the Space runs the Gradio version the app was tested with here
        gradio_version = importlib.metadata.version("gradio")
    except importlib.metadata.PackageNotFoundError:
        raise ValueError("--write_space needs Gradio installed: pip install 'clipada[demo]'") from None
    with atomic_dir(output_dir) as staging:
        for module_file in local_module_files(SPACE_ENTRY_MODULES):
            target = staging / module_file.relative_to(PROJECT_ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(module_file, target)
        if (PROJECT_ROOT / "LICENSE").is_file():  # the copied code's licence travels with it
            shutil.copyfile(PROJECT_ROOT / "LICENSE", staging / "LICENSE")
        (staging / "app.py").write_text(SPACE_APP.format(model_id=model_id), encoding="utf-8")
        (staging / "requirements.txt").write_text("\n".join(space_requirements()) + "\n", encoding="utf-8")
        readme = SPACE_README.format(gradio_version=gradio_version, model_id=model_id, title_model=model_id)
        (staging / "README.md").write_text(readme, encoding="utf-8")
        if examples:
            (staging / "examples").mkdir()
            for index, example in enumerate(examples):
                shutil.copyfile(example, staging / "examples" / f"{index:03d}_{Path(example).name}")
    return output_dir


def local_module_files(entry_modules: tuple[str, ...]) -> list[Path]:
    """The project's source files that `entry_modules` import, directly or not (package `__init__.py` included)."""
    pending, found = list(entry_modules), {}
    while pending:
        name = pending.pop()
        module_file = _module_file(name)
        if name in found or module_file is None:
            continue
        found[name] = module_file
        parts = name.split(".")
        pending += [".".join(parts[:end]) for end in range(1, len(parts))]
        pending += _imported_names(name, module_file)
    return sorted(set(found.values()))


def import_statements(file: Path) -> list[ast.Import | ast.ImportFrom]:
    """The imports that run when `file` is imported: module level (inside `if`/`try` too), not in function bodies
    (those are the lazy imports of optional backends, which the Space never calls)."""
    pending, found = list(ast.parse(file.read_text(encoding="utf-8")).body), []
    while pending:
        node = pending.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            pending += [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
    return found


def third_party_imports(files: list[Path]) -> set[str]:
    """Top-level names of the modules `files` import (see `import_statements`) that are neither the standard library
    nor ours."""
    names = set()
    for file in files:
        for node in import_statements(file):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    local = {*LOCAL_PACKAGES, *(path.stem for path in files)}
    return {name for name in names if name not in sys.stdlib_module_names and name not in local}


def space_requirements() -> list[str]:
    """requirements.txt lines: the distributions the Space's modules import, with this project's bounds."""
    distributions = importlib.metadata.packages_distributions()
    files = [*local_module_files(SPACE_ENTRY_MODULES)]
    wanted = sorted({canonicalize_name(distributions.get(name, [name])[0]) for name in third_party_imports(files)})
    bounds = {}
    for line in importlib.metadata.requires("clipada") or []:
        requirement = Requirement(line)
        bounds.setdefault(canonicalize_name(requirement.name), str(requirement.specifier))
    return [f"{name}{bounds.get(name, '')}" for name in wanted]


def _module_file(name: str) -> Path | None:
    if name.split(".")[0] not in LOCAL_PACKAGES:
        return None
    base = PROJECT_ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(name: str, module_file: Path) -> list[str]:
    """Dotted names a module imports (`from x import y` gives `x` and `x.y`, which may be a submodule)."""
    package = name if module_file.name == "__init__.py" else name.rpartition(".")[0]
    names = []
    for node in import_statements(module_file):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            names += [module, *(f"{module}.{alias.name}" for alias in node.names)]
    return names


__all__ = [
    "SPACE_ENTRY_MODULES",
    "import_statements",
    "local_module_files",
    "space_requirements",
    "third_party_imports",
    "write_space",
]
