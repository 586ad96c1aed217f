"""What one server replica holds: any checkpoint or export, and the checks, scoring and decisions of its requests.

No Ray here. Images are read with the checkpoint's own processor, scored with `inference.scoring` and decided with
`inference.predict.rows` (thresholds by `choose_thresholds`, rows by `prediction_row`): the decisions of
`clipada predict` on the same files, whatever the backend or family. A batch may mix the images of many requests
(dynamic batching); each image keeps its own category.

Example:
    ```python
    >>> model = ServeModel.load("outputs/run", name="clipada")
    >>> request = parse_infer_request(body)
    >>> items = model.batch_items(request)         # images read and checked: one item per image
    >>> scored = model.score_items(items)           # [(anomaly_map (H, W), score), ...]
    >>> model.response(request, scored)["outputs"]  # score, label, thresholds, boxes, ...
    ```
"""

import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from inference.app.model import ServedModel, load_served_model
from inference.modes import describe_mode
from inference.predict.rows import Thresholds, choose_thresholds, prediction_row
from inference.scoring import score_images, score_inputs
from inference.serve.options import DEFAULT_MAX_REQUEST_PIXELS
from inference.serve.protocol import IMAGE_INPUT, OUTPUTS, PIXELS_INPUT, InferRequest, ProtocolError, output_tensor
from modeling_clipada.decisions import decision_field


@dataclass
class BatchItem:
    """One image waiting for the model.

    Attributes:
        pixels: `(3, H, W)` float32 in [0, 1] (a decoded image, at its own size), or None.
        pixel_values: `(3, H, W)` float32 CLIP-normalised at the model's input size, or None.
        category: The image's category (its request's), or None.
    """

    pixels: np.ndarray | None
    pixel_values: np.ndarray | None
    category: str | None


