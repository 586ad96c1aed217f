"""A ready-to-push Hugging Face Space for one checkpoint: app.py, requirements.txt, README.md and this project's wheel.

The Space runs the same page as `clipada app`. It gets this project as a wheel inside its folder (built
from the checkout, or the one given with `--wheel`) that app.py imports from, and requirements.txt lists the wheel's
own dependencies: the base ones and those of its `torch` and `demo` extras.

Example:
    ```python
    >>> write_space(Path("space"), "user/clipada-mvtec", examples=[Path("line3/crack.png")])
    >>> sorted(path.name for path in Path("space").iterdir())
    ['README.md', 'app.py', 'clipada-0.2.0-py3-none-any.whl', 'examples', 'requirements.txt']
    ```
"""

import email
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import yaml
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from packaging.markers import InvalidMarker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from inference.app.model import check_example, example_file_name
from inference.atomic import atomic_dir
from inference.output_folder import check_output_folder

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# what building the wheel reads: the packaging metadata and the packages (pyproject.toml's packages.find include)
WHEEL_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "modeling_clipada", "processing", "inference", "training")
SPACE_EXTRAS = ("torch", "demo")  # the PyTorch model and the Gradio page
SHORT_DESCRIPTION_LENGTH = 60  # the Hub's limit for short_description
SPACE_COMMAND = "clipada app --write_space"
SPACE_METADATA = {  # the README's front matter; the model id and the description are added per Space
    "title": "Anomaly inspection",
    "emoji": "🔍",
    "colorFrom": "blue",
    "colorTo": "gray",
    "sdk": "gradio",
    "app_file": "app.py",
    "pinned": False,
    "license": "apache-2.0",
}
SPACE_README_BODY = """
# Anomaly inspection with `{model_id}`

Drop one or several images: the page shows the overlay, the raw anomaly map, the image score, the OK/NG decision
with the checkpoint's calibrated threshold and the anomalous regions' boxes. The sliders redraw masks and decisions
without running the model again; the results table downloads as CSV (the columns of `clipada predict`).

Written by `clipada app --write_space` of the clipada project. The page's code is the project's wheel,
`{wheel_name}`, which app.py imports from.
Run it locally with `pip install -r requirements.txt && python app.py`.
"""
SPACE_APP = '''"""Hub Space: anomaly inspection with the checkpoint MODEL_ID (written by clipada app --write_space)."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The project's code is the wheel in this folder, imported from the zip itself (it is pure Python). A Space runs
# `pip install -r requirements.txt` before the rest of its repository is copied into the build, so requirements.txt
# cannot install the wheel by its path: it installs the wheel's dependencies, and the wheel goes on sys.path here.
sys.path.insert(0, str(HERE / {wheel_name!r}))

import torch  # noqa: E402

from inference.app.model import checkpoint_examples, folder_examples, load_served_model  # noqa: E402
from inference.app.ui import build_demo, serve  # noqa: E402

MODEL_ID = {model_id!r}
EXAMPLES = HERE / "examples"

served = load_served_model(MODEL_ID, device="cuda" if torch.cuda.is_available() else "cpu")
examples = checkpoint_examples(MODEL_ID) + (folder_examples(EXAMPLES) if EXAMPLES.is_dir() else [])
demo = build_demo(served, examples=examples)

if __name__ == "__main__":
    serve(demo)  # only copies of the examples are served; the app's temporary files go when it stops
'''


def write_space(
    output_dir: Path,
    model_id: str,
    examples: list[Path] = (),
    wheel: Path | None = None,
    sources: Sequence[Path] = (),
) -> Path:
    """Writes the Space folder for `model_id` (written whole, or not at all).

    Args:
        output_dir: A new or empty folder, neither inside nor around what the command reads.
        model_id: The checkpoint's Hub id (`user/name`) the Space loads.
        examples: Images copied to the Space's `examples/` (the checkpoint's own `examples/` are offered too).
        wheel: A wheel of this project to ship; None builds one from the checkout this module runs from.
        sources: Further inputs `output_dir` may not be, lie in or contain (the `--examples` folder).

    Returns:
        `output_dir`.

    Raises:
        ValueError: `output_dir` holds files or is one of the inputs, `model_id` is not a Hub id, `wheel` is not a
            wheel of this project, or no wheel was given and none can be built; naming them.
    """
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ValueError(f"--write_space {output_dir} is not an empty folder; choose a new one")
    inputs = [*sources, *examples, *([] if wheel is None else [Path(wheel)])]
    check_output_folder(output_dir, SPACE_COMMAND, overwrite=False, sources=inputs, flag="--write_space")
    check_hub_id(model_id)
    for example in examples:
        check_example(Path(example))
    try:  # the Space runs the Gradio version the app was tested with here
        gradio_version = importlib.metadata.version("gradio")
    except importlib.metadata.PackageNotFoundError:
        raise ValueError("--write_space needs Gradio installed: pip install 'clipada[demo]'") from None
    with tempfile.TemporaryDirectory() as scratch:
        wheel = Path(wheel) if wheel is not None else build_project_wheel(Path(scratch))
        requirements = space_requirements(wheel)  # checks that it is a wheel of this project
        _write_space_files(output_dir, model_id, examples, wheel, requirements, gradio_version)
    return output_dir


