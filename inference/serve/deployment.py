"""The Ray Serve deployment: the v2 HTTP routes, the request size limit and dynamic batching (`@serve.batch`).

Every replica loads the model once ([`inference.serve.model.ServeModel`]). A request is parsed and its images read
in a worker thread of the replica, then each image joins the replica's batch queue: `score_batch` gets up to
`max_batch_size` images of any requests (or what came within `batch_wait_timeout_s`) and scores them in one backend
call, in a thread, so the replica keeps accepting requests meanwhile. A bad request is answered 4xx with
`{"error": "<one line naming the field>"}` and never reaches the batch; nothing a request sends raises out of a
replica.

Routes: `GET /v2` (server metadata), `GET /v2/health/live`, `GET /v2/health/ready`, `GET /v2/models/<name>`
(metadata), `GET /v2/models/<name>/ready`, `POST /v2/models/<name>/infer` (also under `/versions/1`).

Example:
    ```python
    >>> app = build_app(ServeOptions("outputs/run"), num_replicas=2)
    >>> serve.run(app, route_prefix="/")
    ```
"""

import asyncio
import logging

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from inference.loading import first_line
from inference.serve.model import BatchItem, ServeModel
from inference.serve.options import DEFAULT_BATCH_WAIT_S, DEFAULT_MAX_BATCH_SIZE, ServeOptions
from inference.serve.protocol import HEADER_LENGTH, ProtocolError, error_body, parse_infer_request

logger = logging.getLogger("ray.serve")
SERVER_NAME = "clipada"


def json_response(body: dict, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status)


@serve.deployment(name="clipada", max_constructor_retry_count=1)
class InferenceServer:
    """One replica: the model, the routes and the batch queue."""

    def __init__(self, options: ServeOptions):
        self.options = options
        self.model = ServeModel.load(
            options.model_name_or_path, options.model_name, options.backend, options.device, options.dtype,
            options.num_threads, options.max_request_pixels, options.inference_mode,
        )  # fmt: skip
        self.score_batch.set_max_batch_size(options.max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(options.batch_wait_timeout_s)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def score_batch(self, items: list[BatchItem]) -> list:
        """Up to `max_batch_size` images of any requests, scored in one backend call (in a thread)."""
        return await asyncio.to_thread(self.model.score_items, items)

    async def __call__(self, request: Request) -> Response:
        try:
            return await self.route(request)
        except ProtocolError as error:
            return json_response(error_body(str(error)), error.status)
        except Exception as error:  # noqa: BLE001 - whatever happens, the replica answers and keeps serving
            logger.exception("clipada serve: internal error")
            return json_response(error_body(f"internal error: {first_line(error)}"), 500)

    async def route(self, request: Request) -> Response:
        """Dispatches a request by its path and method."""
        parts = [part for part in request.url.path.split("/") if part]
        if parts[:1] != ["v2"]:
            raise ProtocolError(f"no such path {request.url.path}; this server speaks the v2 protocol under /v2", 404)
        rest = parts[1:]
        if rest in ([], ["health", "live"], ["health", "ready"]):
            self.expect(request, "GET")
            if not rest:
                return json_response({"name": SERVER_NAME, "version": "1", "extensions": ["binary_tensor_data"]})
            return json_response({"live": True} if rest[1] == "live" else {"ready": True})
        if len(rest) < 2 or rest[0] != "models":
            raise ProtocolError(f"no such path {request.url.path}", 404)
        name, action = rest[1], rest[2:]
        if name != self.model.name:
            raise ProtocolError(f"model {name!r} is not served here; this server serves {self.model.name!r}", 404)
        if action[:1] == ["versions"]:
            if action[1:2] != ["1"]:
                raise ProtocolError(f"model {name!r} has only version 1, not {'/'.join(action[1:2]) or '(none)'}", 404)
            action = action[2:]
        if action == []:
            self.expect(request, "GET")
            return json_response(self.model.metadata())
        if action == ["ready"]:
            self.expect(request, "GET")
            return json_response({"name": name, "ready": True})
        if action == ["infer"]:
            self.expect(request, "POST")
            return json_response(await self.infer(request))
        raise ProtocolError(f"no such path {request.url.path}", 404)

    @staticmethod
    def expect(request: Request, method: str) -> None:
        if request.method != method:
            raise ProtocolError(f"{request.url.path} takes {method}, not {request.method}", 405)

    async def infer(self, request: Request) -> dict:
        """Reads the body (within the size limit), checks the request and reads its images in a thread, then scores
        its images in the batch queue."""
        body = await self.read_body(request)
        parsed = await asyncio.to_thread(parse_infer_request, body, request.headers.get(HEADER_LENGTH))
        items = await asyncio.to_thread(self.model.batch_items, parsed)
        scored = await asyncio.gather(*(self.score_batch(item) for item in items))
        return self.model.response(parsed, scored)

    async def read_body(self, request: Request) -> bytes:
        """The body, refused (413) as soon as it passes `max_request_bytes`."""
        limit = self.options.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ProtocolError(f"the request body is {int(declared)} bytes, above --max_request_bytes {limit}", 413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ProtocolError(f"the request body is above --max_request_bytes {limit}", 413)
        return bytes(body)


def build_app(
    options: ServeOptions,
    num_replicas: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    max_ongoing_requests: int | None = None,
):
    """The Ray Serve application of one model.

    Args:
        options: What each replica loads and how it batches.
        num_replicas: Replicas of the model (each loads its own copy).
        num_cpus: CPUs Ray reserves per replica.
        num_gpus: GPUs per replica (a fraction shares a GPU between replicas).
        max_ongoing_requests: Requests one replica takes at once (None: enough to fill four batches).

    Returns:
        A bound `serve.Application` for `serve.run`.
    """
    ongoing = max_ongoing_requests or max(32, 4 * options.max_batch_size)
    deployment = InferenceServer.options(
        num_replicas=num_replicas,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        max_ongoing_requests=ongoing,
    )
    return deployment.bind(options)


__all__ = ["SERVER_NAME", "InferenceServer", "build_app"]
