"""What the inspection app serves: a checkpoint's backend, processor, config and example images.

Example:
    ```python
    >>> served = load_served_model("outputs/run", device="cpu", dtype="float32")
    >>> served.config.image_threshold, served.title
    (0.62, 'CLIP-ADA')
    >>> checkpoint_examples("outputs/run")     # images in the checkpoint's examples/ folder
    [PosixPath('outputs/run/examples/crack.png')]
    ```
"""

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download
from PIL import Image

from inference.backends import AnomalyBackend, is_export_folder, load_backend
from inference.deploy.runners import read_export_config
from inference.loading import check_model_location, load_processor, saved_model_type
from inference.modes import fitting_decision_config, thresholds_note, with_inference_mode
from inference.output_folder import MAX_NAME_BYTES
from inference.predict.inputs import InputError, collect_inputs, input_problem
from processing import CLIPADAImageProcessor

EXAMPLES_FOLDER = "examples"


@dataclass
class ServedModel:
    """A loaded checkpoint, ready for the app.

    Attributes:
        name: The folder or Hub id it was loaded from.
        title: The model family's name (`CLIP-ADA`, `AnomalyCLIP`).
        backend: Runs the model on CLIP-normalised pixels `(B, 3, H, W)`.
        processor: Reads, resizes and normalises images; maps anomaly maps back to each image's size.
        config: The calibrated decision fields that apply: the checkpoint's config, or the export's thresholds; no
            thresholds (`inference.modes.NO_THRESHOLDS`) when they were calibrated in another mode than `processor`'s.
        thresholds_note: Why the calibrated thresholds do not apply (`inference.modes.thresholds_note`); "" when
            they do.
    """

    name: str
    title: str
    backend: AnomalyBackend
    processor: CLIPADAImageProcessor
    config: Any
    thresholds_note: str = ""

    @property
    def categories(self) -> list[str]:
        """The categories with calibrated thresholds of their own, sorted."""
        return sorted(getattr(self.config, "category_thresholds", None) or {})


def load_served_model(
    model_name_or_path: str,
    device: str | None = None,
    dtype: str = "float32",
    backend: str | None = None,
    num_threads: int | None = None,
    inference_mode: dict | None = None,
) -> ServedModel:
    """Loads a checkpoint of any of this library's families (local folder or Hub id), or an export folder.

    Args:
        model_name_or_path: The checkpoint or export folder.
        device: torch: a device name (None: cuda when available); exports run on the cpu.
        dtype: `float32` or `bfloat16` (torch).
        backend: `torch`, `onnxruntime` or `openvino`; None: the export's runtime, else torch.
        num_threads: CPU threads (None: the available cores minus the busy ones).
        inference_mode: `{"resize_mode": ..., "tile_size": ..., "tile_overlap": ...}` overriding the checkpoint's
            preprocessor_config.json (`inference.modes.with_inference_mode`; None values keep it); the thresholds
            decide only where they were calibrated in the resulting mode, as in `clipada predict`.

    Raises:
        inference.loading.ModelLoadError: A folder or Hub id that holds no checkpoint of ours, naming it.
    """
    check_model_location(model_name_or_path)
    if is_export_folder(model_name_or_path):
        title = f"CLIP-ADA ({read_export_config(model_name_or_path)['format']} export)"
    else:
        from inference.families import FAMILIES  # torch: only for a checkpoint

        title = FAMILIES.get(saved_model_type(model_name_or_path), FAMILIES["clipada"]).title
    loaded_backend = load_backend(backend, model_name_or_path, device, dtype, num_threads)
    own = load_processor(model_name_or_path)  # the checkpoint's own: older thresholds count as made in its mode
    processor = with_inference_mode(own, **(inference_mode or {}), note=False)
    config = loaded_backend.decision_config
    note = thresholds_note(
        config, processor, own, model_name_or_path,
        remedy="calibrate in its preprocessor_config.json's mode (clipada calibrate); the sliders decide meanwhile",
    )  # fmt: skip
    applied = fitting_decision_config(config, processor, own)
    return ServedModel(model_name_or_path, title, loaded_backend, processor, applied, note)


def checkpoint_examples(model_name_or_path: str) -> list[Path]:
    """Example images shipped with a checkpoint in its `examples/` folder (local, or downloaded from the Hub).

    Returns:
        The images, sorted; an empty list when there is no such folder or the Hub cannot be reached.
    """
    folder = Path(model_name_or_path)
    if not folder.is_dir():
        try:
            folder = Path(snapshot_download(model_name_or_path, allow_patterns=[f"{EXAMPLES_FOLDER}/*"]))
        except Exception:  # offline, no access, no such repository: the app simply has no shipped examples
            return []
    return folder_examples(folder / EXAMPLES_FOLDER) if (folder / EXAMPLES_FOLDER).is_dir() else []


def folder_examples(folder: str | Path) -> list[Path]:
    """The image files below `folder` (recursive, sorted, hidden files skipped).

    Raises:
        InputError: `folder` is not a folder.
    """
    if not Path(folder).is_dir():
        raise InputError(f"--examples {folder} is not a folder")
    return collect_inputs([str(folder)])


def copy_examples(examples: list[Path], folder: Path) -> list[Path]:
    """Copies the example images into `folder` (new), the only folder the app lets Gradio serve files from, so that
    nothing else beside the examples (`.env`, keys, notes) can be fetched through the app.

    Returns:
        The copies, in order, named by [`example_file_name`].

    Raises:
        InputError: An example that is not a regular image file (a link to a device, a text file named `.png`),
            naming it.
    """
    folder.mkdir(parents=True)
    copies = []
    for index, example in enumerate(examples):
        check_example(Path(example))
        copies.append(Path(shutil.copyfile(example, folder / example_file_name(index, Path(example)))))
    return copies


def check_example(example: Path) -> None:
    """Refuses an example that is not a regular file Pillow opens as an image.

    Raises:
        InputError: Naming the file and why.
    """
    problem = input_problem(example)
    if problem is None:
        try:
            with Image.open(example) as image:
                image.verify()
        except Exception:  # Pillow raises many types for files that are not images
            problem = "not an image file Pillow can read"
    if problem is not None:
        raise InputError(f"example {example}: {problem}")


def example_file_name(index: int, example: Path) -> str:
    """`000_crack.png`: numbered, so examples of the same name from several folders stay apart; a name too long for a
    file system becomes the number and the suffix."""
    name = f"{index:03d}_{example.name}"
    return name if len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES else f"{index:03d}{example.suffix}"


__all__ = [
    "EXAMPLES_FOLDER",
    "ServedModel",
    "check_example",
    "checkpoint_examples",
    "copy_examples",
    "example_file_name",
    "folder_examples",
    "load_served_model",
]
