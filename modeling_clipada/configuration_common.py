"""What every model family's configuration shares: typed-field errors, head fields, calibrated decision fields.

Example:
    ```python
    >>> @type_errors_as(MyConfigError)
    ... @strict
    ... class MyConfig(DecisionConfigMixin, CLIPConfig):
    ...     config_error = MyConfigError
    ```
"""

import dataclasses
import functools
import math
from collections.abc import Mapping

from huggingface_hub.errors import StrictDataclassError, StrictDataclassFieldValidationError
from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

from .decisions import DECISION_FIELDS

# Bounds on the values that size tensors, loops and buffers: far beyond every published CLIP and head (ViT-bigG/14
# is 1664 wide with 48 layers and an 8192-wide MLP; the heads' defaults are a few vectors and a few pixels), yet
# small enough that a typo in config.json cannot ask for terabytes of memory or hours of work.
MAX_WIDTH = 16384  # hidden_size, projection_dim
MAX_INTERMEDIATE_SIZE = 4 * MAX_WIDTH
MAX_LAYERS = 256
MAX_VOCAB_SIZE = 1_000_000
MAX_TEXT_POSITIONS = 4096
MAX_IMAGE_SIZE = 4096  # vision_config.image_size, in pixels
MAX_PATCH_GRID = 256  # image_size // patch_size: at most 256 x 256 patch positions
MAX_SMOOTHING_SIGMA = 128.0  # pixels; the Gaussian's radius is 4 sigma
MAX_IMAGE_SCORE_TOP_K = 10**8  # pixels (a 10000 x 10000 map); a larger k is the mean of every pixel anyway
MAX_LOGIT_SCALE = 1000.0  # a similarity multiplier (1 / temperature, scale): CLIP's own is at most 100
MAX_REFERENCE_PATCHES = 10**7  # patches in one category's reference memory (k images x h x w)
# The few-shot reference memory's fields (see reference_memory.py): filled by `fit_reference`, never training settings.
REFERENCE_MEMORY_FIELDS = ("reference_memory_sizes", "reference_fusion", "reference_distance_scale")
REFERENCE_FUSIONS = ("mean", "memory")


def _known_activations():
    """transformers' activation names, or None where torch is absent (an export's runner reads the config without
    torch and never builds a tower, so it has no activation to check)."""
    try:
        from transformers.activations import ACT2FN  # imports torch
    except ImportError:
        return None
    return ACT2FN


def type_errors_as(error_class: type[ValueError]):
    """Makes `@strict`'s errors, which are no `ValueError`, raise `error_class` naming the field: type errors of the
    class's own fields (on every assignment), and, while it is built, those of its CLIP towers' fields and of their
    class validators (transformers' own checks of a tower).

    Args:
        error_class: The family's config error (a `ValueError`).

    Returns:
        A class decorator that wraps the class's `__setattr__` and `__init__`.
    """

    def decorate(config_class: type) -> type:
        strict_setattr = config_class.__setattr__
        strict_init = config_class.__init__

        def __setattr__(self, name, value):
            try:
                strict_setattr(self, name, value)
            except StrictDataclassFieldValidationError as error:
                raise error_class(f"Invalid `{name}`: {error.__cause__}") from error

        @functools.wraps(strict_init)
        def __init__(self, *args, **kwargs):
            try:
                strict_init(self, *args, **kwargs)
            except StrictDataclassError as error:  # raised by a tower (`text_config`, `vision_config`) being built
                raise error_class(f"Invalid CLIP configuration: {' '.join(str(error).split())}") from error

        config_class.__setattr__ = __setattr__
        config_class.__init__ = __init__
        return config_class

    return decorate


