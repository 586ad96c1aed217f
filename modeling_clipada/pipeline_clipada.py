"""The `image-anomaly-detection` pipeline: images in, score, OK/NG label, anomaly map and mask at each image's size out.

Every saved CLIP-ADA checkpoint carries this file and names it in `config.json` (`custom_pipelines`, see
`CLIPADAPreTrainedModel.save_pretrained`), so the pipeline loads as remote code where this project is not installed.

Example:
    ```python
    >>> from transformers import pipeline
    >>> detector = pipeline("image-anomaly-detection", model="outputs/run", trust_remote_code=True)
    >>> result = detector("bottle/test/broken_large/000.png", category="bottle")
    >>> result["score"], result["label"], result["anomaly_map"].size, result["mask"].size
    (0.83, 'NG', (900, 900), (900, 900))
    ```
"""

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from transformers import Pipeline
from transformers.image_utils import load_image

from .clip_parts import per_image_thresholds

PIPELINE_TASK = "image-anomaly-detection"


class ImageAnomalyDetectionPipeline(Pipeline):
    """Anomaly detection with a CLIP-ADA model (or any model whose output has `anomaly_map` and `pred_score`).

    Call it with one image or a list: PIL images, local paths, or http(s) URLs. Each result is a dict:

    - **score** (`float`): the image anomaly score in [0, 1].
    - **label** (`str`, only with calibrated thresholds): `"NG"` (anomalous) or `"OK"`.
    - **normalized_score** (`float`, only with calibrated thresholds): the score with the threshold mapped to 0.5.
    - **anomaly_map** (`PIL.Image`, mode `"L"`): pixel probabilities at the input's own size, 0..255 = 0..1 on a
      fixed scale (never stretched per image, so maps of different images compare).
    - **predicted_anomaly_map** (`torch.Tensor`): the same map as float probabilities, `(height, width)`.
    - **mask** (`PIL.Image`, mode `"L"`, 255 = anomalous, only with calibrated thresholds, else `None`): the map
      thresholded at the pixel threshold.

    Pass `category="bottle"` to decide with that category's thresholds when the checkpoint has them.
    """

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(
        self, category: str | None = None, timeout: float | None = None, **kwargs: Any
    ) -> tuple[dict, dict, dict]:
        preprocess_params = {} if timeout is None else {"timeout": timeout}
        return preprocess_params, {"category": category}, {}

    def preprocess(self, image: "Image.Image | str | os.PathLike", timeout: float | None = None) -> dict:
        """One image -> `pixel_values` `(1, 3, H, W)` and its original size `target_size` `(1, 2)` (height, width)."""
        image = _read_image(image, timeout)
        inputs = self.image_processor(images=image, return_tensors="pt")
        return {
            "pixel_values": inputs["pixel_values"].to(self.dtype),
            "target_size": torch.tensor([[image.height, image.width]]),
        }

    def _forward(self, model_inputs: dict, category: str | None = None) -> dict:
        """Runs the model; keeps the map, the score and, with calibrated thresholds, the label and pixel threshold."""
        target_size = model_inputs.pop("target_size")
        batch_size = model_inputs["pixel_values"].shape[0]
        categories = [category] * batch_size
        calibrated = getattr(self.model.config, "has_thresholds", False)
        outputs = self.model(**model_inputs, **({"categories": categories} if calibrated else {}))
        result = {
            "anomaly_map": outputs.anomaly_map.float(),
            "pred_score": outputs.pred_score.float(),
            "target_size": target_size,
        }
        if calibrated:
            config = self.model.config
            _, pixel_thresholds = per_image_thresholds(
                config.image_threshold, config.pixel_threshold, config.category_thresholds, categories, batch_size
            )
            result["pred_label"] = outputs.pred_label
            result["pred_score_normalized"] = outputs.pred_score_normalized.float()
            result["pixel_threshold"] = torch.tensor(pixel_thresholds, dtype=torch.float32)
        return result

    def postprocess(self, model_outputs: dict) -> dict[str, Any]:
        """Model outputs of one image -> the result dict, maps resized (bilinear) to the image's own size."""
        anomaly_map = model_outputs["anomaly_map"].reshape(-1, *model_outputs["anomaly_map"].shape[-2:])[:1]
        height, width = (int(value) for value in model_outputs["target_size"].reshape(-1)[:2])
        resized = F.interpolate(anomaly_map[:, None].cpu(), size=(height, width), mode="bilinear", align_corners=False)
        probabilities = resized[0, 0].clamp(0.0, 1.0)
        result = {
            "score": float(model_outputs["pred_score"].reshape(-1)[0]),
            "anomaly_map": Image.fromarray(np.round(probabilities.numpy() * 255).astype(np.uint8)),
            "predicted_anomaly_map": probabilities,
            "mask": None,
        }
        if "pred_label" in model_outputs:
            pixel_threshold = float(model_outputs["pixel_threshold"].reshape(-1)[0])
            mask = (probabilities >= pixel_threshold).numpy()
            result["label"] = "NG" if bool(model_outputs["pred_label"].reshape(-1)[0]) else "OK"
            result["normalized_score"] = float(model_outputs["pred_score_normalized"].reshape(-1)[0])
            result["mask"] = Image.fromarray(mask.astype(np.uint8) * 255)
        return result


def _read_image(image: "Image.Image | str | os.PathLike", timeout: float | None) -> Image.Image:
    """A PIL image, upright; local files keep their mode (16-bit stays 16-bit), URLs go through `load_image`."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)) and os.path.isfile(image):
        try:
            with Image.open(image) as opened:
                return ImageOps.exif_transpose(opened)  # a loaded copy
        except Exception as error:  # PIL raises many types for broken files
            raise ValueError(f"cannot read image file {str(image)!r}: {error}") from error
    if isinstance(image, str):
        return load_image(image, timeout=timeout)
    raise TypeError(f"expected a PIL image, an image path or an http(s) URL, got {type(image).__name__}")


def custom_pipelines_entry() -> dict[str, dict[str, Any]]:
    """The `custom_pipelines` value of `config.json` that makes `pipeline(PIPELINE_TASK, model=checkpoint)` load
    this file's class (as `Pipeline.save_pretrained` writes it for a registered pipeline)."""
    module = __name__.split(".")[-1]
    return {PIPELINE_TASK: {"impl": f"{module}.{ImageAnomalyDetectionPipeline.__name__}", "pt": ["AutoModel"]}}


__all__ = ["PIPELINE_TASK", "ImageAnomalyDetectionPipeline", "custom_pipelines_entry"]