class ServeModel:
    """A loaded checkpoint or export folder answering infer requests.

    Args:
        served: The model, processor and applicable decision config (`inference.app.model.load_served_model`).
        name: The model's name in the URLs (`/v2/models/<name>`).
        max_request_pixels: The most pixels the images of one request may hold together (checked before decoding).
    """

    def __init__(self, served: ServedModel, name: str, max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS):
        self.served = served
        self.name = name
        self.max_request_pixels = max_request_pixels
        self.backend = served.backend
        self.processor = served.processor
        self.decision_config = served.config

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        name: str,
        backend: str | None = None,
        device: str | None = None,
        dtype: str = "float32",
        num_threads: int | None = None,
        max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
        inference_mode: dict | None = None,
    ) -> "ServeModel":
        """Loads a checkpoint of any family (torch, any device) or an export folder (onnxruntime, openvino), in
        `inference_mode` (`resize_mode`, `tile_size`, `tile_overlap` overriding the checkpoint's)."""
        served = load_served_model(model_name_or_path, device, dtype, backend, num_threads, inference_mode)
        return cls(served, name, max_request_pixels)

    @property
    def categories(self) -> list[str]:
        """The categories a request may name: those with calibrated thresholds, those a family names in its
        prompts (AdaCLIP), and those of a few-shot reference memory; sorted."""
        named: set[str] = set()
        if self.backend.name == "torch":
            from inference.families import FAMILIES

            config = self.backend.decision_config
            if FAMILIES[config.model_type].needs_class_names:
                named = {name for name in config.prompt_token_ids or {} if isinstance(name, str)}
            named |= set(getattr(config, "reference_memory_sizes", None) or {})
        else:  # an export: its graph's class names and memory categories
            runner = self.backend.runner
            named = set(runner.class_names or []) | set(runner.memory_categories or [])
        return sorted(set(self.served.categories) | named)

    @property
    def pixel_values_size(self) -> tuple[int, int] | None:
        """`(H, W)` the `pixel_values` input must have; None when the model reads images in a mode that
        `pixel_values` cannot express (letterbox, tiles: the maps need each image's own layout)."""
        processor = self.processor
        if processor.resize_mode != "squash" or processor.tile_size:
            return None
        return processor.size.height, processor.size.width

    def metadata(self) -> dict:
        """The v2 model metadata: inputs, outputs, and in `parameters` the family, backend, input mode, thresholds
        and categories."""
        size = self.pixel_values_size
        inputs = [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}]
        if size is not None:
            inputs.append({"name": PIXELS_INPUT, "datatype": "FP32", "shape": [-1, 3, *size]})
        config = self.decision_config
        thresholds = {
            field: decision_field(config, field)
            for field in ("image_threshold", "pixel_threshold", "category_thresholds")
        }
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": f"clipada_{self.backend.name}",
            "inputs": inputs,
            "outputs": [
                {"name": name, "datatype": datatype, "shape": shape} for name, (datatype, shape) in OUTPUTS.items()
            ],
            "parameters": {
                "family": self.served.title,
                "backend": self.backend.name,
                "model_name_or_path": self.served.name,
                "input_mode": describe_mode(self.processor),
                "input_size": [self.processor.size.height, self.processor.size.width],
                "categories": self.categories,
                **{key: value for key, value in thresholds.items() if value is not None},
                **({"thresholds_note": self.served.thresholds_note} if self.served.thresholds_note else {}),
            },
        }

    def thresholds(self, request: InferRequest) -> Thresholds:
        """The request's thresholds as `clipada predict --category C --image_threshold T ...` chooses them.

        Raises:
            ProtocolError: An unknown category, or a mask asked for without any pixel threshold.
        """
        known = self.categories
        if request.category is not None and request.category not in known:
            listed = ", ".join(known) if known else "none: this model has no categories; leave the parameter out"
            raise ProtocolError(f"parameters.category {request.category!r} is unknown; known: {listed}")
        thresholds = choose_thresholds(
            self.decision_config, request.category, request.image_threshold, request.pixel_threshold
        )
        if request.return_mask and thresholds.pixel is None:
            raise ProtocolError(
                "parameters.return_mask: this model has no calibrated pixel threshold; pass parameters.pixel_threshold"
            )
        return thresholds

    def batch_items(self, request: InferRequest) -> list[BatchItem]:
        """The request's images, read and checked, one [`BatchItem`] each.

        Raises:
            ProtocolError: Naming the element that is not an image, `pixel_values` of the wrong size, an unknown
                category, or a map or mask asked for over images of several sizes.
        """
        self.thresholds(request)  # the category and mask are checked before any image is read
        if request.images is not None:
            self.check_request_pixels(request.images)
            pixels = [
                self.read_image(data, f"inputs[image].data[{index}]") for index, data in enumerate(request.images)
            ]
            sizes = {image.shape[-2:] for image in pixels}
            if (request.return_map or request.return_mask) and len(sizes) > 1:
                raise ProtocolError(
                    "parameters.return_map/return_mask: the images of one request must share one size to return "
                    f"(N, H, W) maps, got {len(sizes)} sizes; send them in separate requests"
                )
            return [BatchItem(image, None, request.category) for image in pixels]
        size = self.pixel_values_size
        if size is None:
            raise ProtocolError(
                f"inputs[pixel_values]: this model reads images in {describe_mode(self.processor)} mode, which "
                "pixel_values cannot express; send the encoded images (input image)"
            )
        if tuple(request.pixel_values.shape[2:]) != size:
            raise ProtocolError(
                f"inputs[pixel_values].shape {list(request.pixel_values.shape)}: this model takes [N, 3, {size[0]}, "
                f"{size[1]}]"
            )
        return [BatchItem(None, values, request.category) for values in request.pixel_values]

    def check_request_pixels(self, images: Sequence[bytes]) -> None:
        """Refuses (413) a request whose images hold more than `max_request_pixels` together, from the files' headers
        alone (nothing is decoded); an element that is no image is left for `read_image` to name."""
        total = 0
        for data in images:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    with Image.open(io.BytesIO(data)) as opened:
                        total += opened.width * opened.height
            except Exception:  # noqa: BLE001 - not an image, or one Pillow refuses: read_image names it
                continue
        if total > self.max_request_pixels:
            raise ProtocolError(
                f"inputs[image]: the request's images hold {total:,} pixels together, above --max_request_pixels "
                f"{self.max_request_pixels:,}; send them in several requests",
                status=413,
            )

    def read_image(self, data: bytes, name: str) -> np.ndarray:
        """An encoded image file -> `(3, H, W)` float32 in [0, 1], read as `clipada predict` reads a file (EXIF
        orientation, bit depth, one frame, the processor's pixel limit).

        Raises:
            ProtocolError: Naming `name`: not an image Pillow reads, too large, several frames, ...
        """
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the processor's limit decides
                opened = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:
            raise ProtocolError(f"{name} is too large to open safely ({error})", status=413) from None
        except Exception:  # noqa: BLE001 - Pillow raises many types for data that is no image
            raise ProtocolError(f"{name} is not an image file Pillow can read ({len(data)} bytes)") from None
        try:
            with opened:
                return self.processor.process_image(opened, name=name)
        except Exception as error:  # noqa: BLE001 - broken pixels, odd modes, too many pixels: that request's error
            raise ProtocolError(str(error).splitlines()[0] if str(error) else f"{name} cannot be read") from None

    def score_items(self, items: Sequence[BatchItem]) -> list[tuple[np.ndarray, float] | Exception]:
        """Scores a batch (images of several requests): `(anomaly_map, score)` per item, the map at the image's own
        size (at the input size for `pixel_values`), or the error the backend raised on that item alone."""
        results: list = [None] * len(items)
        groups = {
            "pixels": [i for i, item in enumerate(items) if item.pixels is not None],
            "pixel_values": [i for i, item in enumerate(items) if item.pixels is None],
        }
        for kind, indices in groups.items():
            for index, outcome in zip(indices, self._scored(kind, [items[i] for i in indices])):
                results[index] = outcome
        return results

    def _scored(self, kind: str, items: list[BatchItem]) -> list:
        """One group scored together; when that fails, item by item, so one bad item fails alone."""
        if not items:
            return []
        categories = [item.category for item in items]
        try:
            if kind == "pixels":
                scored = score_images(self.backend, self.processor, [item.pixels for item in items], categories)
            else:
                inputs = {"pixel_values": np.stack([item.pixel_values for item in items])}
                scored = score_inputs(self.backend, self.processor, inputs, categories)
            return list(zip(scored.anomaly_maps, scored.scores.tolist()))
        except Exception as error:  # noqa: BLE001 - find the item it failed on: the others still get answers
            if len(items) == 1:
                return [error]
            return [self._scored(kind, [item])[0] for item in items]

    def response(self, request: InferRequest, scored: Sequence[tuple[np.ndarray, float] | Exception]) -> dict:
        """The v2 infer response of one request from its items' scores.

        Raises:
            ProtocolError: (500) The model failed on an image or gave it a NaN/inf score, naming the image.
        """
        thresholds = self.thresholds(request)
        rows, maps, masks = [], [], []
        for index, outcome in enumerate(scored):
            if isinstance(outcome, Exception):
                raise ProtocolError(f"image {index}: the model failed: {outcome}", status=500)
            anomaly_map, score = outcome
            row, pred_mask = prediction_row(f"image {index}", request.category, anomaly_map, score, thresholds)
            if row["decision"] == "ERROR":
                raise ProtocolError(f"image {index}: {row['error']}", status=500)
            rows.append(row)
            maps.append(anomaly_map)
            masks.append(pred_mask)
        columns = {
            "score": ("score", None),
            "label": ("decision", None),
            "normalized_score": ("normalized_score", thresholds.image),
            "image_threshold": ("image_threshold", thresholds.image),
            "pixel_threshold": ("pixel_threshold", thresholds.pixel),
            "anomalous_area": ("anomalous_area", thresholds.pixel),
            "num_regions": ("num_regions", thresholds.pixel),
            "boxes": ("boxes", thresholds.pixel),
        }
        outputs = {}
        for name, (column, needs) in columns.items():
            if needs is None and name not in ("score", "label"):
                continue  # no threshold: no normalised score, no mask, area or boxes
            values = [json.dumps(row[column]) if name == "boxes" else row[column] for row in rows]
            outputs[name] = output_tensor(name, OUTPUTS[name][0], values)
        if request.return_map:
            outputs["anomaly_map"] = output_tensor("anomaly_map", "FP32", np.stack(maps))
        if request.return_mask:
            outputs["pred_mask"] = output_tensor("pred_mask", "BOOL", np.stack(masks))
        if request.outputs is not None:
            missing = [name for name in request.outputs if name not in outputs]
            if missing:
                raise ProtocolError(f"outputs: {', '.join(missing)} not available for this request (no threshold)")
            outputs = {name: outputs[name] for name in request.outputs}
        parameters = {"threshold_source": thresholds.source}
        if request.category is not None:
            parameters["category"] = request.category
        response = {"model_name": self.name, "model_version": "1", "outputs": list(outputs.values())}
        response["parameters"] = parameters
        if request.id is not None:
            response["id"] = request.id
        return response


__all__ = ["BatchItem", "ServeModel"]
