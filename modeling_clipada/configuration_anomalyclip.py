"""AnomalyCLIP model configuration: a CLIP configuration plus the object-agnostic prompt head's fields.

Example:
    ```python
    >>> from modeling_clipada import AnomalyCLIPConfig
    >>> config = AnomalyCLIPConfig()   # CLIPConfig's default towers; `from_clip` takes a real CLIP's
    >>> config.num_prompt_vectors, config.deep_prompt_length, config.deep_prompt_depth
    (12, 4, 9)
    ```
"""

from huggingface_hub.dataclasses import strict
from transformers import CLIPConfig

from .configuration_clipada import CLIPADAConfigError
from .configuration_common import MAX_LOGIT_SCALE, MAX_SMOOTHING_SIGMA, DecisionConfigMixin, type_errors_as

MAX_LOSS_WEIGHT = 1000.0


class AnomalyCLIPConfigError(CLIPADAConfigError):
    """An invalid field of an [`AnomalyCLIPConfig`] (wrong type or value); the message names the field."""


@type_errors_as(AnomalyCLIPConfigError)
@strict
class AnomalyCLIPConfig(DecisionConfigMixin, CLIPConfig):
    r"""
    Configuration of [`AnomalyCLIPForAnomalySegmentation`] (Zhou et al., ICLR 2024). It holds the frozen CLIP's
    `text_config` and `vision_config` (as [`CLIPConfig`] does) and the head's fields below, whose defaults are those
    of the official code (github.com/zqhang/AnomalyCLIP) and its published setting (ViT-L/14@336 at 518 px).

    num_prompt_vectors (`int`, *optional*, defaults to 12):
        Number N of learnable vectors of each object-agnostic prompt: "[V_1..V_N] object." (normal) and
        "[W_1..W_N] damaged object." (abnormal); they follow the start token.
    normal_prompt (`str`, *optional*, defaults to `"object."`):
        The text after the normal prompt's learnable vectors.
    abnormal_prompt (`str`, *optional*, defaults to `"damaged object."`):
        The text after the abnormal prompt's learnable vectors.
    normal_prompt_token_ids (`list[int]`, *optional*):
        `normal_prompt` tokenised with start and end tokens; the vectors go after the start token. Filled by
        [`AnomalyCLIPForAnomalySegmentation.from_clip`] so that no tokenizer is needed at inference.
    abnormal_prompt_token_ids (`list[int]`, *optional*):
        The same for `abnormal_prompt`.
    deep_prompt_length (`int`, *optional*, defaults to 4):
        Number of learnable tokens that replace positions 1..n (the first prompt vectors' hidden states) at the
        input of text layers 2..`deep_prompt_depth` (official `t_n_ctx`). At most `num_prompt_vectors`.
    deep_prompt_depth (`int`, *optional*, defaults to 9):
        How many text layers the learnable tokens reach: layer 1 through the prompt vectors, layers
        2..depth through `deep_prompt_depth - 1` sets of deep tokens (official `depth`; 1 = no deep tokens).
    dpam_start_layer (`int`, *optional*):
        First vision layer (counted from 1) whose attention feeds the patch features through DPAM's value-value
        attention; `num_hidden_layers + 1` disables DPAM. Defaults to `num_hidden_layers // 4`: 6 for the 24-layer
        ViT-L, where the official `DPAM_layer=20` replaces layers 6..24. The class token and the layers'
        own outputs keep CLIP's attention (the original path).
    feature_layers (`list[int]`, *optional*):
        Vision layers (counted from 1, increasing) whose patch tokens give a map each; the maps are summed.
        Defaults to the last layer only, `[24]` for ViT-L, as the official scripts run (`--features_list 24`);
        the paper's `[6, 12, 18, 24]` is the other published choice.
    similarity_temperature (`float`, *optional*, defaults to 0.07):
        Cosine similarities are divided by it before the softmax over (normal, abnormal), for patches and for the
        global embedding (the official code's fixed 0.07, CLIP's initial temperature, not its trained one); at
        least 0.001.
    pixel_loss_weight (`float`, *optional*, defaults to 4.0):
        Weight of the per-layer focal and dice losses: `ce + pixel_loss_weight * sum_layers(focal + dice + dice)`
        (the official `lam = 4`).
    smoothing_sigma (`float`, *optional*, defaults to 4.0):
        Standard deviation in pixels of the Gaussian that smooths the upsampled anomaly map (0 disables it; at most
        128); borders are mirrored as scipy's `gaussian_filter` does.
    official_fp16_prompts (`bool`, *optional*, defaults to `True`):
        Round the deep tokens to float16 and back where the official code casts them (`.half()`, even in a float32
        model): each copy of a token, one per prompt sentence, so its gradient is rounded per copy too. The official
        numerics, and what its released prompts were trained with; `False` keeps the tokens in the model's dtype.
    image_threshold (`float`, *optional*):
        Calibrated image-score threshold: an image is anomalous ("NG") when `pred_score >= image_threshold`.
        With it and `pixel_threshold` the model also returns `pred_label`, `pred_mask` and `pred_score_normalized`.
    pixel_threshold (`float`, *optional*):
        Calibrated pixel threshold: a pixel is anomalous when its `anomaly_map` value (in [0, 1]: the mean over
        `feature_layers`) is `>= pixel_threshold`.
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
    >>> from modeling_clipada import AnomalyCLIPConfig, AnomalyCLIPForAnomalySegmentation
    >>> config = AnomalyCLIPConfig(feature_layers=[6, 12])  # the default CLIP has 12 vision layers
    >>> model = AnomalyCLIPForAnomalySegmentation(config)  # random CLIP weights; use `from_clip` for real ones
    ```"""

    model_type = "anomalyclip"
    config_error = AnomalyCLIPConfigError

    num_prompt_vectors: int = 12
    normal_prompt: str = "object."
    abnormal_prompt: str = "damaged object."
    normal_prompt_token_ids: list[int] | None = None
    abnormal_prompt_token_ids: list[int] | None = None
    deep_prompt_length: int = 4
    deep_prompt_depth: int = 9
    dpam_start_layer: int | None = None
    feature_layers: list[int] | None = None
    similarity_temperature: float | int = 0.07
    pixel_loss_weight: float | int = 4.0
    smoothing_sigma: float | int = 4.0
    official_fp16_prompts: bool = True
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
        num_layers = self.vision_config.num_hidden_layers
        if self.dpam_start_layer is None:
            self.dpam_start_layer = max(1, num_layers // 4)
        if self.feature_layers is None:
            self.feature_layers = [num_layers]
        self.validate_head()

    def validate_head(self):
        """Checks the head fields' values (`@strict` checks their types on every assignment).

        Runs at construction; the model runs it again, so a field edited after construction is caught too.

        Raises:
            AnomalyCLIPConfigError: A `ValueError` naming the first invalid field.
        """
        self._validate_clip_towers()
        self._validate_finite_head_fields()
        vision_layers = self.vision_config.num_hidden_layers
        text_layers = self.text_config.num_hidden_layers
        prompt_room = self.text_config.max_position_embeddings - 2  # the start and end tokens
        checks = [
            (
                "num_prompt_vectors",
                0 <= self.num_prompt_vectors <= prompt_room,
                f"in 0..{prompt_room} (text positions but the start and end tokens)",
            ),
            ("deep_prompt_depth", 1 <= self.deep_prompt_depth <= text_layers, f"in 1..{text_layers} (text layers)"),
            (
                "deep_prompt_length",
                0 <= self.deep_prompt_length <= self.num_prompt_vectors,
                f"in 0..num_prompt_vectors ({self.num_prompt_vectors})",
            ),
            (
                "dpam_start_layer",
                self.dpam_start_layer is None or 1 <= self.dpam_start_layer <= vision_layers + 1,
                f"in 1..{vision_layers + 1} (vision layers, {vision_layers + 1} = no DPAM)",
            ),
            (
                "similarity_temperature",
                1 / MAX_LOGIT_SCALE <= self.similarity_temperature,
                f">= {1 / MAX_LOGIT_SCALE:g} (similarities are divided by it)",
            ),
            ("pixel_loss_weight", 0 <= self.pixel_loss_weight <= MAX_LOSS_WEIGHT, f"in [0, {MAX_LOSS_WEIGHT:g}]"),
            ("smoothing_sigma", 0 <= self.smoothing_sigma <= MAX_SMOOTHING_SIGMA, f"in [0, {MAX_SMOOTHING_SIGMA:g}]"),
        ]
        for name, valid, requirement in checks:
            if not valid:
                raise AnomalyCLIPConfigError(f"`{name}` must be {requirement}, got {getattr(self, name)}.")
        layers = self.feature_layers
        if layers is not None and (
            not layers or layers != sorted(set(layers)) or not 1 <= layers[0] <= layers[-1] <= vision_layers
        ):
            raise AnomalyCLIPConfigError(
                f"`feature_layers` must be increasing vision layers in 1..{vision_layers}, got {layers}."
            )
        self._validate_prompt_tokens()
        self._validate_decisions()
        self._validate_reference_memory()

    def _validate_prompt_tokens(self):
        if (self.normal_prompt_token_ids is None) != (self.abnormal_prompt_token_ids is None):
            raise AnomalyCLIPConfigError(
                "`normal_prompt_token_ids` and `abnormal_prompt_token_ids` must be set together (see `from_clip`)."
            )
        max_positions = self.text_config.max_position_embeddings
        for name in ("normal_prompt_token_ids", "abnormal_prompt_token_ids"):
            token_ids = getattr(self, name)
            if token_ids is None:
                continue
            if len(token_ids) < 2:
                raise AnomalyCLIPConfigError(f"`{name}` must hold at least the start and end tokens, got {token_ids}.")
            self._check_token_ids(name, token_ids)
            if len(token_ids) + self.num_prompt_vectors > max_positions:
                raise AnomalyCLIPConfigError(
                    f"`{name}` ({len(token_ids)} tokens) plus {self.num_prompt_vectors} prompt vectors exceed the "
                    f"text encoder's {max_positions} positions."
                )


__all__ = ["AnomalyCLIPConfig", "AnomalyCLIPConfigError"]
