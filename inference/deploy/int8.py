"""INT8 OpenVINO exports: NNCF post-training quantisation on normal images, kept only when an inspection line's gate
passes.

`clipada export --format openvino --int8 --calibration_data DATA` writes the float32 IR as usual, quantises it with
NNCF (`nncf.quantize`, transformer preset: weights and activations of the matrix products to INT8) on the model inputs
of normal images, then scores the gate's test images with both files through the same scoring step as `clipada
predict` (`inference.scoring`: tiles and letterbox merged) and keeps the INT8 file only if

- the image decisions (the checkpoint's calibrated thresholds, per category where calibrated) are identical to the
  float32 file's on at least `min_decision_agreement` (99%) of the test images, and
- pixel AUROC and AUPRO (the caller's metric function: `training.metrics`, mean over categories) are within
  `max_metric_change` (0.5 points) of the float32 file's.

Otherwise `Int8GateError` says by how much each criterion missed, and the export writes nothing. The datasets and the
metrics come from the caller (`training.quantize` builds them for `clipada export`): this module imports no training
code and no torch.

Example:
    ```python
    >>> request = Int8Request(calibration_images, None, test_images, test_masks, None, metrics, "demo/")
    >>> figures = quantize_export(staging, request)   # replaces model.xml/.bin by the INT8 IR, or raises
    >>> figures["int8"]["decision_agreement"], figures["int8"]["fp32"]["aupro"], figures["int8"]["int8"]["aupro"]
    ```
"""

import importlib.util
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.backends import ExportedBackend
from inference.deploy.runners import CLASS_INPUT, MEMORY_INPUT, MODEL_FILES, THRESHOLD_INPUTS
from inference.scoring import score_images
from modeling_clipada.decisions import apply_thresholds, per_image_thresholds

DEFAULT_MIN_DECISION_AGREEMENT = 0.99
DEFAULT_MAX_METRIC_CHANGE = 0.005  # 0.5 points
DEFAULT_SUBSET_SIZE = 300
GATE_METRICS = ("pixel_auroc", "aupro")
METRIC_TITLES = {"pixel_auroc": "pixel AUROC", "aupro": "AUPRO"}


class Int8GateError(ValueError):
    """The INT8 model missed the gate (or the request cannot be gated); the message says by how much."""


@dataclass
class Int8Request:
    """What an INT8 export is calibrated and gated on.

    Attributes:
        calibration_images: Normal images, float32 `(3, H_i, W_i)` in [0, 1] (`processor.process_image`).
        calibration_categories: One category (or None) per calibration image, or None.
        test_images: The gate's images, float32 `(3, H_i, W_i)` in [0, 1], normal and anomalous.
        test_masks: One bool `(H_i, W_i)` ground-truth mask per test image (all False for normal images).
        test_categories: One category (or None) per test image, or None.
        metrics: `(anomaly_maps, masks, categories) -> {"pixel_auroc": .., "aupro": ..}` in [0, 1].
        source: What the data is, for messages and `clipada_export.json`.
        min_decision_agreement: Share of test images whose decision must equal the float32 file's.
        max_metric_change: Largest allowed |INT8 - float32| of each metric in `GATE_METRICS` (0.005 = 0.5 points).
        subset_size: Most calibration inputs NNCF uses.
    """

    calibration_images: Sequence[np.ndarray]
    calibration_categories: Sequence[str | None] | None
    test_images: Sequence[np.ndarray]
    test_masks: Sequence[np.ndarray]
    test_categories: Sequence[str | None] | None
    metrics: Callable[[list, list, list], dict]
    source: str
    min_decision_agreement: float = DEFAULT_MIN_DECISION_AGREEMENT
    max_metric_change: float = DEFAULT_MAX_METRIC_CHANGE
    subset_size: int = DEFAULT_SUBSET_SIZE


