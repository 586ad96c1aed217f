"""CLIP-ADA model: configuration, the anomaly segmentation model and its pipeline, registered with transformers.

Example:
    ```python
    >>> from modeling_clipada import CLIPADAForAnomalySegmentation
    >>> model = CLIPADAForAnomalySegmentation.from_clip("openai/clip-vit-base-patch16")
    ```
"""

from transformers import AutoConfig
from transformers.utils import is_torch_available

from .configuration_adaclip import AdaCLIPConfig, AdaCLIPConfigError
from .configuration_anomalyclip import AnomalyCLIPConfig, AnomalyCLIPConfigError
from .configuration_clipada import CLIPADAConfig, CLIPADAConfigError

for _config_class in (CLIPADAConfig, AnomalyCLIPConfig, AdaCLIPConfig):
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    # save_pretrained then copies the code files next to the weights and writes `auto_map` into config.json.
    _config_class.register_for_auto_class()

# The configs and `decisions` serve without torch (the runners of exported models); the models need it.
if is_torch_available():
    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    from .modeling_adaclip import AdaCLIPForAnomalySegmentation, AdaCLIPOutput, AdaCLIPPreTrainedModel
    from .modeling_anomalyclip import (
        AnomalyCLIPForAnomalySegmentation,
        AnomalyCLIPOutput,
        AnomalyCLIPPreTrainedModel,
    )
    from .modeling_clipada import CLIPADAForAnomalySegmentation, CLIPADAOutput, CLIPADAPreTrainedModel
    from .pipeline_clipada import PIPELINE_TASK, ImageAnomalyDetectionPipeline

    for _config_class, _model_class in (
        (CLIPADAConfig, CLIPADAForAnomalySegmentation),
        (AnomalyCLIPConfig, AnomalyCLIPForAnomalySegmentation),
        (AdaCLIPConfig, AdaCLIPForAnomalySegmentation),
    ):
        AutoModel.register(_config_class, _model_class, exist_ok=True)
        _model_class.register_for_auto_class("AutoModel")
    # pipeline(PIPELINE_TASK, model=...) in this project; saved checkpoints carry the pipeline (save_pretrained).
    if PIPELINE_TASK not in PIPELINE_REGISTRY.supported_tasks:
        PIPELINE_REGISTRY.register_pipeline(
            PIPELINE_TASK, pipeline_class=ImageAnomalyDetectionPipeline, pt_model=AutoModel
        )

# the names that need torch; without it, `__getattr__` says so
_TORCH_NAMES = {
    "AdaCLIPForAnomalySegmentation",
    "AdaCLIPOutput",
    "AdaCLIPPreTrainedModel",
    "AnomalyCLIPForAnomalySegmentation",
    "AnomalyCLIPOutput",
    "AnomalyCLIPPreTrainedModel",
    "CLIPADAForAnomalySegmentation",
    "CLIPADAOutput",
    "CLIPADAPreTrainedModel",
    "ImageAnomalyDetectionPipeline",
    "PIPELINE_TASK",
}
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


def __getattr__(name: str):
    """Without torch, the models are not defined: say so, naming the package to install."""
    if name in _TORCH_NAMES:
        raise ModuleNotFoundError(f"{name} needs PyTorch, which is not installed", name="torch")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
