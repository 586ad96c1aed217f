"""Loading the model and processor a command names, with errors that say which folder or Hub id is wrong.

Only `load_clipada_model` and `add_class_names` need torch (imported when called), so the torch-free path of
exported models loads processors and checks locations from here too.

Example:
    ```python
    >>> model = load_clipada_model("outputs/run")  # a trained checkpoint of any family
    >>> processor = load_processor("outputs/run")
    ```
"""

import difflib
import json
from pathlib import Path

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id
from transformers.image_utils import SizeDict

from processing import CLIPADAImageProcessor
from processing.image_processing_clipada import MAX_SIZE as MAX_IMAGE_SIZE  # the processor's bound on its input side

# how a name that is meant as a local path starts
PATH_PREFIXES = ("./", "../", "/", "~", ".\\", "..\\")


class ModelLoadError(ValueError):
    """A model or processor that cannot be loaded; the message names the folder or Hub id."""


def check_model_location(name_or_path: str) -> None:
    """A local folder must exist, and only a name shaped like a Hub id (`owner/name`) goes to the Hub.

    A name that is meant as a path (it starts with `./`, `../`, `/` or `~`, holds a backslash or more than one `/`,
    has no `/` at all, is no valid Hub id, or its first part is a local folder, as `outputs/modle` is where
    `outputs/` exists) is "no such folder" at once, instead of a Hub lookup whose retries end in a network error.

    Raises:
        ModelLoadError: Naming the folder (and the closest folders beside it), or the file given instead.
    """
    if not name_or_path.strip():
        raise ModelLoadError("--model_name_or_path is empty; give a checkpoint folder or a Hub id owner/name")
    path = Path(name_or_path)
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"--model_name_or_path {path} is a file; give the checkpoint folder")
        return
    if is_path_shaped(name_or_path):
        raise ModelLoadError(f"no such folder: {name_or_path}{closest_folders_note(name_or_path)}")


def is_path_shaped(name: str) -> bool:
    """Whether `name` can only mean a local path: see [`check_model_location`]."""
    if name.startswith(PATH_PREFIXES) or "\\" in name or name.count("/") != 1:
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return Path(name.split("/")[0]).is_dir()


def closest_folders_note(name: str) -> str:
    """` (did you mean outputs/model?)` naming the folders beside the missing one that are spelled most like it;
    a hint that `~` was not expanded; "" when there is nothing to suggest."""
    path = Path(name)
    if name.startswith("~") and path.expanduser().is_dir():
        return f" (the shell did not expand ~; write the path without quotes, or in full: {path.expanduser()})"
    parent = path.expanduser().parent
    try:
        siblings = [child.name for child in parent.iterdir() if child.is_dir()]
    except OSError:
        return ""
    matches = difflib.get_close_matches(path.name, siblings, n=3)
    return f" (did you mean {' or '.join(str(path.parent / match) for match in matches)}?)" if matches else ""


def saved_config_file(name_or_path: str) -> Path:
    """The checkpoint's config.json: a local folder's, or a Hub repository's (downloaded).

    Raises:
        ModelLoadError: The folder has none, or the Hub is off, lacks the repository, or cannot be reached.
    """
    if Path(name_or_path).is_dir():
        config_file = Path(name_or_path) / "config.json"
        if not config_file.is_file():
            raise ModelLoadError(f"--model_name_or_path {name_or_path} has no config.json: not a model checkpoint")
        return config_file
    try:
        return Path(hf_hub_download(name_or_path, "config.json"))
    except Exception as error:  # offline, unknown repository, no config.json, no access, no network
        raise ModelLoadError(hub_failure(name_or_path, error)) from error


def hub_failure(name: str, error: BaseException) -> str:
    """Why `name`, which is no local folder, could not be read from the Hub, with the cause that fits."""
    if constants.HF_HUB_OFFLINE:
        return (
            f"no such folder: {name}, and the Hub is off (HF_HUB_OFFLINE=1), so it was not looked up there either; "
            "give the checkpoint folder, or download the model while online"
        )
    if isinstance(error, RepositoryNotFoundError):
        return f"no such folder: {name}, and no model {name} on the Hub (or it is private: log in with `hf auth login`)"
    return f"no such folder: {name}; reading it from the Hub failed: {first_line(error)}"


def saved_config(name_or_path: str) -> dict:
    """The checkpoint's config.json as a dict ([`saved_config_file`]).

    Raises:
        ModelLoadError: As [`saved_config_file`], or the file is not a JSON object.
    """
    config_file = saved_config_file(name_or_path)
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"{config_file} is not a valid config.json ({error})") from error
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_file} is not a valid config.json (a JSON object is expected)")
    return config


def saved_model_type(name_or_path: str) -> str | None:
    """`model_type` in the checkpoint's config.json (a local folder, or a Hub repository's file)."""
    return saved_config(name_or_path).get("model_type")


def check_image_size(name_or_path: str, image_size: int) -> None:
    """Refuses an `--image_size` that the checkpoint cannot take: not a multiple of its patch size, or above
    `MAX_IMAGE_SIZE` (attention grows with the square of the patches; large images are for `--tile_size`). A folder
    without config.json (an export) is not checked here.

    Raises:
        ModelLoadError: Naming the size, the patch size and the nearest sizes that fit.
    """
    if image_size > MAX_IMAGE_SIZE:
        raise ModelLoadError(
            f"--image_size {image_size} is above {MAX_IMAGE_SIZE} px; cut large images into tiles instead (--tile_size)"
        )
    if Path(name_or_path).is_dir() and not (Path(name_or_path) / "config.json").is_file():
        return
    vision_config = saved_config(name_or_path).get("vision_config")
    patch_size = vision_config.get("patch_size") if isinstance(vision_config, dict) else None
    if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size < 1:
        return  # the model's own loading names a bad patch size
    if image_size % patch_size:
        below, above = image_size // patch_size * patch_size, (image_size // patch_size + 1) * patch_size
        fitting = f"{below} or {above}" if below else str(above)
        raise ModelLoadError(
            f"--image_size {image_size} is not a multiple of the patch size {patch_size} of {name_or_path}; "
            f"use {fitting}"
        )


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
    `preprocessor_config.json`, `image_size` makes a default one (never a silent default size). A folder's
    preprocessor_config.json that is there but invalid is always an error: never silently replaced by defaults.

    Raises:
        ModelLoadError: No loadable preprocessor_config.json and no `image_size`, an invalid one in the folder, or
            an `image_size` the checkpoint cannot take ([`check_image_size`]).
    """
    if image_size is not None:
        check_image_size(name_or_path, image_size)
    try:
        processor = CLIPADAImageProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        saved = Path(name_or_path) / "preprocessor_config.json"
        if saved.is_file():
            problem = first_line(error)
            raise ModelLoadError(f"{saved} is not a valid image processor configuration: {problem}") from error
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
    "check_image_size",
    "check_model_location",
    "first_line",
    "load_clipada_model",
    "load_processor",
    "load_with_named_errors",
    "saved_config",
    "saved_config_file",
    "saved_model_type",
]
