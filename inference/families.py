"""The model families this library trains, evaluates and serves, by `model_type`.

Example:
    ```python
    >>> family = FAMILIES["anomalyclip"]
    >>> model = family.model_class.from_clip("openai/clip-vit-large-patch14-336")
    ```
"""

import dataclasses

from transformers import PretrainedConfig, PreTrainedModel

from modeling_clipada import (
    AdaCLIPConfig,
    AdaCLIPForAnomalySegmentation,
    AnomalyCLIPConfig,
    AnomalyCLIPForAnomalySegmentation,
    CLIPADAConfig,
    CLIPADAForAnomalySegmentation,
)


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """One model family.

    Attributes:
        name: Its `model_type`.
        title: How people write its name.
        config_class: Its configuration class (with `head_field_names()`).
        model_class: Its model class (with `from_clip` and `from_pretrained`).
        shape_fields: Head fields that fix the trained tensors' shapes: they cannot change when a checkpoint of this
            family is continued.
        needs_class_names: Its text prompts name each image's category: `forward(..., categories=...)` must name
            them, and the model tokenises new names with `add_class_names` (AdaCLIP).
    """

    name: str
    title: str
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    shape_fields: frozenset[str]
    needs_class_names: bool = False


FAMILIES = {
    family.name: family
    for family in (
        ModelFamily(
            "clipada",
            "CLIP-ADA",
            CLIPADAConfig,
            CLIPADAForAnomalySegmentation,
            frozenset({"num_refinements", "num_prompt_vectors", "prompt_template"}),
        ),
        ModelFamily(
            "anomalyclip",
            "AnomalyCLIP",
            AnomalyCLIPConfig,
            AnomalyCLIPForAnomalySegmentation,
            frozenset(
                {"num_prompt_vectors", "deep_prompt_length", "deep_prompt_depth", "normal_prompt", "abnormal_prompt"}
            ),
        ),
        ModelFamily(
            "adaclip",
            "AdaCLIP",
            AdaCLIPConfig,
            AdaCLIPForAnomalySegmentation,
            frozenset(
                {
                    "prompt_length",
                    "prompt_depth",
                    "static_prompts",
                    "dynamic_prompts",
                    "text_prompts",
                    "visual_prompts",
                    "feature_layers",
                }
            ),  # fmt: skip
            needs_class_names=True,
        ),
    )
}


def family_titles() -> str:
    """'CLIP-ADA, AnomalyCLIP, ...' for messages."""
    return ", ".join(family.title for family in FAMILIES.values())


__all__ = ["FAMILIES", "ModelFamily", "family_titles"]
