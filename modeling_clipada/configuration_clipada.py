"""CLIP-ADA model configuration: a CLIP configuration plus the anomaly-detection head's fields.

Example:
    ```python
    >>> from modeling_clipada import CLIPADAConfig
    >>> config = CLIPADAConfig(num_refinements=1)   # ViT-B/16-shaped CLIP, feature_layer 6
    >>> config.feature_layer, config.num_prompt_vectors, config.image_score_top_k
    (6, 4, 500)
    ```
"""

import math

from huggingface_hub.dataclasses import strict
from transformers import CLIPConfig

from .configuration_common import (
    MAX_IMAGE_SCORE_TOP_K,
    MAX_LOGIT_SCALE,
    MAX_SMOOTHING_SIGMA,
    DecisionConfigMixin,
    type_errors_as,
)

PROMPT_MARKER = "[CLS]"
# Each refinement runs the vision encoder once more; the paper's ablation goes to 2.
MAX_REFINEMENTS = 8
MAX_LOSS_WEIGHT = 1000.0
DEFAULT_PROMPT_TEMPLATE = "A photo of a [CLS] with defects for anomaly detection"


class CLIPADAConfigError(ValueError):
    """An invalid field of a [`CLIPADAConfig`] (wrong type or value); the message names the field."""


@type_errors_as(CLIPADAConfigError)
@strict
class CLIPADAConfig(DecisionConfigMixin, CLIPConfig):
    r"""
    Configuration of [`CLIPADAForAnomalySegmentation`]. It holds the frozen CLIP's `text_config` and
    `vision_config` (as [`CLIPConfig`] does) and the fields of the CLIP-ADA head below, with the paper's defaults.

    feature_layer (`int`, *optional*):
        Which ViT layer's patch tokens feed the head, counted from 1 (1..`vision_config.num_hidden_layers`).
        Layers after it are never run. Defaults to the middle layer, `num_hidden_layers // 2` (6 for ViT-B/16):
        the paper argues a middle layer mixes local detail and semantics; its exact index was lost in the text.
    num_prompt_vectors (`int`, *optional*, defaults to 4):
        Number M of learnable prompt vectors (CoOp-style) inserted into the text template.
    prompt_template (`str`, *optional*, defaults to `"A photo of a [CLS] with defects for anomaly detection"`):
        The text template. The marker `[CLS]` is where the prompt vectors go; it must appear exactly once.
    prompt_token_ids (`list[int]`, *optional*):
        The template tokenised without its marker, start and end tokens included. Filled by
        [`CLIPADAForAnomalySegmentation.from_clip`] so that no tokenizer is needed at inference.
    prompt_insert_position (`int`, *optional*):
        Index in `prompt_token_ids` before which the prompt vectors are inserted (filled with `prompt_token_ids`).
    num_refinements (`int`, *optional*, defaults to 1):
        Number R of coarse-to-fine region refinements, 0..8 (0, 1 and 2 are the paper's ablation).
    refinement_loss_weight (`float`, *optional*, defaults to 1.0):
        Weight lambda of each refinement stage's BCE in the loss: `bce(stage 0) + lambda * sum_r bce(stage r)`.
    detach_refinement_input (`bool`, *optional*, defaults to `False`):
        Stop the gradient of the refined passes from flowing through the frozen encoder into the previous map.
        The paper trains end to end (`False`); `True` makes a training step cheaper (no encoder backward).
    image_score_top_k (`int`, *optional*, defaults to 500):
        The image score is the mean of this many highest pixel scores of the anomaly map (1..10**8).
    smoothing_sigma (`float`, *optional*, defaults to 4.0):
        Standard deviation in pixels of the Gaussian that smooths the upsampled anomaly map (0 disables it; at
        most 128).
    use_feature_layernorm (`bool`, *optional*, defaults to `True`):
        Apply CLIP's frozen vision `post_layernorm` to the patch tokens before the projections, as APRIL-GAN and
        AnomalyCLIP do with intermediate tokens (the paper is silent; raw residual-stream tokens have outlier
        channels that a linear projection fits less easily).
    similarity_logit_scale_init (`float`, *optional*, defaults to 2.6592):
        Initial value of the learnable log scale applied to the patch-text cosine similarity before the sigmoid
        (2.6592 = log(1 / 0.07), CLIP's own initial temperature); at most log(1000).
    similarity_logit_bias_init (`float`, *optional*, defaults to 0.0):
        Initial value of the learnable bias added to the scaled similarity before the sigmoid.
    image_threshold (`float`, *optional*):
        Calibrated image-score threshold: an image is anomalous ("NG") when `pred_score >= image_threshold`.
        Set by calibration (`training.calibrate`, or at the end of training); with it and `pixel_threshold` the
        model also returns `pred_label`, `pred_mask` and `pred_score_normalized`.
    pixel_threshold (`float`, *optional*):
        Calibrated pixel threshold: a pixel is anomalous when its `anomaly_map` value is `>= pixel_threshold`.
    category_thresholds (`dict[str, dict[str, float]]`, *optional*):
        Per-category thresholds, `{"bottle": {"image_threshold": 0.61, "pixel_threshold": 0.58}, ...}`, used
        when the caller names the category (`categories=` in `forward`); other images use the global ones.
    target_image_fpr (`float`, *optional*):
        The false-positive rate on normal images that `image_threshold` was calibrated for.
    target_pixel_fpr (`float`, *optional*):
        The false-positive rate on normal pixels that `pixel_threshold` was calibrated for.
    calibration_size (`int`, *optional*):
        Number of normal images the thresholds were calibrated on.
    target_escape_rate (`float`, *optional*):
        The share of defective images allowed to pass (score below `image_threshold`) that the image threshold
        was calibrated for, when labelled defects took part in the calibration.
    calibration_mode (`dict`, *optional*):
        How images became model inputs when the thresholds were calibrated: `{"resize_mode": ..., "tile_size":
        ..., "tile_overlap": ..., "size": [height, width]}`. Scores change scale with the mode, so the thresholds
        apply only to inputs made the same way; None: the checkpoint's own `preprocessor_config.json`.
    reference_memory_sizes (`dict[str, int]`, *optional*):
        The few-shot reference memory's patch count per category, `{"bottle": 4096, ...}`, filled by
        `fit_reference` (see `reference_memory.py`); its buffers `reference_memory.bank_<i>` are in the weights.
        None: no memory, the family's own maps.
    reference_fusion (`str`, *optional*, defaults to `"mean"`):
        How a memory's map joins the family's: `"mean"` averages them (WinCLIP+ and APRIL-GAN's few-shot choice),
        `"memory"` keeps the memory's alone.
    reference_distance_scale (`float`, *optional*, defaults to 1.0):
        The memory's map is `reference_distance_scale * (1 - the highest cosine similarity)`, clamped to [0, 1]:
        1 as APRIL-GAN's memory bank, 0.5 as WinCLIP+'s visual association score (in (0, 1]).

    Example:

    ```python
    >>> from modeling_clipada import CLIPADAConfig, CLIPADAForAnomalySegmentation
    >>> config = CLIPADAConfig(num_refinements=2)
    >>> model = CLIPADAForAnomalySegmentation(config)  # random CLIP weights; use `from_clip` for real ones
    ```"""

    model_type = "clipada"
    config_error = CLIPADAConfigError

    feature_layer: int | None = None
    num_prompt_vectors: int = 4
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    prompt_token_ids: list[int] | None = None
    prompt_insert_position: int | None = None
    num_refinements: int = 1
    refinement_loss_weight: float | int = 1.0
    detach_refinement_input: bool = False
    image_score_top_k: int = 500
    smoothing_sigma: float | int = 4.0
    use_feature_layernorm: bool = True
    similarity_logit_scale_init: float | int = 2.6592
    similarity_logit_bias_init: float | int = 0.0
    image_threshold: float | int | None = None
    pixel_threshold: float | int | None = None
    category_thresholds: dict[str, dict[str, float]] | None = None
    target_image_fpr: float | None = None
    target_pixel_fpr: float | None = None
    calibration_size: int | None = None
    target_escape_rate: float | None = None
    calibration_mode: dict | None = None
    reference_memory_sizes: dict[str, int] | None = None
    reference_fusion: str = "mean"
    reference_distance_scale: float | int = 1.0

    def __post_init__(self, **kwargs):
        self._validate_clip_towers()  # before transformers builds the towers
        super().__post_init__(**kwargs)
        if self.feature_layer is None:
            self.feature_layer = max(1, self.vision_config.num_hidden_layers // 2)
        self.validate_head()

    def validate_head(self):
        """Checks the head fields' values (`@strict` checks their types on every assignment).

        Runs at construction; the model runs it again, so a field edited after construction is caught too.

        Raises:
            CLIPADAConfigError: A `ValueError` naming the first invalid field.
        """
        self._validate_clip_towers()
        self._validate_finite_head_fields()
        num_layers = self.vision_config.num_hidden_layers
        if self.feature_layer is not None and not 1 <= self.feature_layer <= num_layers:
            raise CLIPADAConfigError(
                f"`feature_layer` must be in 1..{num_layers} (vision layers), got {self.feature_layer}."
            )
        prompt_room = self.text_config.max_position_embeddings - 2  # the start and end tokens
        self._check_range("num_refinements", self.num_refinements, 0, MAX_REFINEMENTS)
        self._check_range("num_prompt_vectors", self.num_prompt_vectors, 0, prompt_room)
        self._check_range("image_score_top_k", self.image_score_top_k, 1, MAX_IMAGE_SCORE_TOP_K)
        self._check_range("smoothing_sigma", self.smoothing_sigma, 0.0, MAX_SMOOTHING_SIGMA)
        self._check_range("refinement_loss_weight", self.refinement_loss_weight, 0.0, MAX_LOSS_WEIGHT)
        self._check_range(
            "similarity_logit_scale_init", self.similarity_logit_scale_init, -math.inf, math.log(MAX_LOGIT_SCALE)
        )
        if self.prompt_template.count(PROMPT_MARKER) != 1:
            raise CLIPADAConfigError(
                f"`prompt_template` must contain the marker {PROMPT_MARKER} exactly once (where the prompt vectors "
                f"go), got {self.prompt_template!r}."
            )
        self._validate_prompt_tokens()
        self._validate_decisions()
        self._validate_reference_memory()

    def _validate_prompt_tokens(self):
        if (self.prompt_token_ids is None) != (self.prompt_insert_position is None):
            raise CLIPADAConfigError(
                "`prompt_token_ids` and `prompt_insert_position` must be set together (see `from_clip`)."
            )
        if self.prompt_token_ids is None:
            return
        self._check_token_ids("prompt_token_ids", self.prompt_token_ids)
        max_positions = self.text_config.max_position_embeddings
        if len(self.prompt_token_ids) + self.num_prompt_vectors > max_positions:
            raise CLIPADAConfigError(
                f"`prompt_token_ids` ({len(self.prompt_token_ids)} tokens) plus {self.num_prompt_vectors} prompt "
                f"vectors exceed the text encoder's {max_positions} positions."
            )
        if not 1 <= self.prompt_insert_position < len(self.prompt_token_ids):
            raise CLIPADAConfigError(
                f"`prompt_insert_position` must lie between the start and end tokens "
                f"(1..{len(self.prompt_token_ids) - 1}), got {self.prompt_insert_position}."
            )


__all__ = ["CLIPADAConfig", "CLIPADAConfigError", "DEFAULT_PROMPT_TEMPLATE", "PROMPT_MARKER"]
