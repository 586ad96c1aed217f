"""Loading the model and processor a command names, with errors that say which folder or Hub id is wrong.

Only `load_clipada_model` and `add_class_names` need torch (imported when called), so the torch-free path of
exported models loads processors and checks locations from here too.

Example:
    ```python
    >>> model = load_clipada_model("outputs/run")  # a trained checkpoint of any family
    >>> processor = load_processor("outputs/run")
    ```
"""

import json
import re
from pathlib import Path

from huggingface_hub import hf_hub_download
from transformers.image_utils import SizeDict

from processing import CLIPADAImageProcessor

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class ModelLoadError(ValueError):
    """A model or processor that cannot be loaded; the message names the folder or Hub id."""


def check_model_location(name_or_path: str) -> None:
    """A local folder must exist; anything that is not a folder must look like a Hub id (`org/name`)."""
    path = Path(name_or_path)
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"--model_name_or_path {path} is a file; give the checkpoint folder")
        return
    if not _HUB_ID.match(name_or_path) or name_or_path.count("/") > 1:
        raise ModelLoadError(f"--model_name_or_path {name_or_path}: no such folder (and not a Hub id org/name)")


def saved_model_type(name_or_path: str) -> str | None:
    """`model_type` in the checkpoint's config.json (a local folder, or a Hub repository's file)."""
    if Path(name_or_path).is_dir():
        config_file = Path(name_or_path) / "config.json"
        if not config_file.is_file():
            raise ModelLoadError(f"--model_name_or_path {name_or_path} has no config.json: not a model checkpoint")
    else:
        try:
            config_file = Path(hf_hub_download(name_or_path, "config.json"))
        except Exception as error:  # offline, unknown repository, no config.json, no access: all say the same
            raise ModelLoadError(
                f"cannot read config.json of {name_or_path} on the Hub: {first_line(error)}"
            ) from error
    try:
        return json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, UnicodeDecodeError, AttributeError) as error:
        raise ModelLoadError(f"{config_file} is not a valid config.json ({error})") from error


def add_class_names(model, class_names: list[str], tokenizer_source: str | None):
    """Tokenises the categories a model whose prompts name them has not seen yet (AdaCLIP); others are unchanged.

    Args:
        model: A model of any family.
        class_names: The categories it will see.
        tokenizer_source: A folder or Hub id with CLIP tokenizer files (the checkpoint's own); None: new names are
            an error.

    Raises:
        ModelLoadError: When new names need a tokenizer and `tokenizer_source` holds none (or is None).
    """
    from transformers import CLIPTokenizer

    from inference.families import FAMILIES

    if not FAMILIES[model.config.model_type].needs_class_names:
        return model
    known = set(model.config.prompt_token_ids or {})
    missing = sorted(set(class_names) - known)
    if missing:
        if tokenizer_source is None:
            raise ModelLoadError(
                f"{model.config.model_type} names each category in its prompts and has not seen {missing}; give the "
                "checkpoint (or a CLIP tokenizer folder) to tokenise them"
            )
        try:
            tokenizer = CLIPTokenizer.from_pretrained(tokenizer_source)
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"{tokenizer_source} has no CLIP tokenizer files, which {model.config.model_type} needs to name the "
                f"new categories {missing} in its prompts ({first_line(error)})"
            ) from error
        model.add_class_names(missing, tokenizer)
    return model


def load_clipada_model(name_or_path: str, dtype="float32"):
    """A trained checkpoint of any of this library's families; a plain CLIP (or any other model) is refused.

    Args:
        name_or_path: The checkpoint folder or Hub id.
        dtype: `float32` or `bfloat16` (a name, or the `torch.dtype`).
    """
    import torch

    from inference.families import FAMILIES, family_titles

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    check_model_location(name_or_path)
    model_type = saved_model_type(name_or_path)
    if model_type not in FAMILIES:
        raise ModelLoadError(
            f"--model_name_or_path {name_or_path} is a {model_type!r} checkpoint, not one of this library's "
            f"({family_titles()}); train it first (clipada train)"
        )
    return load_with_named_errors(FAMILIES[model_type].model_class.from_pretrained, name_or_path, dtype=dtype)


def load_processor(name_or_path: str, image_size: int | None = None) -> CLIPADAImageProcessor:
    """The checkpoint's image processor, at `image_size` when given (its other settings kept); without a
    `preprocessor_config.json`, `image_size` makes a default one (never a silent default size)."""
    try:
        processor = CLIPADAImageProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        if image_size is not None:
            return CLIPADAImageProcessor(size=image_size)
        raise ModelLoadError(
            f"{name_or_path} has no loadable preprocessor_config.json ({first_line(error)}); "
            "pass --image_size to evaluate at a size of your choice"
        ) from error
    if image_size is not None:
        processor.size = SizeDict(height=image_size, width=image_size)
    return processor


def load_with_named_errors(loader, name_or_path: str, **kwargs):
    """`loader(name_or_path, **kwargs)` (a `from_pretrained`), with unreadable files as a `ModelLoadError`."""
    from safetensors import SafetensorError

    try:
        return loader(name_or_path, **kwargs)
    except (OSError, SafetensorError) as error:
        raise ModelLoadError(f"cannot load {name_or_path}: {first_line(error)}") from error


def first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


__all__ = [
    "ModelLoadError",
    "add_class_names",
    "check_model_location",
    "first_line",
    "load_clipada_model",
    "load_processor",
    "load_with_named_errors",
    "saved_model_type",
]
