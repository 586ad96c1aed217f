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
import math

from huggingface_hub.dataclasses import StrictDataclassFieldValidationError
from transformers import CLIPConfig

from .decisions import DECISION_FIELDS


def type_errors_as(error_class: type[ValueError]):
    """Makes `@strict`'s type errors, which are no `ValueError`, raise `error_class` naming the field.

    Args:
        error_class: The family's config error (a `ValueError`).

    Returns:
        A class decorator that wraps the class's `__setattr__`.
    """

    def decorate(config_class: type) -> type:
        strict_setattr = config_class.__setattr__

        def __setattr__(self, name, value):
            try:
                strict_setattr(self, name, value)
            except StrictDataclassFieldValidationError as error:
                raise error_class(f"Invalid `{name}`: {error.__cause__}") from error

        config_class.__setattr__ = __setattr__
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
        return tuple(field.name for field in dataclasses.fields(cls) if field.name not in excluded)

    def _validate_finite_head_fields(self) -> None:
        """Every float head field is a finite number; raises `config_error` naming the first that is not."""
        for name in self.head_field_names():
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise type(self).config_error(f"`{name}` must be a finite number, got {value}.")

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


__all__ = ["DecisionConfigMixin", "type_errors_as"]