class DecisionConfigMixin:
    """Head fields and calibrated decision fields of a family's `CLIPConfig` subclass; `config_error` names its
    error class."""

    config_error = ValueError

    @classmethod
    def head_field_names(cls) -> tuple[str, ...]:
        """The fields the class adds to [`CLIPConfig`] that shape the head, in their declaration order.

        Returns:
            The field names; none of `CLIPConfig`'s and none of the calibrated decision fields (`DECISION_FIELDS`),
            which never change a map or a score.
        """
        excluded = {field.name for field in dataclasses.fields(CLIPConfig)} | set(DECISION_FIELDS)
        excluded |= set(REFERENCE_MEMORY_FIELDS)
        return tuple(field.name for field in dataclasses.fields(cls) if field.name not in excluded)

    def _validate_clip_towers(self) -> None:
        """The CLIP fields that shape tensors lie in their ranges; raises `config_error` naming the field.

        Runs before transformers builds the towers (whose own checks end in a `ZeroDivisionError` for 0 heads or a
        patch size of 0, or an error that names no tower) and again on the built ones. `text_config` and
        `vision_config` may be dicts here (missing keys take CLIP's defaults), configs, or None (CLIP's defaults).
        """
        self._check_range("projection_dim", self.projection_dim, 1, MAX_WIDTH)
        for key, tower_class in (("text_config", CLIPTextConfig), ("vision_config", CLIPVisionConfig)):
            field = _tower_reader(getattr(self, key, None), tower_class)
            hidden_size = self._check_range(f"{key}.hidden_size", field("hidden_size"), 1, MAX_WIDTH)
            heads = self._check_range(f"{key}.num_attention_heads", field("num_attention_heads"), 1, hidden_size)
            if hidden_size % heads:
                raise type(self).config_error(
                    f"`{key}.hidden_size` ({hidden_size}) must be a multiple of `{key}.num_attention_heads` ({heads})."
                )
            self._check_range(f"{key}.intermediate_size", field("intermediate_size"), 1, MAX_INTERMEDIATE_SIZE)
            self._check_range(f"{key}.num_hidden_layers", field("num_hidden_layers"), 1, MAX_LAYERS)
            self._check_range(f"{key}.layer_norm_eps", field("layer_norm_eps"), 1e-12, 0.1)
            self._check_range(f"{key}.attention_dropout", field("attention_dropout"), 0.0, 0.99)
            if _known_activations() is not None and field("hidden_act") not in _known_activations():
                raise type(self).config_error(
                    f"`{key}.hidden_act` must be one of transformers' activations (quick_gelu, gelu, ...), got "
                    f"{field('hidden_act')!r}."
                )
            if key == "text_config":
                self._check_range(f"{key}.vocab_size", field("vocab_size"), 1, MAX_VOCAB_SIZE)
                positions = field("max_position_embeddings")
                self._check_range(f"{key}.max_position_embeddings", positions, 2, MAX_TEXT_POSITIONS)
            else:
                self._check_range(f"{key}.num_channels", field("num_channels"), 3, 3)  # RGB images
                image_size = self._check_range(f"{key}.image_size", field("image_size"), 1, MAX_IMAGE_SIZE)
                patch_size = self._check_range(f"{key}.patch_size", field("patch_size"), 1, image_size)
                if image_size // patch_size > MAX_PATCH_GRID:
                    raise type(self).config_error(
                        f"`{key}.image_size` / `{key}.patch_size` must be at most {MAX_PATCH_GRID} patches a side, "
                        f"got {image_size} / {patch_size}."
                    )

    def _check_token_ids(self, name: str, token_ids: list[int]) -> None:
        """Every id of `token_ids` is in the text tower's vocabulary; raises `config_error` naming `name`."""
        vocab_size = self.text_config.vocab_size
        outside = [token for token in token_ids if not 0 <= token < vocab_size]
        if outside:
            raise type(self).config_error(
                f"`{name}` must hold token ids in 0..{vocab_size - 1} (the text vocabulary), got {outside[:5]}."
            )

    def _check_range(self, name: str, value, low, high):
        """`value` when it is a number (an int for int bounds) in `[low, high]`; raises `config_error` naming `name`
        and the range otherwise."""
        integer = isinstance(low, int) and isinstance(high, int)
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:  # NaN fails too
            kind = "an integer" if integer else "a number"
            raise type(self).config_error(f"`{name}` must be {kind} in [{low:g}, {high:g}], got {value!r}.")
        return value

    def _validate_finite_head_fields(self) -> None:
        """Every float head field is a finite number; raises `config_error` naming the first that is not."""
        for name in self.head_field_names():
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise type(self).config_error(f"`{name}` must be a finite number, got {value}.")

    def _validate_reference_memory(self) -> None:
        """`reference_fusion` is one of `REFERENCE_FUSIONS`, `reference_distance_scale` lies in (0, 1], and
        `reference_memory_sizes` maps non-empty category names to patch counts in 1..`MAX_REFERENCE_PATCHES`; raises
        `config_error` naming the field."""
        error = type(self).config_error
        if self.reference_fusion not in REFERENCE_FUSIONS:
            raise error(f"`reference_fusion` must be one of {list(REFERENCE_FUSIONS)}, got {self.reference_fusion!r}.")
        scale = self.reference_distance_scale
        if isinstance(scale, bool) or not (isinstance(scale, (int, float)) and 0 < scale <= 1):  # NaN fails too
            raise error(f"`reference_distance_scale` must be a number in (0, 1], got {scale!r}.")
        for category, size in (self.reference_memory_sizes or {}).items():
            if not category:
                raise error("`reference_memory_sizes` must name every category, got an empty name.")
            self._check_range(f"reference_memory_sizes[{category!r}]", size, 1, MAX_REFERENCE_PATCHES)

    @property
    def has_thresholds(self) -> bool:
        """Whether calibrated image and pixel thresholds are set (the model then returns decisions)."""
        return self.image_threshold is not None and self.pixel_threshold is not None

    def _validate_decisions(self) -> None:
        """Thresholds are scores in [0, 1] (every family's maps and scores are probabilities), target rates lie in
        (0, 1), the calibration size is at least 1, and the calibration mode names every input setting; raises
        `config_error` naming the field."""
        error = type(self).config_error
        thresholds = {"image_threshold": self.image_threshold, "pixel_threshold": self.pixel_threshold}
        for category, values in (self.category_thresholds or {}).items():
            if set(values) != {"image_threshold", "pixel_threshold"}:
                raise error(
                    f"`category_thresholds[{category!r}]` must hold image_threshold and pixel_threshold, got "
                    f"{sorted(values)}."
                )
            thresholds.update({f"category_thresholds[{category!r}].{k}": v for k, v in values.items()})
        for name, value in thresholds.items():
            if value is not None and not (math.isfinite(value) and 0 <= value <= 1):
                raise error(f"`{name}` must be a score in [0, 1], got {value}.")
        for name in ("target_image_fpr", "target_pixel_fpr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0 < value < 1):
                raise error(f"`{name}` must be a rate in (0, 1), got {value}.")
        if self.calibration_size is not None and self.calibration_size < 1:
            raise error(f"`calibration_size` must be >= 1, got {self.calibration_size}.")
        if self.target_escape_rate is not None and not (
            math.isfinite(self.target_escape_rate) and 0 < self.target_escape_rate < 1
        ):
            raise error(f"`target_escape_rate` must be a rate in (0, 1), got {self.target_escape_rate}.")
        mode_keys = {"resize_mode", "tile_size", "tile_overlap", "size"}
        if self.calibration_mode is not None and not mode_keys <= set(self.calibration_mode):
            # more keys are allowed: a later version may record more of the input settings
            raise error(f"`calibration_mode` must hold {sorted(mode_keys)}, got {sorted(self.calibration_mode)}.")


def _tower_reader(tower, tower_class: type):
    """A function `name -> value` of a CLIP tower's field: from a dict (CLIP's default when missing), a built config,
    or None (every field CLIP's default)."""
    defaults = {field.name: field.default for field in dataclasses.fields(tower_class)}
    if tower is None or isinstance(tower, Mapping):
        values = dict(tower or {})
        return lambda name: values.get(name, defaults.get(name))
    return lambda name: getattr(tower, name, defaults.get(name))


__all__ = [
    "MAX_IMAGE_SCORE_TOP_K",
    "MAX_IMAGE_SIZE",
    "MAX_LOGIT_SCALE",
    "MAX_SMOOTHING_SIGMA",
    "REFERENCE_FUSIONS",
    "REFERENCE_MEMORY_FIELDS",
    "DecisionConfigMixin",
    "type_errors_as",
]
