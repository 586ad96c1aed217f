"""CLIP-ADA model: configuration and the anomaly segmentation model, registered for the Auto classes.

Example:
    ```python
    >>> from modeling_clipada import CLIPADAForAnomalySegmentation
    >>> model = CLIPADAForAnomalySegmentation.from_clip("openai/clip-vit-base-patch16")
    ```
"""

from transformers import AutoConfig, AutoModel

from .configuration_anomalyclip import AnomalyCLIPConfig, AnomalyCLIPConfigError
from .configuration_clipada import CLIPADAConfig, CLIPADAConfigError
from .modeling_anomalyclip import AnomalyCLIPForAnomalySegmentation, AnomalyCLIPOutput, AnomalyCLIPPreTrainedModel
from .modeling_clipada import CLIPADAForAnomalySegmentation, CLIPADAOutput, CLIPADAPreTrainedModel

AutoConfig.register(CLIPADAConfig.model_type, CLIPADAConfig, exist_ok=True)
AutoModel.register(CLIPADAConfig, CLIPADAForAnomalySegmentation, exist_ok=True)
# save_pretrained then copies the code files next to the weights and writes `auto_map` into config.json.
CLIPADAConfig.register_for_auto_class()
CLIPADAForAnomalySegmentation.register_for_auto_class("AutoModel")
AutoConfig.register(AnomalyCLIPConfig.model_type, AnomalyCLIPConfig, exist_ok=True)
AutoModel.register(AnomalyCLIPConfig, AnomalyCLIPForAnomalySegmentation, exist_ok=True)
AnomalyCLIPConfig.register_for_auto_class()
AnomalyCLIPForAnomalySegmentation.register_for_auto_class("AutoModel")

__all__ = [
    "AnomalyCLIPConfig",
    "AnomalyCLIPConfigError",
    "AnomalyCLIPForAnomalySegmentation",
    "AnomalyCLIPOutput",
    "AnomalyCLIPPreTrainedModel",
    "CLIPADAConfig",
    "CLIPADAConfigError",
    "CLIPADAForAnomalySegmentation",
    "CLIPADAOutput",
    "CLIPADAPreTrainedModel",
]
