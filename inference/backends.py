"""Inference backends for `inference.predict`: CLIP-normalised pixels in, anomaly maps and image scores out.

A backend only runs the model. Thresholds, decisions, drawing and writing live elsewhere and never depend on which
backend produced the maps, so an ONNX Runtime or OpenVINO backend is one class here and one entry in `BACKENDS`.

Example:
    ```python
    >>> backend = load_backend("torch", "outputs/run", device="cpu", dtype="float32")
    >>> result = backend(pixel_values)           # (B, 3, H, W) float32, numpy or torch
    >>> result.anomaly_map.shape, result.pred_score.shape
    ((B, H, W), (B,))
    ```
"""

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Protocol

import numpy as np
import torch

from inference.loading import add_class_names, load_clipada_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class BackendOutput:
    """What every backend returns for a batch, on the CPU in float32.

    Attributes:
        anomaly_map: `(batch_size, H, W)` pixel anomaly probabilities at the model's input resolution.
        pred_score: `(batch_size,)` image anomaly scores.
    """

    anomaly_map: np.ndarray
    pred_score: np.ndarray


class AnomalyBackend(Protocol):
    """The interface of an inference backend: a callable on a batch of CLIP-normalised pixels."""

    name: str

    def __call__(self, pixel_values: np.ndarray | torch.Tensor, category: str | None = None) -> BackendOutput:
        """Anomaly maps and scores of `(batch_size, 3, H, W)` CLIP-normalised float32 pixels of one category (named
        in the prompts of families that name categories; None for their default)."""
        ...


class TorchBackend:
    """The PyTorch model of a CLIP-ADA checkpoint, in eval mode without gradients.

    Args:
        model_name_or_path: A CLIP-ADA checkpoint folder or Hub id.
        device: A torch device name (`cpu`, `cuda`, `cuda:1`).
        dtype: `float32` or `bfloat16` (the weights' and the computation's precision; outputs are float32).
    """

    name = "torch"

    def __init__(self, model_name_or_path: str, device: str = "cpu", dtype: str = "float32"):
        self.device = torch.device(device)
        self.model_name_or_path = model_name_or_path
        self.model = load_clipada_model(model_name_or_path, dtype=DTYPES[dtype]).to(self.device).eval()

    @torch.inference_mode()
    def __call__(self, pixel_values: np.ndarray | torch.Tensor, category: str | None = None) -> BackendOutput:
        """Runs the model.

        Args:
            pixel_values: `(batch_size, 3, H, W)`, CLIP-normalised.
            category: The images' category: AdaCLIP names it in its prompts (None: its default class name).

        Returns:
            [`BackendOutput`] with `anomaly_map` `(batch_size, H, W)` and `pred_score` `(batch_size,)`.
        """
        pixel_values = torch.as_tensor(pixel_values).to(self.device)
        if category is not None:
            add_class_names(self.model, [category], self.model_name_or_path)
        outputs = self.model(pixel_values, categories=[category] * len(pixel_values))
        return BackendOutput(
            anomaly_map=outputs.anomaly_map.float().cpu().numpy(),
            pred_score=outputs.pred_score.float().cpu().numpy(),
        )


class ExportedBackend:
    """A `clipada-export` folder run by ONNX Runtime or OpenVINO (`inference.deploy.runners`), on the CPU in float32.

    Args:
        model_name_or_path: The export folder; its format must match the backend.
        device: `cpu` only.
        dtype: `float32` only (the graph's precision).

    Attributes:
        decision_config: The export's thresholds (`image_threshold`, `pixel_threshold`, `category_thresholds`) from
            its `clipada_export.json`, where a checkpoint has them in `config.json`.
    """

    name = "exported"

    def __init__(self, model_name_or_path: str, device: str = "cpu", dtype: str = "float32"):
        from inference.deploy.runners import ExportedCLIPADA

        if device != "cpu" or dtype != "float32":
            raise ValueError(
                f"--backend {self.name} runs on the CPU in float32; drop --device {device} --dtype {dtype}"
            )
        # as many runtime threads as torch was given (`--num_threads`, or its default)
        self.runner = ExportedCLIPADA(model_name_or_path, backend=self.name, num_threads=torch.get_num_threads())
        thresholds = self.runner.config["thresholds"] or {}
        self.decision_config = SimpleNamespace(
            image_threshold=thresholds.get("image_threshold"),
            pixel_threshold=thresholds.get("pixel_threshold"),
            category_thresholds=thresholds.get("category_thresholds"),
        )

    def __call__(self, pixel_values: np.ndarray | torch.Tensor, category: str | None = None) -> BackendOutput:
        """Runs the graph on `(batch_size, 3, H, W)` CLIP-normalised pixels at the export's input size (exported
        CLIP-ADA names no category: `category` is not used)."""
        pixel_values = pixel_values.numpy() if isinstance(pixel_values, torch.Tensor) else pixel_values
        outputs = self.runner(pixel_values)
        return BackendOutput(anomaly_map=outputs["anomaly_map"], pred_score=outputs["pred_score"])


class OnnxRuntimeBackend(ExportedBackend):
    """An ONNX export (`clipada-export --format onnx`) on ONNX Runtime."""

    name = "onnxruntime"


class OpenVINOBackend(ExportedBackend):
    """An OpenVINO export (`clipada-export --format openvino`) on OpenVINO."""

    name = "openvino"


BACKENDS: dict[str, type] = {"torch": TorchBackend, "onnxruntime": OnnxRuntimeBackend, "openvino": OpenVINOBackend}


def load_backend(name: str, model_name_or_path: str, device: str = "cpu", dtype: str = "float32") -> AnomalyBackend:
    """The backend called `name`, loaded from a checkpoint.

    Args:
        name: A key of `BACKENDS` (`--backend`).
        model_name_or_path: The checkpoint folder or Hub id.
        device: A device name the backend understands.
        dtype: `float32` or `bfloat16`.

    Returns:
        A ready [`AnomalyBackend`].

    Raises:
        ValueError: An unknown backend or dtype, naming the flag.
    """
    if name not in BACKENDS:
        raise ValueError(f"--backend {name!r} is not available; choose one of {', '.join(sorted(BACKENDS))}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    return BACKENDS[name](model_name_or_path, device=device, dtype=dtype)


__all__ = [
    "BACKENDS",
    "DTYPES",
    "AnomalyBackend",
    "BackendOutput",
    "ExportedBackend",
    "OnnxRuntimeBackend",
    "OpenVINOBackend",
    "TorchBackend",
    "load_backend",
]
