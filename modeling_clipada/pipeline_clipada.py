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
from PIL import Image
from transformers import Pipeline
from transformers.image_utils import load_image
from transformers.utils import logging

from .decisions import apply_thresholds, normalize_scores, resolve_thresholds

PIPELINE_TASK = "image-anomaly-detection"
logger = logging.get_logger(__name__)


class ImageAnomalyDetectionPipeline(Pipeline):
    """Anomaly detection with a CLIP-ADA model (or any model whose output has `anomaly_map` and `pred_score`).

    Call it with one image or a list: PIL images, local paths, or http(s) URLs. They are read by the image processor's
    rules (`processing/image_inputs.py`): PIL images and files are `(H, W, C)` whatever their size, multi-frame files
    are refused, images above the processor's `max_image_pixels` are refused before decoding (URLs: after download,
    Pillow's own limit first). Each result is a dict:

    - **score** (`float`): the image anomaly score in [0, 1].
    - **label** (`str`, only with calibrated thresholds): `"NG"` (anomalous) or `"OK"`.
    - **normalized_score** (`float`, only with calibrated thresholds): the score with the threshold mapped to 0.5.
    - **anomaly_map** (`PIL.Image`, mode `"L"`): pixel probabilities at the input's own size, 0..255 = 0..1 on a
      fixed scale (never stretched per image, so maps of different images compare).
    - **predicted_anomaly_map** (`torch.Tensor`): the same map as float probabilities, `(height, width)`.
    - **mask** (`PIL.Image`, mode `"L"`, 255 = anomalous, only with calibrated thresholds, else `None`): the map
      thresholded at the pixel threshold.
    - **uncalibrated** (`str`, only when the thresholds were calibrated in another mode than the image processor's):
      why there is no label and no mask.

    Pass `category="bottle"` to decide with that category's thresholds when the checkpoint has them (and, for families
    whose prompts name the category, to name it; the name must have been tokenised into the checkpoint). A checkpoint
    whose processor letterboxes or tiles gets its maps merged back, as `clipada-predict` does. Thresholds decide only
    in the mode they were calibrated in (`config.calibration_mode`): with an image processor of another mode (resize
    mode, tiles, input size) there is no label and no mask, and `uncalibrated` says why.

    A model whose score or map holds NaN or inf (NaN weights, a `preprocessor_config.json` that loads NaN) raises a
    `ValueError` naming the image: a non-finite score is never a decision.
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
        """One image -> `pixel_values` `(N, 3, H, W)` (N = 1, or its tiles), its size, its layout (letterbox,
        tiles: the processor's `image_layouts`) and its name for errors."""
        source, name = _image_source(image, timeout)
        pixels = self.image_processor.process_image(source, name)  # (3, H, W) in [0, 1], read by the rules
        inputs = self.image_processor.model_inputs([pixels], names=[name], return_tensors="pt")
        return {
            "pixel_values": inputs["pixel_values"].to(self.dtype),
            "target_size": tuple(int(side) for side in pixels.shape[-2:]),
            "image_layouts": inputs.get("image_layouts"),
            "name": name,
        }

    def _forward(self, model_inputs: dict, category: str | None = None) -> dict:
        """Runs the model on every input of the image (categories name it in the prompts of families that do)."""
        pixel_values = model_inputs["pixel_values"]
        outputs = self.model(pixel_values=pixel_values, categories=[category] * len(pixel_values))
        return {
            "anomaly_map": outputs.anomaly_map.float(),
            "pred_score": outputs.pred_score.float(),
            "target_size": model_inputs["target_size"],
            "image_layouts": model_inputs["image_layouts"],
            "category": category,
            "name": model_inputs["name"],
        }

    def postprocess(self, model_outputs: dict) -> dict[str, Any]:
        """Model outputs of one image -> the result dict: the map at the image's own size (tiles blended, letterbox
        padding cropped, as `clipada-predict` does), the score, and the decisions at the calibrated thresholds."""
        top_k = getattr(self.model.config, "image_score_top_k", None)
        maps, scores = self.image_processor.post_process_anomaly_detection(
            model_outputs,
            [model_outputs["target_size"]],
            model_outputs["image_layouts"],
            **({} if top_k is None else {"image_score_top_k": top_k}),
        )
        anomaly_map, score = maps[0].float(), scores.reshape(-1)[:1].float()
        _check_finite(score, anomaly_map, _unbatched(model_outputs["name"]))
        display = anomaly_map.clamp(0.0, 1.0)  # maps are probabilities; a sum over several layers can exceed 1
        result = {
            "score": float(score),
            "anomaly_map": Image.fromarray(np.round(display.numpy() * 255).astype(np.uint8)),
            "predicted_anomaly_map": anomaly_map,
            "mask": None,
        }
        mismatch = _mode_mismatch(getattr(self.model.config, "calibration_mode", None), self.image_processor)
        if getattr(self.model.config, "has_thresholds", False) and mismatch:
            result["uncalibrated"] = mismatch
        elif getattr(self.model.config, "has_thresholds", False):
            image_threshold, pixel_threshold, *_ = resolve_thresholds(self.model.config, model_outputs["category"])
            label, mask = apply_thresholds(anomaly_map[None], score, image_threshold, pixel_threshold)
            result["label"] = "NG" if bool(label) else "OK"
            result["normalized_score"] = float(normalize_scores(score, image_threshold))
            result["mask"] = Image.fromarray(mask[0].numpy().astype(np.uint8) * 255)
        return result


def _mode_mismatch(calibration_mode: dict | None, image_processor: Any) -> str:
    """Why thresholds calibrated in `calibration_mode` do not fit the inputs `image_processor` makes; "" when they
    fit, or when the mode was not recorded (the checkpoint's own processor, which the pipeline loads, is its mode).
    The same rule as `inference.modes.same_mode`, written out here so that the remote code needs nothing else."""
    if not calibration_mode:
        return ""
    sizes = getattr(image_processor, "size", None) or {}
    size = [sizes.get(side) if isinstance(sizes, dict) else getattr(sizes, side, None) for side in ("height", "width")]
    tile_size = getattr(image_processor, "tile_size", None) or None
    running = {
        "resize_mode": getattr(image_processor, "resize_mode", "squash"),
        "tile_size": tile_size,
        "tile_overlap": float(getattr(image_processor, "tile_overlap", 0.0) or 0.0) if tile_size else None,
        "size": size,
    }
    calibrated_tiles = calibration_mode.get("tile_size") or None
    fits = list(calibration_mode.get("size") or ()) == size and calibrated_tiles == tile_size
    if fits and tile_size:
        fits = abs(float(calibration_mode.get("tile_overlap") or 0.0) - running["tile_overlap"]) < 1e-9
    elif fits:
        fits = calibration_mode.get("resize_mode", "squash") == running["resize_mode"]
    if fits:
        return ""
    message = (
        f"the thresholds were calibrated with inputs made as {calibration_mode}, but this image processor makes them "
        f"as {running}: scores change scale, so no label or mask is given; use the checkpoint's own image processor"
    )
    logger.warning_once(message)
    return message


def _image_source(image: "Image.Image | str | os.PathLike", timeout: float | None) -> tuple[Any, str]:
    """What the image processor reads, and the image's name in errors: a PIL image or a local path as it is (the
    processor checks frames and size before decoding a file); an http(s) URL or data URI downloaded by `load_image`."""
    if isinstance(image, Image.Image):
        return image, "image"
    if isinstance(image, str) and image.startswith(("http://", "https://", "data:image/")):
        try:
            return load_image(image, timeout=timeout), image
        except Image.DecompressionBombError as error:
            raise ValueError(f"{image} is too large to open safely ({error}); Pillow refuses it.") from error
    if isinstance(image, (str, os.PathLike)):
        return image, os.path.basename(image) or str(image)
    raise TypeError(f"expected a PIL image, an image path or an http(s) URL, got {type(image).__name__}")


def _unbatched(value: Any) -> Any:
    """A value the pipeline's batching wrapped in a list of one, unwrapped."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def _check_finite(score: Any, anomaly_map: Any, name: str) -> None:
    """Refuses NaN or inf in a score `(1,)` or map `(H, W)`: they would pass as OK."""
    if not bool(score.isfinite().all()) or not bool(anomaly_map.isfinite().all()):
        raise ValueError(
            f"{name}: the model produced non-finite scores (NaN or inf) for this image, so no decision is given: "
            "check the checkpoint's weights and the image_mean/image_std of its preprocessor_config.json."
        )


def custom_pipelines_entry() -> dict[str, dict[str, Any]]:
    """The `custom_pipelines` value of `config.json` that makes `pipeline(PIPELINE_TASK, model=checkpoint)` load
    this file's class (as `Pipeline.save_pretrained` writes it for a registered pipeline)."""
    module = __name__.split(".")[-1]
    return {PIPELINE_TASK: {"impl": f"{module}.{ImageAnomalyDetectionPipeline.__name__}", "pt": ["AutoModel"]}}


__all__ = ["PIPELINE_TASK", "ImageAnomalyDetectionPipeline", "custom_pipelines_entry"]
