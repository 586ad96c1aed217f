"""What every replica of `clipada serve` is told: the model to load and how to batch and limit requests (no Ray).

Example:
    ```python
    >>> options = ServeOptions("outputs/run", model_name="widget", max_batch_size=16)
    ```
"""

from dataclasses import dataclass, field

DEFAULT_MODEL_NAME = "clipada"
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_BATCH_WAIT_S = 0.01
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
# Decoded pixels per request (all its images): a few compressed bytes can decode to gigabytes (a black 7000 x 7000
# PNG is 140 kB), so the body limit alone does not bound a replica's memory. 64 Mpx are 768 MB as float32 RGB.
DEFAULT_MAX_REQUEST_PIXELS = 64 * 1024 * 1024


@dataclass(frozen=True)
class ServeOptions:
    """What each replica needs to load and serve the model.

    Attributes:
        model_name_or_path: A checkpoint folder or Hub id, or a `clipada export` folder.
        model_name: The name in the URLs, `/v2/models/<model_name>`.
        backend: `torch`, `onnxruntime`, `openvino`, or None (the export's runtime, else torch).
        device: torch's device (None: cuda when the replica has a GPU).
        dtype: `float32` or `bfloat16` (torch).
        num_threads: CPU threads per replica (None: the available cores minus the busy ones).
        max_batch_size: The most images one backend call scores (dynamic batching; 1: none).
        batch_wait_timeout_s: How long a batch waits to fill up, in seconds.
        max_request_bytes: Larger request bodies are refused (413).
        max_request_pixels: Requests whose images hold more pixels together are refused (413) before decoding.
        inference_mode: `resize_mode`, `tile_size`, `tile_overlap` overriding the checkpoint's (None values keep it).
    """

    model_name_or_path: str
    model_name: str = DEFAULT_MODEL_NAME
    backend: str | None = None
    device: str | None = None
    dtype: str = "float32"
    num_threads: int | None = None
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_S
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS
    inference_mode: dict = field(default_factory=dict)


__all__ = [
    "DEFAULT_BATCH_WAIT_S",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_MAX_REQUEST_PIXELS",
    "DEFAULT_MODEL_NAME",
    "ServeOptions",
]
