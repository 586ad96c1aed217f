"""The Open Inference Protocol (KServe v2) over HTTP: infer requests parsed and checked, responses and errors built.

No Ray and no model here: bytes in, an [`InferRequest`] out (or a [`ProtocolError`] naming the field), and plain
dicts for the JSON responses. Inputs come as JSON tensors or with the binary tensor extension (the JSON header's
length in the `Inference-Header-Content-Length` header, the tensors' bytes after it, as tritonclient sends them by
default). In JSON a `BYTES` element is a string: the base64 of the encoded image (JSON cannot carry raw bytes); with
the binary extension it is the raw bytes of the file (each element a 4-byte little-endian length, then the bytes).
Responses are JSON tensors.

Example:
    ```python
    >>> request = parse_infer_request(body, headers.get("inference-header-content-length"))
    >>> request.images            # [b"\\x89PNG...", ...] or None
    >>> request.pixel_values      # (N, 3, H, W) float32, or None
    >>> output_tensor("score", "FP32", np.array([0.61, 0.12]))
    {'name': 'score', 'datatype': 'FP32', 'shape': [2], 'data': [0.61..., 0.12...]}
    ```
"""

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass

import numpy as np

IMAGE_INPUT = "image"
PIXELS_INPUT = "pixel_values"
INPUTS = (IMAGE_INPUT, PIXELS_INPUT)
# the request parameters this server reads, and those of other v2 clients (tritonclient) it accepts and ignores
PARAMETERS = ("category", "image_threshold", "pixel_threshold", "return_map", "return_mask")
CLIENT_PARAMETERS = ("binary_data_output", "priority", "timeout", "sequence_id", "sequence_start", "sequence_end")
# every output, in the order a response lists them, with its datatype and shape (-1: any size)
OUTPUTS = {
    "score": ("FP32", [-1]),
    "label": ("BYTES", [-1]),
    "normalized_score": ("FP32", [-1]),
    "image_threshold": ("FP32", [-1]),
    "pixel_threshold": ("FP32", [-1]),
    "anomalous_area": ("FP32", [-1]),
    "num_regions": ("INT32", [-1]),
    "boxes": ("BYTES", [-1]),
    "anomaly_map": ("FP32", [-1, -1, -1]),
    "pred_mask": ("BOOL", [-1, -1, -1]),
}
MAX_IMAGES_PER_REQUEST = 256
HEADER_LENGTH = "inference-header-content-length"


class ProtocolError(ValueError):
    """A request the server refuses; the one-line message names the field, `status` is the HTTP status.

    Attributes:
        status: 400 (bad request), 404 (unknown model or path), 405, 413 (too large) or 500 (the model failed).
    """

    def __init__(self, message: str, status: int = 400):
        super().__init__(" ".join(str(message).split()))
        self.status = status