def check_int8_request(request: Int8Request) -> None:
    """Refuses, before anything is exported, a request that cannot be calibrated or gated.

    Raises:
        Int8GateError: NNCF missing, no calibration images, test images without both normal and anomalous pixels,
            masks not one per test image, tolerances out of range.
    """
    if importlib.util.find_spec("nncf") is None:
        raise Int8GateError("--int8 needs NNCF: pip install 'clipada[int8]'")
    if not request.calibration_images:
        raise Int8GateError(f"--calibration_data {request.source}: no normal images to calibrate INT8 on")
    if len(request.test_masks) != len(request.test_images):
        raise Int8GateError(
            f"--calibration_data {request.source}: {len(request.test_images)} test images but "
            f"{len(request.test_masks)} masks"
        )
    anomalous = sum(bool(np.any(mask)) for mask in request.test_masks)
    if not request.test_images or anomalous == 0 or anomalous == len(request.test_images):
        raise Int8GateError(
            f"--calibration_data {request.source}: the INT8 gate needs test images with ground-truth masks, normal "
            f"and anomalous (got {len(request.test_images)} test images, {anomalous} with a defect)"
        )
    if not 0 < request.min_decision_agreement <= 1 or not 0 <= request.max_metric_change <= 1:
        raise Int8GateError(
            f"INT8 gate tolerances out of range: decision agreement {request.min_decision_agreement} must lie in "
            f"(0, 1], metric change {request.max_metric_change} in [0, 1]"
        )


def calibration_feeds(backend: ExportedBackend, images, categories) -> list[dict[str, np.ndarray]]:
    """The graph's inputs for NNCF, one model input (tile) at a time.

    Args:
        backend: The float32 export's backend (its processor cuts the inputs as predict does).
        images: float32 `(3, H_i, W_i)` normal images in [0, 1].
        categories: One category (or None) per image, or None.

    Returns:
        One `{input name: array}` per model input: `pixel_values` `(1, 3, H, W)`, and where the graph takes them
        `class_index` `(1,)`, thresholds `(1,)` (any value: they only compare at the end) and `memory_index` `(1,)`.
    """
    runner = backend.runner
    feeds = []
    for index, image in enumerate(images):
        inputs = runner.processor.model_inputs([image], return_tensors="np")
        category = None if categories is None else categories[index]
        for pixel_values in inputs["pixel_values"]:
            feed = {"pixel_values": np.ascontiguousarray(pixel_values[None], dtype=np.float32)}
            if runner.class_names is not None:
                feed[CLASS_INPUT] = runner.class_index([category], 1)
            if runner.memory_categories is not None:
                feed[MEMORY_INPUT] = runner.memory_index([category], 1)
            if runner.has_thresholds:
                feed.update({name: np.full(1, 0.5, dtype=np.float32) for name in THRESHOLD_INPUTS})
            feeds.append(feed)
    return feeds


def quantize_openvino(model_file: Path, feeds: list[dict], output_file: Path, subset_size: int) -> None:
    """NNCF post-training quantisation of an OpenVINO IR (transformer preset), saved to `output_file` (+ `.bin`).

    Args:
        model_file: The float32 `model.xml`.
        feeds: Calibration inputs from [`calibration_feeds`].
        output_file: Where the INT8 `.xml` goes.
        subset_size: Most calibration inputs used.
    """
    import nncf
    import openvino

    model = openvino.Core().read_model(str(model_file))
    quantized = nncf.quantize(
        model,
        nncf.Dataset(feeds),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=min(subset_size, len(feeds)),
    )
    openvino.save_model(quantized, str(output_file), compress_to_fp16=False)


def score_test_images(backend: ExportedBackend, request: Int8Request) -> tuple[list[np.ndarray], np.ndarray]:
    """The test images' maps (each at its image's size) and scores, through predict's scoring step."""
    maps, scores = [], []
    for start in range(0, len(request.test_images), 8):
        images = list(request.test_images[start : start + 8])
        categories = None if request.test_categories is None else list(request.test_categories[start : start + 8])
        scored = score_images(backend, backend.runner.processor, images, categories)
        maps.extend(scored.anomaly_maps)
        scores.extend(scored.scores.tolist())
    return maps, np.asarray(scores, dtype=np.float32)


def image_decisions(backend: ExportedBackend, maps, scores: np.ndarray, categories) -> np.ndarray:
    """`(N,)` bool: each test image's decision at the export's thresholds (its category's where calibrated)."""
    image, pixel = per_image_thresholds(backend.runner, categories, len(scores))
    return np.concatenate(
        [apply_thresholds(m[None], scores[i : i + 1], image[i], pixel[i])[0] for i, m in enumerate(maps)]
    )


