"""THE scoring step of every command: model inputs -> backend -> one anomaly map per image at its size, and scores.

Predict, the app, evaluation and calibration all score through [`score_inputs`] (evaluation and calibration build
their inputs together with the masks; predict and the app from images they read once, with [`score_images`]).
Whatever the backend (torch on any device, ONNX Runtime, OpenVINO) and whatever the input mode (squash, letterbox,
tiles), the maps and scores come out the same way, in numpy float32, ready for `modeling_clipada.decisions`. A NaN
or infinite score is passed on as it is (`ScoredImages.non_finite` lists those images); deciding it raises.

Example:
    ```python
    >>> pixels = processor.process_image("part.png")                 # (3, H, W) in [0, 1]: read once
    >>> scored = score_images(backend, processor, [pixels], categories=["bottle"])
    >>> scored.anomaly_maps[0].shape, scored.scores                  # the image's own (H, W); (1,)
    ```
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inference.backends import AnomalyBackend
from processing import CLIPADAImageProcessor
from processing.tiling import DEFAULT_IMAGE_SCORE_TOP_K


@dataclass
class ScoredImages:
    """The maps and scores of a batch of images.

    Attributes:
        anomaly_maps: One float32 map per image: `(H_i, W_i)` at the image's own size (at the model's input size
            where the caller asked for no target size).
        scores: `(batch_size,)` float32 image scores.
    """

    anomaly_maps: list[np.ndarray]
    scores: np.ndarray

    @property
    def non_finite(self) -> list[int]:
        """The indices of the images whose score or map holds NaN or infinite values (a damaged model or input):
        they decide nothing (`modeling_clipada.decisions` raises `NonFiniteScoreError` for them), and metrics must
        leave them out or refuse."""
        return [
            index
            for index, (score, anomaly_map) in enumerate(zip(self.scores, self.anomaly_maps))
            if not (np.isfinite(score) and np.isfinite(anomaly_map).all())
        ]


def score_inputs(
    backend: AnomalyBackend,
    processor: CLIPADAImageProcessor,
    inputs,
    categories: Sequence[str | None] | None = None,
    target_sizes: Sequence[Sequence[int]] | None = None,
) -> ScoredImages:
    """Runs the backend on the model inputs of B images and maps its outputs back to each image.

    Args:
        backend: Any [`AnomalyBackend`]; its `decision_config.image_score_top_k` scores letterboxed and tiled maps.
        processor: The processor that made `inputs` (it merges tiles and crops letterbox padding).
        inputs: The processor's output: `pixel_values` `(N, 3, H, W)` (numpy or torch) for the N inputs of B
            images, and `image_layouts` (letterbox, tiles: one per image; N = B without).
        categories: One category (or None) per image; every input (tile) of an image gets its image's.
        target_sizes: Squash: `(height, width)` per image to resize the maps to; None keeps the input size.
            Letterbox and tiles always come back at each image's own size.

    Returns:
        [`ScoredImages`].

    Raises:
        ValueError: `categories` does not hold one entry per image.
    """
    layouts = inputs.get("image_layouts")
    num_images = len(layouts) if layouts is not None else len(inputs["pixel_values"])
    if categories is not None and len(categories) != num_images:
        raise ValueError(f"categories: one per image ({num_images}) expected, got {len(categories)}")
    per_input = categories
    if categories is not None and layouts is not None:
        per_input = [category for category, layout in zip(categories, layouts) for _ in range(layout.num_inputs)]
    output = backend(inputs["pixel_values"], per_input)
    decision_config = getattr(backend, "decision_config", None)  # a plain callable is a backend too
    top_k = getattr(decision_config, "image_score_top_k", None) or DEFAULT_IMAGE_SCORE_TOP_K
    maps, scores = processor.post_process_anomaly_detection(output, target_sizes, layouts, top_k)
    return ScoredImages(
        anomaly_maps=[np.asarray(anomaly_map, dtype=np.float32) for anomaly_map in maps],
        scores=np.asarray(scores, dtype=np.float32).reshape(-1),
    )


def score_images(
    backend: AnomalyBackend,
    processor: CLIPADAImageProcessor,
    pixels: Sequence[np.ndarray],
    categories: Sequence[str | None] | None = None,
) -> ScoredImages:
    """Scores images already read (`processor.process_image`): maps at each image's own size.

    Args:
        backend: Any [`AnomalyBackend`].
        processor: Resizes (or letterboxes, or tiles) and normalises, then maps the outputs back.
        pixels: float32 `(3, H, W)` arrays in [0, 1], one per image.
        categories: One category (or None) per image.

    Returns:
        [`ScoredImages`] with maps `(H_i, W_i)`.
    """
    inputs = processor.model_inputs(pixels, return_tensors="np")
    return score_inputs(backend, processor, inputs, categories, [image.shape[-2:] for image in pixels])


__all__ = ["ScoredImages", "score_images", "score_inputs"]