@dataclass
class InferRequest:
    """One checked infer request.

    Attributes:
        id: The request's `id`, echoed in the response (None when not given).
        images: Encoded image files (PNG, JPEG, ...), one per image, or None.
        pixel_values: `(N, 3, H, W)` float32 CLIP-normalised pixels, or None (exactly one of the two is given).
        category: `parameters.category`, or None.
        image_threshold: `parameters.image_threshold` (an override in (0, 1)), or None.
        pixel_threshold: `parameters.pixel_threshold`, or None.
        return_map: Add `anomaly_map` `(N, H, W)` to the response.
        return_mask: Add `pred_mask` `(N, H, W)` to the response.
        outputs: The outputs asked for by name (`outputs` in the request), or None for the default ones.
    """

    id: str | None
    images: list[bytes] | None
    pixel_values: np.ndarray | None
    category: str | None = None
    image_threshold: float | None = None
    pixel_threshold: float | None = None
    return_map: bool = False
    return_mask: bool = False
    outputs: list[str] | None = None

    @property
    def num_images(self) -> int:
        return len(self.images) if self.images is not None else len(self.pixel_values)


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON header of a request and the binary tensor data after it (b"" without the binary extension).

    Raises:
        ProtocolError: An empty body, a bad `Inference-Header-Content-Length`, or a header that is not a JSON object.
    """
    if not body:
        raise ProtocolError("the request body is empty; send a v2 infer request (JSON)")
    binary = b""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise ProtocolError(f"Inference-Header-Content-Length {header_length!r} is not a number") from None
        if not 0 < length <= len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {length} does not fit the body's {len(body)} bytes")
        body, binary = body[:length], body[length:]
    try:
        header = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ProtocolError(f"the request body is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"the request body must be a JSON object, got {type(header).__name__}")
    return header, binary


def parse_infer_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """Parses and checks a v2 infer request: one input, `image` (`BYTES`, shape `[N]`) or `pixel_values` (`FP32`,
    shape `[N, 3, H, W]`), the parameters of `PARAMETERS` and the optional `outputs`.

    Args:
        body: The request's body.
        header_length: The `Inference-Header-Content-Length` header (binary tensor extension), or None.

    Raises:
        ProtocolError: Naming the field that is wrong (`inputs[0].shape`, `parameters.image_threshold`, ...).
    """
    header, binary = split_body(body, header_length)
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"id must be a string, got {type(request_id).__name__}")
    tensors = header.get("inputs")
    if not isinstance(tensors, list) or len(tensors) != 1:
        count = len(tensors) if isinstance(tensors, list) else "no list of"
        raise ProtocolError(f"inputs: exactly one input is expected ({' or '.join(INPUTS)}), got {count} inputs")
    tensor = tensors[0]
    if not isinstance(tensor, dict):
        raise ProtocolError(f"inputs[0] must be an object, got {type(tensor).__name__}")
    name = tensor.get("name")
    if name not in INPUTS:
        raise ProtocolError(f"inputs[0].name {name!r} is not an input of this model; use {' or '.join(INPUTS)}")
    data = tensor_data(tensor, binary)
    images = pixel_values = None
    if name == IMAGE_INPUT:
        images = image_input(tensor, data)
    else:
        pixel_values = pixels_input(tensor, data)
    request = InferRequest(request_id, images, pixel_values, outputs=requested_outputs(header.get("outputs")))
    read_parameters(request, header.get("parameters"))
    return request


def tensor_data(tensor: dict, binary: bytes) -> list | bytes:
    """The tensor's `data` (a JSON list), or its bytes from the binary part (`parameters.binary_data_size`)."""
    name = tensor["name"]
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError(f"inputs[{name}].parameters must be an object")
    size = parameters.get("binary_data_size")
    if size is None:
        if binary:
            raise ProtocolError(f"the request carries {len(binary)} binary bytes but inputs[{name}] names none")
        data = tensor.get("data")
        if not isinstance(data, list):
            raise ProtocolError(f"inputs[{name}].data must be a list (or binary_data_size given)")
        return data
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise ProtocolError(
            f"inputs[{name}].parameters.binary_data_size {size!r} does not match the {len(binary)} binary bytes sent"
        )
    return binary


def tensor_shape(tensor: dict, rank: int) -> list[int]:
    """`shape`, checked: `rank` non-negative integers."""
    shape = tensor.get("shape")
    name = tensor["name"]
    if (
        not isinstance(shape, list)
        or len(shape) != rank
        or not all(isinstance(side, int) and not isinstance(side, bool) and side >= 0 for side in shape)
    ):
        expected = "[N]" if rank == 1 else "[N, 3, H, W]"
        raise ProtocolError(f"inputs[{name}].shape {shape!r} is not {expected}")
    if shape[0] == 0:
        raise ProtocolError(f"inputs[{name}].shape {shape!r} holds no image")
    if shape[0] > MAX_IMAGES_PER_REQUEST:
        raise ProtocolError(
            f"inputs[{name}].shape {shape!r}: at most {MAX_IMAGES_PER_REQUEST} images per request", status=413
        )
    return shape


def image_input(tensor: dict, data: list | bytes) -> list[bytes]:
    """The encoded image files of an `image` input (`BYTES`, shape `[N]`): base64 strings in JSON, raw bytes in the
    binary extension. An empty element is refused here; whether it is an image is the model's check."""
    if tensor.get("datatype") != "BYTES":
        raise ProtocolError(
            f"inputs[image].datatype {tensor.get('datatype')!r}: image takes BYTES (encoded PNG, JPEG, ... files)"
        )
    (count,) = tensor_shape(tensor, 1)
    images = (
        deserialize_bytes(data) if isinstance(data, bytes) else [from_base64(item, i) for i, item in enumerate(data)]
    )
    if len(images) != count:
        raise ProtocolError(f"inputs[image].shape [{count}] but {len(images)} elements were sent")
    for index, image in enumerate(images):
        if not image:
            raise ProtocolError(f"inputs[image].data[{index}] is empty")
    return images