def gate_figures(fp32: ExportedBackend, int8: ExportedBackend, request: Int8Request) -> dict:
    """The gate's figures: decision agreement, the metrics of both files, the largest map and score changes."""
    results = {}
    for name, backend in (("fp32", fp32), ("int8", int8)):
        maps, scores = score_test_images(backend, request)
        categories = list(request.test_categories) if request.test_categories is not None else [None] * len(maps)
        metrics = request.metrics(maps, list(request.test_masks), categories)
        results[name] = (maps, scores, image_decisions(backend, maps, scores, request.test_categories), metrics)
    (fp32_maps, fp32_scores, fp32_labels, fp32_metrics), (int8_maps, int8_scores, int8_labels, int8_metrics) = (
        results["fp32"],
        results["int8"],
    )
    return {
        "test_images": len(fp32_scores),
        "decision_agreement": float((fp32_labels == int8_labels).mean()),
        "fp32": {name: float(fp32_metrics[name]) for name in GATE_METRICS},
        "int8": {name: float(int8_metrics[name]) for name in GATE_METRICS},
        "anomaly_map_max_abs_diff": float(max(np.abs(a - b).max() for a, b in zip(fp32_maps, int8_maps))),
        "pred_score_max_abs_diff": float(np.abs(fp32_scores - int8_scores).max()),
    }


def gate_misses(figures: dict, request: Int8Request) -> list[str]:
    """Each missed criterion in words, with the miss; empty when the gate passes."""
    misses = []
    agreement = figures["decision_agreement"]
    if agreement < request.min_decision_agreement:
        misses.append(
            f"decisions identical to float32 on {100 * agreement:.1f}% of {figures['test_images']} test images (needs "
            f">= {100 * request.min_decision_agreement:g}%: {100 * (request.min_decision_agreement - agreement):.1f} "
            "points short)"
        )
    for name in GATE_METRICS:
        before, after = figures["fp32"][name], figures["int8"][name]
        change = abs(after - before)
        if not np.isfinite(change) or change > request.max_metric_change:
            misses.append(
                f"{METRIC_TITLES[name]} {100 * after:.2f} vs float32 {100 * before:.2f} ({100 * change:.2f} points "
                f"off; allowed {100 * request.max_metric_change:g}, missed by "
                f"{100 * (change - request.max_metric_change):.2f})"
            )
    return misses


def quantize_export(staging: Path, request: Int8Request) -> dict:
    """Quantises the float32 OpenVINO export in `staging` and keeps the INT8 IR in its place if the gate passes.

    Args:
        staging: The export folder being written, with its float32 `model.xml`/`model.bin` and
            `clipada_export.json`.
        request: The calibration and gate data.

    Returns:
        The fields for `clipada_export.json`: `weights` `"int8"` and `int8` (the gate's figures, its tolerances and
        the calibration data).

    Raises:
        Int8GateError: The request cannot be gated (no thresholds to decide with), or the gate missed; the message
            lists each miss.
    """
    fp32 = ExportedBackend(str(staging), "openvino")
    if not fp32.runner.has_thresholds or not fp32.runner.thresholds_fit_inputs:
        raise Int8GateError(
            "--int8: the checkpoint has no thresholds calibrated in the export's mode, so the gate cannot compare "
            "decisions; calibrate it first (clipada calibrate)"
        )
    model_file = staging / MODEL_FILES["openvino"]
    work = staging / ".int8"
    work.mkdir()
    try:
        feeds = calibration_feeds(fp32, request.calibration_images, request.calibration_categories)
        quantize_openvino(model_file, feeds, work / model_file.name, request.subset_size)
        int8 = ExportedBackend(str(staging), "openvino", graph_file=str(work / model_file.name))
        figures = gate_figures(fp32, int8, request)
        misses = gate_misses(figures, request)
        if misses:
            raise Int8GateError(
                f"--int8: the INT8 model misses the gate on {request.source}: {'; '.join(misses)}; nothing was "
                "written (export without --int8 for float32)"
            )
        del fp32, int8  # release the files before replacing them
        for suffix in (".xml", ".bin"):
            shutil.move(str(work / model_file.with_suffix(suffix).name), str(model_file.with_suffix(suffix)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "weights": "int8",
        "int8": {
            **figures,
            "calibration_data": request.source,
            "calibration_inputs": min(request.subset_size, len(feeds)),
            "method": "NNCF post-training quantisation, transformer preset",
            "gate": {
                "min_decision_agreement": request.min_decision_agreement,
                "max_metric_change": request.max_metric_change,
                "metrics": list(GATE_METRICS),
            },
        },
    }


__all__ = [
    "DEFAULT_MAX_METRIC_CHANGE",
    "DEFAULT_MIN_DECISION_AGREEMENT",
    "GATE_METRICS",
    "Int8GateError",
    "Int8Request",
    "calibration_feeds",
    "check_int8_request",
    "gate_figures",
    "gate_misses",
    "quantize_export",
    "quantize_openvino",
]
