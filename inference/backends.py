"""Inference backends: CLIP-normalised pixels in, anomaly maps and image scores out, for any checkpoint or export.

A backend only runs the model. Thresholds, decisions, drawing and writing live elsewhere and never depend on which
backend produced the maps. `torch` runs a checkpoint of any family (`inference.torch_backend`, which imports torch);
`onnxruntime` and `openvino` run a `clipada export` folder without torch. [`load_backend`] recognises an export
folder by its `clipada_export.json` and picks its runtime by itself.

Example:
    ```python
    >>> backend = load_backend(None, "outputs/run-onnx")             # an export folder: onnxruntime
    >>> result = backend(pixel_values, categories=["bottle"] * 4)   # (4, 3, H, W) float32, numpy or torch
    >>> result.anomaly_map.shape, result.pred_score.shape
    ((4, H, W), (4,))
    >>> backend.decision_config.image_threshold                     # the thresholds the model was calibrated with
    ```
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from inference.deploy.runners import BACKEND_FORMATS, EXPORT_CONFIG_NAME, ExportedCLIPADA
from inference.devices import DTYPE_NAMES, configure_threads, default_num_threads

BACKENDS = ("torch", *BACKEND_FORMATS)


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
    """The interface of an inference backend.

    Attributes:
        name: `torch`, `onnxruntime` or `openvino`.
        decision_config: The calibrated decision fields (`image_threshold`, `pixel_threshold`,
            `category_thresholds`) and `image_score_top_k`: a checkpoint's config, or an export's JSON.
    """

    name: str
    decision_config: Any

    def __call__(self, pixel_values, categories: Sequence[str | None] | None = None) -> BackendOutput:
        """Anomaly maps and scores of `(batch_size, 3, H, W)` CLIP-normalised pixels (numpy or torch), with one
        category (or None) per input for the families whose prompts name it."""
        ...


def is_export_folder(model_name_or_path: str | Path) -> bool:
    """Whether `model_name_or_path` is a local `clipada export` folder (it holds `clipada_export.json`)."""
    return (Path(model_name_or_path) / EXPORT_CONFIG_NAME).is_file()


class ExportedBackend:
    """A `clipada export` folder run by ONNX Runtime or OpenVINO (`inference.deploy.runners`), on the CPU in float32.

    Args:
        model_name_or_path: The export folder; its format must match `name`.
        name: `onnxruntime` or `openvino`.
        num_threads: Runtime threads (None: the available cores minus the busy ones).
        precision: OpenVINO's inference precision (`f32`, `bf16`, `f16`).
        graph_file: Another graph of the folder's signature to run (`ExportedCLIPADA`'s `graph_file`); None: its own.

    Attributes:
        decision_config: The runner itself: its `image_threshold`, `pixel_threshold`, `category_thresholds` (read
            from `clipada_export.json`, and changed on the runner to move the operating point) and
            `image_score_top_k`.
    """

    def __init__(
        self,
        model_name_or_path: str,
        name: str,
        num_threads: int | None = None,
        precision: str = "f32",
        graph_file: str | None = None,
    ):
        self.name = name
        self.runner = ExportedCLIPADA(
            model_name_or_path, name, num_threads or default_num_threads(), precision, graph_file=graph_file
        )
        self.decision_config = self.runner

    def __call__(self, pixel_values, categories: Sequence[str | None] | None = None) -> BackendOutput:
        """Runs the graph on `(batch_size, 3, H, W)` CLIP-normalised pixels at the export's input size; `categories`
        fill an exported AdaCLIP's prompts and pick an exported reference memory's bank (decisions are made from the
        maps, after post-processing)."""
        categories = list(categories) if categories is not None and self.runner.takes_categories else None
        outputs = self.runner(np.asarray(pixel_values, dtype=np.float32), categories)
        return BackendOutput(anomaly_map=outputs["anomaly_map"], pred_score=outputs["pred_score"])


def load_backend(
    name: str | None,
    model_name_or_path: str,
    device: str | None = None,
    dtype: str = "float32",
    num_threads: int | None = None,
) -> AnomalyBackend:
    """The backend that runs `model_name_or_path`.

    Args:
        name: `torch`, `onnxruntime` or `openvino` (`--backend`); None: the export folder's own runtime for an
            export folder, else `torch`.
        model_name_or_path: A checkpoint folder or Hub id (torch), or an export folder.
        device: torch only: a device name; None picks cuda when available. Exports run on the cpu.
        dtype: `float32` or `bfloat16` (torch only).
        num_threads: CPU threads (torch's, set for the process, or the export runtime's); None: the available cores
            minus those other processes keep busy.

    Returns:
        A ready [`AnomalyBackend`].

    Raises:
        ValueError: An unknown backend or dtype, a backend that cannot run the folder, naming the flag.
    """
    exported = is_export_folder(model_name_or_path)
    if name is None:
        name = ExportedCLIPADA.runtime_of(model_name_or_path) if exported else "torch"
    if name not in BACKENDS:
        raise ValueError(f"--backend {name!r} is not available; choose one of {', '.join(BACKENDS)}")
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"--dtype {dtype!r} is not supported; choose one of {', '.join(DTYPE_NAMES)}")
    if name == "torch":
        if exported:
            raise ValueError(
                f"{model_name_or_path} is an exported model: run it with --backend "
                f"{ExportedCLIPADA.runtime_of(model_name_or_path)} (or leave --backend out)"
            )
        from inference.torch_backend import TorchBackend  # the only place a backend imports torch

        configure_threads(num_threads)
        return TorchBackend.from_pretrained(model_name_or_path, device=device, dtype=dtype)
    if device not in (None, "cpu") or dtype != "float32":
        extra = [f"--device {device}"] * (device not in (None, "cpu")) + [f"--dtype {dtype}"] * (dtype != "float32")
        raise ValueError(f"--backend {name} runs on the CPU in float32; drop {' '.join(extra)}")
    return ExportedBackend(model_name_or_path, name, num_threads=num_threads)


__all__ = [
    "BACKENDS",
    "AnomalyBackend",
    "BackendOutput",
    "ExportedBackend",
    "is_export_folder",
    "load_backend",
]
