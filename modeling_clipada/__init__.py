"""CLIP-ADA model: configuration and the anomaly segmentation model, registered for the Auto classes.

Example:
    ```python
    >>> from modeling_clipada import CLIPADAForAnomalySegmentation
    >>> model = CLIPADAForAnomalySegmentation.from_clip("openai/clip-vit-base-patch16")
    ```
"""

from transformers import AutoConfig, AutoModel

from .configuration_clipada import CLIPADAConfig, CLIPADAConfigError
from .modeling_clipada import CLIPADAForAnomalySegmentation, CLIPADAOutput, CLIPADAPreTrainedModel

AutoConfig.register(CLIPADAConfig.model_type, CLIPADAConfig, exist_ok=True)
AutoModel.register(CLIPADAConfig, CLIPADAForAnomalySegmentation, exist_ok=True)
# save_pretrained then copies the code files next to the weights and writes `auto_map` into config.json.
CLIPADAConfig.register_for_auto_class()
CLIPADAForAnomalySegmentation.register_for_auto_class("AutoModel")

__all__ = [
    "CLIPADAConfig",
    "CLIPADAConfigError",
    "CLIPADAForAnomalySegmentation",
    "CLIPADAOutput",
    "CLIPADAPreTrainedModel",
]