def check_hub_id(model_id: str) -> None:
    """Refuses anything but a Hub model id `user/name` (huggingface_hub's rules: letters, digits, `-`, `_`, `.`),
    so no text of the id can become code in app.py or keys in the README's front matter.

    Raises:
        ValueError: Naming `--model_id` and the value.
    """
    remedy = "it must be the checkpoint's Hub id user/name (a Space cannot read a local folder: push it first)"
    try:
        validate_repo_id(model_id)
    except HFValidationError:
        raise ValueError(f"--model_id {model_id!r} is not a Hub model id: {remedy}") from None
    if model_id.count("/") != 1 or Path(model_id).exists():
        raise ValueError(f"--model_id {model_id!r}: {remedy}")


def _write_space_files(
    output_dir: Path, model_id: str, examples: list[Path], wheel: Path, requirements: list[str], gradio_version: str
) -> None:
    """Writes the Space's files into a staging folder that replaces `output_dir` once complete.

    Values reach app.py only through `repr` and the README's front matter only through a YAML dumper.
    """
    with atomic_dir(output_dir) as staging:
        shutil.copyfile(wheel, staging / wheel.name)
        app = SPACE_APP.format(model_id=model_id, wheel_name=wheel.name)
        (staging / "app.py").write_text(app, encoding="utf-8")
        (staging / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(space_readme(model_id, wheel.name, gradio_version), encoding="utf-8")
        if examples:
            (staging / "examples").mkdir()
            for index, example in enumerate(examples):
                shutil.copyfile(example, staging / "examples" / example_file_name(index, Path(example)))


def space_readme(model_id: str, wheel_name: str, gradio_version: str) -> str:
    """The Space's README.md: the front matter the Hub reads (written by a YAML dumper), then a short text."""
    description = f"OK/NG anomaly inspection with {model_id}"
    if len(description) > SHORT_DESCRIPTION_LENGTH:
        description = "OK/NG anomaly inspection"
    metadata = {**SPACE_METADATA, "sdk_version": gradio_version, "models": [model_id], "short_description": description}
    front_matter = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{front_matter}---\n" + SPACE_README_BODY.format(model_id=model_id, wheel_name=wheel_name)


def build_project_wheel(output_dir: Path) -> Path:
    """Builds this project's wheel into `output_dir` from the checkout beside this module (`pip wheel`).

    The sources are copied to a scratch folder first, so the build leaves nothing in the checkout and no stale
    `build/` folder there can add deleted modules to the wheel.

    Raises:
        ValueError: No checkout (pyproject.toml) lies beside the installed package, or the build failed; both say to
            pass `--wheel`.
    """
    if not (PROJECT_ROOT / "pyproject.toml").is_file():
        raise ValueError(
            f"--write_space needs this project's wheel, and {PROJECT_ROOT} holds no pyproject.toml to build one "
            "from: pass --wheel clipada-<version>-py3-none-any.whl (`python -m pip wheel --no-deps -w dist .` "
            "in a clipada checkout builds it)"
        )
    source = output_dir / "source"
    for name in WHEEL_SOURCES:
        if (PROJECT_ROOT / name).is_dir():
            shutil.copytree(PROJECT_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif (PROJECT_ROOT / name).is_file():
            source.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(PROJECT_ROOT / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet"]
    built = subprocess.run([*command, "-w", str(output_dir / "dist"), str(source)], capture_output=True, text=True)
    wheels = sorted((output_dir / "dist").glob("clipada-*.whl"))
    if built.returncode != 0 or len(wheels) != 1:
        raise ValueError(
            f"building this project's wheel from {PROJECT_ROOT} failed ({' '.join(command)}): "
            f"{(built.stderr or built.stdout).strip()[-1500:]}\npass --wheel with a wheel of clipada instead"
        )
    return wheels[0]


def space_requirements(wheel: Path) -> list[str]:
    """requirements.txt lines from the wheel's METADATA: its base dependencies and those of `SPACE_EXTRAS`.

    Environment markers are evaluated here (with each extra) and left out of the lines.

    Raises:
        ValueError: `wheel` is not a wheel of this project (its file name included: it is written into app.py).
    """
    try:
        parse_wheel_filename(Path(wheel).name)
    except InvalidWheelFilename:
        raise ValueError(f"--wheel {wheel} is not a wheel file: its name is not clipada-<version>-<tags>.whl") from None
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = [name for name in archive.namelist() if name.count("/") == 1]
            (metadata_file,) = [name for name in names if name.endswith(".dist-info/METADATA")]
            metadata = email.message_from_bytes(archive.read(metadata_file))
    except (OSError, zipfile.BadZipFile, ValueError):
        raise ValueError(f"--wheel {wheel} is not a wheel file (a .whl of clipada)") from None
    if canonicalize_name(metadata.get("Name", "")) != "clipada":
        raise ValueError(f"--wheel {wheel} is a wheel of {metadata.get('Name')!r}, not of clipada")
    lines = {}
    for line in metadata.get_all("Requires-Dist") or []:
        try:
            requirement = Requirement(line)
            marker, requirement.marker = requirement.marker, None
            wanted = marker is None or any(marker.evaluate({"extra": extra}) for extra in ("", *SPACE_EXTRAS))
        except (InvalidRequirement, InvalidMarker, UndefinedComparison, UndefinedEnvironmentName):
            raise ValueError(f"--wheel {wheel} lists a requirement pip cannot read: {line!r}") from None
        if wanted:
            lines.setdefault(canonicalize_name(requirement.name), str(requirement))
    return [lines[name] for name in sorted(lines)]


__all__ = ["SPACE_EXTRAS", "build_project_wheel", "check_hub_id", "space_readme", "space_requirements", "write_space"]
