"""CLIP-ADA model: configuration, the anomaly segmentation model and its pipeline, registered with transformers.

Example:
    ```python
    >>> from modeling_clipada import CLIPADAForAnomalySegmentation
    >>> model = CLIPADAForAnomalySegmentation.from_clip("openai/clip-vit-base-patch16")
    ```
"""

from transformers import AutoConfig, AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_adaclip import AdaCLIPConfig, AdaCLIPConfigError
from .configuration_anomalyclip import AnomalyCLIPConfig, AnomalyCLIPConfigError
from .configuration_clipada import CLIPADAConfig, CLIPADAConfigError
from .modeling_adaclip import AdaCLIPForAnomalySegmentation, AdaCLIPOutput, AdaCLIPPreTrainedModel
from .modeling_anomalyclip import AnomalyCLIPForAnomalySegmentation, AnomalyCLIPOutput, AnomalyCLIPPreTrainedModel
from .modeling_clipada import CLIPADAForAnomalySegmentation, CLIPADAOutput, CLIPADAPreTrainedModel
from .pipeline_clipada import PIPELINE_TASK, ImageAnomalyDetectionPipeline

AutoConfig.register(CLIPADAConfig.model_type, CLIPADAConfig, exist_ok=True)
AutoModel.register(CLIPADAConfig, CLIPADAForAnomalySegmentation, exist_ok=True)
# save_pretrained then copies the code files next to the weights and writes `auto_map` into config.json.
CLIPADAConfig.register_for_auto_class()
CLIPADAForAnomalySegmentation.register_for_auto_class("AutoModel")
AutoConfig.register(AnomalyCLIPConfig.model_type, AnomalyCLIPConfig, exist_ok=True)
AutoModel.register(AnomalyCLIPConfig, AnomalyCLIPForAnomalySegmentation, exist_ok=True)
AnomalyCLIPConfig.register_for_auto_class()
AnomalyCLIPForAnomalySegmentation.register_for_auto_class("AutoModel")
AutoConfig.register(AdaCLIPConfig.model_type, AdaCLIPConfig, exist_ok=True)
AutoModel.register(AdaCLIPConfig, AdaCLIPForAnomalySegmentation, exist_ok=True)
AdaCLIPConfig.register_for_auto_class()
AdaCLIPForAnomalySegmentation.register_for_auto_class("AutoModel")
# pipeline(PIPELINE_TASK, model=...) in this project; saved checkpoints carry the pipeline themselves (save_pretrained).
if PIPELINE_TASK not in PIPELINE_REGISTRY.supported_tasks:
    PIPELINE_REGISTRY.register_pipeline(PIPELINE_TASK, pipeline_class=ImageAnomalyDetectionPipeline, pt_model=AutoModel)

__all__ = [
    "AdaCLIPConfig",
    "AdaCLIPConfigError",
    "AdaCLIPForAnomalySegmentation",
    "AdaCLIPOutput",
    "AdaCLIPPreTrainedModel",
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
    "ImageAnomalyDetectionPipeline",
    "PIPELINE_TASK",
]
