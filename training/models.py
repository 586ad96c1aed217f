"""The model a training run starts from: a fresh head on a CLIP checkpoint, or a checkpoint of ours continued.

Example:
    ```python
    >>> model = build_model("openai/clip-vit-base-patch16", {"num_refinements": 1})  # a fresh head on CLIP
    >>> weights = load_frozen_clip_weights("openai/clip-vit-base-patch16")          # the fp32 frozen CLIP
    ```
"""

from typing import Any

import torch
from transformers import CLIPModel, PreTrainedModel

from inference import loading
from inference.families import FAMILIES
from inference.loading import load_with_named_errors
from training.moved import warn_moved

# 0.1 kept these here; 0.2 moved them to `inference.loading` (handed out with a warning by `__getattr__` below, so
# this module reads them as `loading.X`: a name bound here would bypass it)
MOVED_TO_LOADING = (
    "ModelLoadError",
    "add_class_names",
    "check_model_location",
    "load_clipada_model",
    "load_processor",
    "saved_model_type",
)


def build_model(
    name_or_path: str, overrides: dict[str, Any], model_type: str = "clipada", class_names: list[str] | None = None
) -> PreTrainedModel:
    """A checkpoint of one of our families is continued as is; any other CLIP gets a fresh `model_type` head.

    Args:
        name_or_path: A CLIP checkpoint, or a checkpoint of this library.
        overrides: Head config fields.
        model_type: The family of a fresh head.
        class_names: The categories the model will see (families whose prompts name them tokenise them now).

    Raises:
        ModelLoadError: Naming the folder, or the head fields that cannot change when continuing a checkpoint.
    """
    loading.check_model_location(name_or_path)
    saved_type = loading.saved_model_type(name_or_path)
    if saved_type in FAMILIES:
        family = FAMILIES[saved_type]
        frozen_shape = family.shape_fields & set(overrides)
        if frozen_shape:
            raise loading.ModelLoadError(
                f"{sorted(frozen_shape)} cannot change when continuing {family.title} checkpoint {name_or_path}; "
                "start from a CLIP checkpoint instead"
            )
        model = load_with_named_errors(family.model_class.from_pretrained, name_or_path, **overrides)
        return loading.add_class_names(model, class_names or [], name_or_path)
    family = FAMILIES[model_type]
    if family.needs_class_names:
        overrides = {**overrides, "class_names": sorted(set(class_names or []))}
    return load_with_named_errors(family.model_class.from_clip, name_or_path, **overrides)


def load_frozen_clip_weights(name_or_path: str) -> dict[str, torch.Tensor]:
    """The frozen CLIP's fp32 weights as saved in `name_or_path` (a CLIP checkpoint or one of ours), keyed like
    `model.clip.state_dict()`."""
    saved_type = loading.saved_model_type(name_or_path)
    if saved_type in FAMILIES:
        return load_with_named_errors(FAMILIES[saved_type].model_class.from_pretrained, name_or_path).clip.state_dict()
    return load_with_named_errors(CLIPModel.from_pretrained, name_or_path).state_dict()


def __getattr__(name: str):
    """The names 0.1 kept here, from `inference.loading` with a `FutureWarning` (PEP 562: only names not found)."""
    if name in MOVED_TO_LOADING:
        warn_moved(f"training.models.{name}", f"inference.loading.{name}")
        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["build_model", "load_frozen_clip_weights"]
