"""The base class of every model family: a frozen CLIP's attributes, strict loading, saving with the pipeline.

Example:
    ```python
    >>> class MyFamilyPreTrainedModel(AnomalyDetectionPreTrainedModel):
    ...     config_class = MyFamilyConfig
    ```
"""

import os

from safetensors import SafetensorError
from transformers import PreTrainedModel
from transformers.utils import SAFE_WEIGHTS_NAME


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
        """`PreTrainedModel.from_pretrained`, except that every tensor must come from the checkpoint.

        transformers initialises a tensor missing from the checkpoint at random and only logs it; a checkpoint of
        this library holds the frozen CLIP and the trained head, so either missing is an error here. A new head is
        built from a CLIP checkpoint with the family's `from_clip`.

        Args:
            pretrained_model_name_or_path: A Hub id or a local folder with a saved model of this library.
            *model_args: Passed on to `PreTrainedModel.from_pretrained`.
            output_loading_info: Also return the loading report (`missing_keys`, `unexpected_keys`, ...).
            **kwargs: Passed on to `PreTrainedModel.from_pretrained` (`dtype`, `attn_implementation`, ...).

        Returns:
            The model, or `(model, loading_info)` when `output_loading_info` is set.

        Raises:
            OSError: The safetensors weights file cannot be read (truncated or corrupt).
            ValueError: The checkpoint lacks tensors; the message names them.
        """
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except SafetensorError as error:
            raise OSError(
                f"Cannot read the weights of {pretrained_model_name_or_path}: its {SAFE_WEIGHTS_NAME} (or one of its "
                f"shards) is truncated or corrupt ({error})."
            ) from error
        missing = sorted(loading_info["missing_keys"])
        if missing:
            raise ValueError(
                f"The checkpoint {pretrained_model_name_or_path} lacks {len(missing)} tensors, which would be "
                f"initialised at random: {', '.join(missing)}."
            )
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


__all__ = ["AnomalyDetectionPreTrainedModel"]
