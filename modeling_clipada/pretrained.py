"""The base class of every model family: a frozen CLIP's attributes, strict loading, saving with the pipeline.

Example:
    ```python
    >>> class MyFamilyPreTrainedModel(AnomalyDetectionPreTrainedModel):
    ...     config_class = MyFamilyConfig
    ```
"""

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import PreTrainedModel
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

from .reference_memory import fit_reference

# how many tensor names an error lists before "and N more"
NAMES_SHOWN = 8
# the keyword arguments of `from_pretrained` that say where its files come from (to find them again)
FILE_LOOKUP_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


class AnomalyDetectionPreTrainedModel(PreTrainedModel):
    """What CLIP-ADA, AnomalyCLIP and AdaCLIP share: a frozen `CLIPModel` under `clip`, every tensor loaded from the
    checkpoint (a missing one is an error, never a random one), and the pipeline carried by every saved checkpoint."""

    base_model_prefix = "clip"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPEncoderLayer", "CLIPVisionEmbeddings"]
    supports_gradient_checkpointing = True
    # The text pass builds its mask with transformers' `create_causal_mask` and runs `CLIPEncoder` with
    # `is_causal=True`, as `CLIPTextModel` does, so every backend that CLIP supports works here too.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, output_loading_info: bool = False, **kwargs):
        """`PreTrainedModel.from_pretrained`, except that every tensor must come from the checkpoint, as saved.

        transformers initialises a tensor missing from the checkpoint at random and only logs it, casts a tensor
        stored as integers to the model's floats silently, and loads NaN as it is; a checkpoint of this library holds
        the frozen CLIP and the trained head, so each of these is an error here, naming the tensor: a missing tensor,
        one whose shape disagrees with config.json, a floating tensor stored in an integer or bool dtype, and a NaN
        or infinite value (which would make every score NaN and no decision possible). A new head is built from a
        CLIP checkpoint with the family's `from_clip`.

        Args:
            pretrained_model_name_or_path: A Hub id or a local folder with a saved model of this library.
            *model_args: Passed on to `PreTrainedModel.from_pretrained`.
            output_loading_info: Also return the loading report (`missing_keys`, `unexpected_keys`, ...).
            **kwargs: Passed on to `PreTrainedModel.from_pretrained` (`dtype`, `attn_implementation`, ...).

        Returns:
            The model, or `(model, loading_info)` when `output_loading_info` is set.

        Raises:
            OSError: The safetensors weights file cannot be read (truncated or corrupt).
            ValueError: The checkpoint's config.json is invalid (the family's config error, naming the file and the
                field), or its weights lack tensors, disagree with config.json in shape, hold a floating tensor in
                an integer or bool dtype, or hold NaN or infinite values; the message names the tensors.
        """
        kwargs.setdefault("ignore_mismatched_sizes", True)  # reported below by name, not as transformers' report
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except SafetensorError as error:
            raise OSError(
                f"Cannot read the weights of {pretrained_model_name_or_path}: its {SAFE_WEIGHTS_NAME} (or one of its "
                f"shards) is truncated or corrupt ({error})."
            ) from error
        except cls.config_class.config_error as error:
            raise type(error)(f"The config.json of {pretrained_model_name_or_path} is invalid: {error}") from error
        missing = sorted(loading_info["missing_keys"])
        if missing:
            raise ValueError(
                f"The checkpoint {pretrained_model_name_or_path} lacks {len(missing)} tensors, which would be "
                f"initialised at random: {', '.join(missing)}."
            )
        check_shapes_match(pretrained_model_name_or_path, loading_info["mismatched_keys"])
        weights_files = saved_weights_files(pretrained_model_name_or_path, kwargs)
        check_floating_dtypes(model, weights_files)
        check_finite_weights(model, pretrained_model_name_or_path)
        model.clip.requires_grad_(False)  # transformers' loading hands back every tensor trainable: CLIP stays frozen
        return (model, loading_info) if output_loading_info else model

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`, with the `image-anomaly-detection` pipeline carried along.

        `config.json` names the pipeline (`custom_pipelines`), and its code file is copied next to the model's:
        `register_for_auto_class` copies every file this one imports relatively, the import below included. So
        `pipeline("image-anomaly-detection", model=folder, trust_remote_code=True)` works without this project, and
        `push_to_hub` (which saves through this method) carries the pipeline too.

        Args:
            save_directory: The checkpoint folder.
            *args: Passed on to `PreTrainedModel.save_pretrained`.
            **kwargs: Passed on to `PreTrainedModel.save_pretrained` (`is_main_process`, `push_to_hub`, ...).
        """
        from .pipeline_clipada import custom_pipelines_entry

        self.config.custom_pipelines = custom_pipelines_entry()
        super().save_pretrained(save_directory, *args, **kwargs)

    def fit_reference(
        self,
        images,
        categories: list[str],
        image_processor=None,
        batch_size: int = 8,
        max_patches: int | None = None,
        seed: int = 0,
    ) -> dict[str, int]:
        """Fits the few-shot reference memory on normal images, replacing the one held (no training).

        Each family stores the patch features it scores (`reference_features`); `forward` then fuses the memory's
        map (1 - the highest cosine similarity per patch) with its own, per `config.reference_fusion`.
        `save_pretrained` writes the memory with the weights.

        Args:
            images: `(k, 3, H, W)` CLIP-normalised pixel values, a list of `(3, H, W)` tensors, or images for
                `image_processor`; empty (k = 0) removes the memory, and the family's own maps come back.
            categories: One category name per image.
            image_processor: The checkpoint's image processor, for images that are no tensors.
            batch_size: Images per forward pass.
            max_patches: Keep at most this many patches per category (a seeded random subset); None: all.
            seed: Seeds that subset.

        Returns:
            `{category: num_patches}` (also `config.reference_memory_sizes`).
        """
        return fit_reference(self, images, categories, image_processor, batch_size, max_patches, seed)


def listed(names: list[str]) -> str:
    """The first `NAMES_SHOWN` of `names`, comma-separated, and how many more."""
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown if len(names) <= NAMES_SHOWN else f"{shown} and {len(names) - NAMES_SHOWN} more"


def check_shapes_match(name_or_path, mismatched_keys) -> None:
    """Raises a `ValueError` naming the tensors whose saved shape is not the one config.json makes.

    Args:
        name_or_path: The checkpoint, for the message.
        mismatched_keys: transformers' `(name, saved_shape, config_shape)` triples.
    """
    if not mismatched_keys:
        return
    shapes = [
        f"{name} {tuple(saved)} saved, {tuple(expected)} by config.json"
        for name, saved, expected in sorted(mismatched_keys)
    ]
    raise ValueError(
        f"The config.json of {name_or_path} does not match its weights ({len(shapes)} tensors of another shape: "
        f"{listed(shapes)}); was config.json edited? Restore it, or train again with the new settings."
    )


def saved_weights_files(name_or_path, kwargs: dict) -> list[Path]:
    """The safetensors files `from_pretrained` read (a single file or the shards of its index); [] when there are
    none to find again (weights of another format, or a file that cannot be resolved)."""
    lookup = {key: kwargs[key] for key in FILE_LOOKUP_KWARGS if kwargs.get(key) is not None}
    resolve = lambda name: cached_file(  # noqa: E731
        name_or_path, name, _raise_exceptions_for_missing_entries=False, **lookup
    )
    try:
        single = resolve(SAFE_WEIGHTS_NAME)
        if single is not None:
            return [Path(single)]
        index = resolve(SAFE_WEIGHTS_INDEX_NAME)
        if index is None:
            return []
        shards = sorted(set(json.loads(Path(index).read_text(encoding="utf-8"))["weight_map"].values()))
        return [Path(resolve(shard)) for shard in shards]
    except (OSError, ValueError, KeyError, TypeError):  # loaded already: anything odd here only skips the check
        return []


def check_floating_dtypes(model: PreTrainedModel, weights_files: list[Path]) -> None:
    """Raises a `ValueError` naming the tensors that the model holds in floating point but the files store in an
    integer or bool dtype (which `from_pretrained` would cast silently: rounded prompt vectors flip decisions)."""
    expected = model.state_dict()
    wrong = []
    for weights_file in weights_files:
        with safe_open(weights_file, framework="pt") as weights:
            for name in weights.keys():
                stored = weights.get_slice(name).get_dtype()
                if name in expected and expected[name].is_floating_point() and not stored.startswith(("F", "BF")):
                    wrong.append(f"{name} is {safetensors_dtype_name(stored)} in {weights_file}")
    if wrong:
        raise ValueError(
            f"{len(wrong)} tensors are stored as integers or booleans where the model holds floating-point values "
            f"({listed(wrong)}); loading would round them silently. Save the weights in float32 (or bfloat16)."
        )


def safetensors_dtype_name(stored: str) -> str:
    """safetensors' dtype code as torch names it: `I64` -> `int64`, `BOOL` -> `bool`, `U8` -> `uint8`."""
    kinds = {"I": "int", "U": "uint", "F": "float", "BF": "bfloat"}
    prefix = stored.rstrip("0123456789")
    return kinds[prefix] + stored[len(prefix) :] if prefix in kinds else stored.lower()


def check_finite_weights(model: PreTrainedModel, name_or_path) -> None:
    """Raises a `ValueError` naming the tensors (frozen CLIP and trained head alike) that hold NaN or infinite
    values: each makes every anomaly score NaN, and a NaN score decides nothing."""
    damaged = []
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and tensor.device.type != "meta":
            non_finite = int((~torch.isfinite(tensor)).sum())
            if non_finite:
                damaged.append(f"{name} ({non_finite} of {tensor.numel()} values)")
    if damaged:
        raise ValueError(
            f"The weights of {name_or_path} hold NaN or infinite values in {len(damaged)} tensors: {listed(damaged)}. "
            "The checkpoint is damaged (or training diverged); use an earlier checkpoint."
        )


__all__ = ["AnomalyDetectionPreTrainedModel"]
