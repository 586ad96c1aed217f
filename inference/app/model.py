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

from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download
from transformers import PretrainedConfig

from inference.backends import AnomalyBackend, load_backend
from inference.families import FAMILIES
from inference.loading import check_model_location, load_processor, saved_model_type
from inference.predict.inputs import InputError, collect_inputs
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
        config: The checkpoint's config, with its calibrated thresholds.
    """

    name: str
    title: str
    backend: AnomalyBackend
    processor: CLIPADAImageProcessor
    config: PretrainedConfig

    @property
    def categories(self) -> list[str]:
        """The categories with calibrated thresholds of their own, sorted."""
        return sorted(self.config.category_thresholds or {})


def load_served_model(
    model_name_or_path: str, device: str = "cpu", dtype: str = "float32", backend: str = "torch"
) -> ServedModel:
    """Loads a checkpoint of any of this library's families (local folder or Hub id).

    Args:
        model_name_or_path: The checkpoint.
        device: A device the backend understands (`cpu`, `cuda`).
        dtype: `float32` or `bfloat16`.
        backend: A key of `inference.backends.BACKENDS`.

    Raises:
        inference.loading.ModelLoadError: A folder or Hub id that holds no checkpoint of ours, naming it.
    """
    check_model_location(model_name_or_path)
    family = FAMILIES.get(saved_model_type(model_name_or_path), FAMILIES["clipada"])
    loaded_backend = load_backend(backend, model_name_or_path, device=device, dtype=dtype)
    config = family.config_class.from_pretrained(model_name_or_path)
    processor = load_processor(model_name_or_path)
    return ServedModel(model_name_or_path, family.title, loaded_backend, processor, config)


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


__all__ = ["EXAMPLES_FOLDER", "ServedModel", "checkpoint_examples", "folder_examples", "load_served_model"]