def from_base64(item, index: int) -> bytes:
    """One JSON `BYTES` element: the base64 of a file (standard alphabet, padding optional)."""
    if not isinstance(item, str):
        raise ProtocolError(f"inputs[image].data[{index}] must be a base64 string, got {type(item).__name__}")
    try:
        return base64.b64decode(item + "=" * (-len(item) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"inputs[image].data[{index}] is not base64 (JSON carries image files as base64)") from None


def deserialize_bytes(buffer: bytes) -> list[bytes]:
    """A binary `BYTES` tensor: elements of a 4-byte little-endian length followed by that many bytes."""
    elements, offset = [], 0
    while offset < len(buffer):
        if offset + 4 > len(buffer):
            raise ProtocolError("inputs[image]: the binary data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + length > len(buffer):
            raise ProtocolError(f"inputs[image]: element {len(elements)} claims {length} bytes past the data's end")
        elements.append(bytes(buffer[offset : offset + length]))
        offset += length
    return elements


def pixels_input(tensor: dict, data: list | bytes) -> np.ndarray:
    """The `(N, 3, H, W)` float32 array of a `pixel_values` input (`FP32`), checked finite."""
    if tensor.get("datatype") != "FP32":
        raise ProtocolError(f"inputs[pixel_values].datatype {tensor.get('datatype')!r}: pixel_values takes FP32")
    shape = tensor_shape(tensor, 4)
    if shape[1] != 3 or min(shape[2:]) == 0:
        raise ProtocolError(f"inputs[pixel_values].shape {shape} is not [N, 3, H, W] with H, W >= 1")
    size = math.prod(shape)
    if isinstance(data, bytes):
        if len(data) != size * 4:
            raise ProtocolError(f"inputs[pixel_values].shape {shape} needs {size * 4} bytes, {len(data)} were sent")
        array = np.frombuffer(data, dtype="<f4").astype(np.float32)
    else:
        if len(data) != size or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in data):
            raise ProtocolError(f"inputs[pixel_values].data must hold {size} numbers for shape {shape}")
        try:
            array = np.asarray(data, dtype=np.float32)
        except OverflowError:  # an integer beyond any float (10**400): JSON numbers are unbounded
            raise ProtocolError("inputs[pixel_values].data holds a number too large for FP32") from None
    if not np.isfinite(array).all():
        raise ProtocolError(f"inputs[pixel_values] holds {int((~np.isfinite(array)).sum())} NaN or infinite values")
    return array.reshape(shape)


def requested_outputs(outputs) -> list[str] | None:
    """The output names of the request's `outputs` (None: not given)."""
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(isinstance(item, dict) for item in outputs):
        raise ProtocolError("outputs must be a list of objects with a name")
    names = [item.get("name") for item in outputs]
    for index, name in enumerate(names):
        if name not in OUTPUTS:
            raise ProtocolError(f"outputs[{index}].name {name!r} is not an output; choose from {', '.join(OUTPUTS)}")
    return names


def read_parameters(request: InferRequest, parameters) -> None:
    """Sets the request's category, threshold overrides and map/mask switches from `parameters`."""
    if parameters is None:
        return
    if not isinstance(parameters, dict):
        raise ProtocolError(f"parameters must be an object, got {type(parameters).__name__}")
    for key, value in parameters.items():
        if key in CLIENT_PARAMETERS:
            continue
        if key not in PARAMETERS:
            raise ProtocolError(f"parameters.{key} is not a parameter of this model; use {', '.join(PARAMETERS)}")
        if key == "category":
            if not isinstance(value, str) or not value:
                raise ProtocolError(f"parameters.category must be a non-empty string, got {value!r}")
            request.category = value
        elif key in ("image_threshold", "pixel_threshold"):
            setattr(request, key, threshold_value(key, value))
        elif not isinstance(value, bool):
            raise ProtocolError(f"parameters.{key} must be true or false, got {value!r}")
        else:
            setattr(request, key, value)
    if request.outputs is not None:  # asking for the map or the mask by name turns it on
        request.return_map |= "anomaly_map" in request.outputs
        request.return_mask |= "pred_mask" in request.outputs


def threshold_value(key: str, value) -> float:
    """A threshold override: a number strictly between 0 and 1 (refuses NaN, as `clipada predict` does)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ProtocolError(f"parameters.{key} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def output_tensor(name: str, datatype: str, values) -> dict:
    """One JSON output tensor: `name`, `datatype`, `shape` and the row-major `data`."""
    array = np.asarray(values)
    if datatype == "BYTES":
        data = [str(item) for item in array.reshape(-1).tolist()]
    elif datatype == "BOOL":
        data = array.astype(bool).reshape(-1).tolist()
    else:
        data = array.reshape(-1).tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def error_body(message: str) -> dict:
    """The v2 error response: `{"error": message}`."""
    return {"error": message}


__all__ = [
    "CLIENT_PARAMETERS",
    "HEADER_LENGTH",
    "IMAGE_INPUT",
    "INPUTS",
    "MAX_IMAGES_PER_REQUEST",
    "OUTPUTS",
    "PARAMETERS",
    "PIXELS_INPUT",
    "InferRequest",
    "ProtocolError",
    "error_body",
    "output_tensor",
    "parse_infer_request",
    "split_body",
]
