"""AdaCLIP model configuration: a CLIP configuration plus the hybrid-prompt head's fields.

Example:
    ```python
    >>> from modeling_clipada import AdaCLIPConfig
    >>> config = AdaCLIPConfig()   # CLIPConfig's default towers; `from_clip` takes a real CLIP's
    >>> config.prompt_length, config.prompt_depth, config.feature_layers
    (5, 4, [3, 6, 9, 12])
    ```
"""

from huggingface_hub.dataclasses import strict
from transformers import CLIPConfig

from .configuration_clipada import CLIPADAConfigError
from .configuration_common import MAX_LOGIT_SCALE, MAX_SMOOTHING_SIGMA, DecisionConfigMixin, type_errors_as

# The phrase lists of the official code (WinCLIP's states, four of its templates); `{}` is the class name in a
# state and the state in a template.
NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ABNORMAL_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
PROMPT_TEMPLATES = (
    "a bad photo of a {}.",
    "a low resolution photo of the {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
)

DICE_UNITS = ("row", "image")
HSF_INITS = ("farthest_point", "k-means++")
# HSF's k-means runs on the patches of one image: at most a 256 x 256 patch grid, a few thousand iterations
MAX_HSF_PATCHES = 256 * 256
MAX_HSF_ITERATIONS = 10_000


class AdaCLIPConfigError(CLIPADAConfigError):
    """An invalid field of an [`AdaCLIPConfig`] (wrong type or value); the message names the field."""


@type_errors_as(AdaCLIPConfigError)
@strict
class AdaCLIPConfig(DecisionConfigMixin, CLIPConfig):
    r"""
    Configuration of [`AdaCLIPForAnomalySegmentation`] (Cao et al., ECCV 2024). It holds the frozen CLIP's
    `text_config` and `vision_config` (as [`CLIPConfig`] does) and the head's fields below, whose defaults are those
    of the official code (github.com/caoyunkang/AdaCLIP, `train.py`) and its published setting (ViT-L/14@336 at 518 px).

    prompt_length (`int`, *optional*, defaults to 5):
        Number of learnable tokens per prompted layer, in both encoders (official `prompting_length`).
    prompt_depth (`int`, *optional*, defaults to 4):
        How many layers the prompts reach (official `prompting_depth`): vision layers 1..depth get `prompt_length`
        tokens appended after the patch tokens (replaced before every one of these layers, then carried along);
        text layers 2..depth get positions 1..`prompt_length` (right after the start token) replaced.
    static_prompts (`bool`, *optional*, defaults to `True`):
        Learnable prompts shared by all images (official prompting type "S").
    dynamic_prompts (`bool`, *optional*, defaults to `True`):
        Prompts generated for each image by a linear layer from the image's own (unprompted) CLIP embedding, added
        to the static ones (official type "D"; both = "SD", the hybrid prompts). `False` is the static-only ablation.
    text_prompts (`bool`, *optional*, defaults to `True`):
        Prompt the text encoder (official branch "L").
    visual_prompts (`bool`, *optional*, defaults to `True`):
        Prompt the vision encoder (official branch "V").
    feature_layers (`list[int]`, *optional*):
        Vision layers (counted from 1, increasing) whose patch tokens give a map each. Defaults to the four evenly
        spaced layers L/4, L/2, 3L/4, L (6, 12, 18, 24 for ViT-L), as the official `train.py` sets them.
    normal_states (`list[str]`, *optional*):
        Normal state phrases, `{}` standing for the class name. Defaults to the official seven.
    abnormal_states (`list[str]`, *optional*):
        Abnormal state phrases. Defaults to the official five.
    prompt_templates (`list[str]`, *optional*):
        Sentence templates, `{}` standing for a state phrase. Defaults to the official four. Each text embedding is
        the normalised mean of the normalised embeddings of all states x templates.
    default_class_name (`str`, *optional*, defaults to `"object"`):
        The class name of images passed without a category (the official code always names the class).
    prompt_token_ids (`dict[str, list[list[int]]]`, *optional*):
        For each class name, its sentences tokenised with start and end tokens: normal states x templates first,
        then abnormal states x templates (state-major). Filled by [`AdaCLIPForAnomalySegmentation.from_clip`] and
        `add_class_names`, so that no tokenizer is needed at inference.
    use_hsf (`bool`, *optional*, defaults to `True`):
        Fuse the class embedding with the hybrid semantic fusion (HSF) of the most abnormal patches for the image
        score (official `use_hsf`).
    hsf_num_clusters (`int`, *optional*, defaults to 20):
        Number of k-means clusters of HSF (official `k_clusters`), at most `hsf_num_patches`.
    hsf_num_patches (`int`, *optional*, defaults to 100):
        How many of the most abnormal patches HSF clusters (the official code takes 5 x `k_clusters`); at most
        65536.
    hsf_weight (`float`, *optional*, defaults to 0.2):
        Weight of the HSF feature: `normalize(w * hsf + (1 - w) * class_embedding)` (official `alpha`).
    hsf_max_iterations (`int`, *optional*, defaults to 300):
        Most k-means iterations (scikit-learn's default, which the official code uses); at most 10000.
    hsf_tolerance (`float`, *optional*, defaults to 1e-4):
        k-means stops when the centres move less than this times the mean feature variance (scikit-learn's rule).
    hsf_init (`str`, *optional*, defaults to `"farthest_point"`):
        How k-means starts: `"farthest_point"`, deterministic (the most abnormal patch, then repeatedly the patch
        farthest from the chosen ones: the same score for the same image on every run and in an exported graph), or
        `"k-means++"`, the official random start (scikit-learn's greedy k-means++, one draw, as the official
        `KMeans(n_init="auto")`), whose scores vary slightly from run to run as the official ones do.
    hsf_seed (`int`, *optional*):
        With `hsf_init="k-means++"`, seeds every forward's draw (the same start for the same image); None draws from
        torch's global generator, as the official code draws from numpy's.
    similarity_scale (`float`, *optional*, defaults to 100.0):
        Cosine similarities are multiplied by it before the softmax over (normal, abnormal) (the official fixed 100);
        at most 1000.
    dice_unit (`str`, *optional*, defaults to `"row"`):
        What one dice term covers: `"row"`, one image row (what the official training computes at its only batch
        size, 1, where its masks lose their batch axis), or `"image"`, one whole image. Either way the loss of a
        batch is the mean of its images' losses.
    smoothing_sigma (`float`, *optional*, defaults to 4.0):
        Standard deviation in pixels of the Gaussian that smooths the anomaly map (0 disables it; at most 128);
        borders are mirrored as scipy's `gaussian_filter` does.
    official_fp16_prompts (`bool`, *optional*, defaults to `True`):
        Round the prompt tokens (static + dynamic) to float16 and back where the official prompt layers cast them
        (`.half()`, even in a float32 model): each copy (one per sentence, one per image), so its gradient is
        rounded per copy too. The official numerics, and what its released weights were trained with; `False` keeps
        the tokens in the model's dtype.
    image_threshold (`float`, *optional*):
        Calibrated image-score threshold: an image is anomalous ("NG") when `pred_score >= image_threshold`.
        With it and `pixel_threshold` the model also returns `pred_label`, `pred_mask` and `pred_score_normalized`.
    pixel_threshold (`float`, *optional*):
        Calibrated pixel threshold in [0, 1]: a pixel is anomalous when its `anomaly_map` value reaches it.
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
    >>> from modeling_clipada import AdaCLIPConfig, AdaCLIPForAnomalySegmentation
    >>> config = AdaCLIPConfig(dynamic_prompts=False)  # the static-only ablation
    >>> model = AdaCLIPForAnomalySegmentation(config)  # random CLIP weights; use `from_clip` for real ones
    ```"""

    model_type = "adaclip"
    config_error = AdaCLIPConfigError

    prompt_length: int = 5
    prompt_depth: int = 4
    static_prompts: bool = True
    dynamic_prompts: bool = True
    text_prompts: bool = True
    visual_prompts: bool = True
    feature_layers: list[int] | None = None
    normal_states: list[str] | None = None
    abnormal_states: list[str] | None = None
    prompt_templates: list[str] | None = None
    default_class_name: str = "object"
    prompt_token_ids: dict[str, list[list[int]]] | None = None
    use_hsf: bool = True
    hsf_num_clusters: int = 20
    hsf_num_patches: int = 100
    hsf_weight: float | int = 0.2
    hsf_max_iterations: int = 300
    hsf_tolerance: float | int = 1e-4
    hsf_init: str = "farthest_point"
    hsf_seed: int | None = None
    similarity_scale: float | int = 100.0
    dice_unit: str = "row"
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
        quarter = max(1, self.vision_config.num_hidden_layers // 4)
        if self.feature_layers is None:
            self.feature_layers = [quarter, 2 * quarter, 3 * quarter, 4 * quarter]
        if self.normal_states is None:
            self.normal_states = list(NORMAL_STATES)
        if self.abnormal_states is None:
            self.abnormal_states = list(ABNORMAL_STATES)
        if self.prompt_templates is None:
            self.prompt_templates = list(PROMPT_TEMPLATES)
        self.validate_head()

    @property
    def num_sentences(self) -> int:
        """Sentences per class name: (normal + abnormal states) x templates (48 with the official lists)."""
        return (len(self.normal_states) + len(self.abnormal_states)) * len(self.prompt_templates)

    def validate_head(self):
        """Checks the head fields' values (`@strict` checks their types on every assignment).

        Runs at construction; the model runs it again, so a field edited after construction is caught too.

        Raises:
            AdaCLIPConfigError: A `ValueError` naming the first invalid field.
        """
        self._validate_clip_towers()
        self._validate_finite_head_fields()
        vision_layers = self.vision_config.num_hidden_layers
        text_layers = self.text_config.num_hidden_layers
        depth_limit = min(vision_layers, text_layers)
        prompted = self.text_prompts or self.visual_prompts
        prompt_room = self.text_config.max_position_embeddings - 2  # the start and end tokens
        checks = [
            (
                "prompt_length",
                1 <= self.prompt_length <= prompt_room,
                f"in 1..{prompt_room} (text positions but the start and end tokens)",
            ),
            ("prompt_depth", 1 <= self.prompt_depth <= depth_limit, f"in 1..{depth_limit} (layers of both towers)"),
            (
                "static_prompts",
                not prompted or self.static_prompts or self.dynamic_prompts,
                "True when `dynamic_prompts` is False and an encoder is prompted",
            ),
            ("hsf_num_patches", 1 <= self.hsf_num_patches <= MAX_HSF_PATCHES, f"in 1..{MAX_HSF_PATCHES}"),
            (
                "hsf_num_clusters",
                1 <= self.hsf_num_clusters <= self.hsf_num_patches,
                f"in 1..hsf_num_patches ({self.hsf_num_patches})",
            ),
            ("hsf_weight", 0 <= self.hsf_weight <= 1, "in [0, 1]"),
            ("hsf_max_iterations", 1 <= self.hsf_max_iterations <= MAX_HSF_ITERATIONS, f"in 1..{MAX_HSF_ITERATIONS}"),
            ("hsf_tolerance", self.hsf_tolerance >= 0, ">= 0"),
            ("hsf_init", self.hsf_init in HSF_INITS, f"one of {HSF_INITS}"),
            ("hsf_seed", self.hsf_seed is None or 0 <= self.hsf_seed < 2**63, "None or in [0, 2**63)"),
            ("similarity_scale", 0 < self.similarity_scale <= MAX_LOGIT_SCALE, f"in (0, {MAX_LOGIT_SCALE:g}]"),
            ("dice_unit", self.dice_unit in DICE_UNITS, f"one of {DICE_UNITS}"),
            ("smoothing_sigma", 0 <= self.smoothing_sigma <= MAX_SMOOTHING_SIGMA, f"in [0, {MAX_SMOOTHING_SIGMA:g}]"),
        ]
        for name, valid, requirement in checks:
            if not valid:
                raise AdaCLIPConfigError(f"`{name}` must be {requirement}, got {getattr(self, name)!r}.")
        layers = self.feature_layers
        if not layers or layers != sorted(set(layers)) or not 1 <= layers[0] <= layers[-1] <= vision_layers:
            raise AdaCLIPConfigError(
                f"`feature_layers` must be increasing vision layers in 1..{vision_layers}, got {layers}."
            )
        for name in ("normal_states", "abnormal_states", "prompt_templates"):
            phrases = getattr(self, name)
            if not phrases or any(phrase.count("{}") != 1 for phrase in phrases):
                raise AdaCLIPConfigError(
                    f"`{name}` must be a non-empty list of phrases with one `{{}}`, got {phrases}."
                )
        self._validate_prompt_token_ids()
        self._validate_decisions()
        self._validate_reference_memory()

    def _validate_prompt_token_ids(self):
        max_positions = self.text_config.max_position_embeddings
        for class_name, sentences in (self.prompt_token_ids or {}).items():
            if len(sentences) != self.num_sentences:
                raise AdaCLIPConfigError(
                    f"`prompt_token_ids[{class_name!r}]` must hold {self.num_sentences} sentences (states x templates),"
                    f" got {len(sentences)}; re-tokenise with `add_class_names` after changing the phrases."
                )
            for token_ids in sentences:
                self._check_token_ids(f"prompt_token_ids[{class_name!r}]", token_ids)
                if not 2 <= len(token_ids) <= max_positions:
                    raise AdaCLIPConfigError(
                        f"`prompt_token_ids[{class_name!r}]` sentences must hold 2..{max_positions} tokens (start and "
                        f"end included), got {len(token_ids)}."
                    )


__all__ = ["DICE_UNITS", "HSF_INITS", "AdaCLIPConfig", "AdaCLIPConfigError"]
