"""`clipada serve`: an inference server for any checkpoint or export folder, on Ray Serve, speaking the Open
Inference Protocol (KServe v2) over HTTP.

It starts a local Ray (or joins the cluster of `--ray_address` / `RAY_ADDRESS`), deploys `--num_replicas` replicas
of the model ([`inference.serve.deployment`]) and serves until Ctrl-C. It binds 127.0.0.1 unless `--host` says
otherwise. The same application is a Ray Serve application builder for `serve run` / `serve deploy`
([`app_builder`]).

Example:
    ```bash
    clipada serve --model_name_or_path outputs/run --port 8000 --max_batch_size 16 --num_replicas 2
    curl -s localhost:8000/v2/models/clipada
    serve run inference.serve.command:app_builder model_name_or_path=outputs/run   # Ray's own CLI
    ```
"""

import argparse
import math
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

from inference.backends import BACKENDS, is_export_folder
from inference.command_line import device_arguments, non_negative_int, positive_int, usage_errors
from inference.loading import ModelLoadError, check_model_location
from inference.modes import add_inference_mode_arguments, check_inference_mode_arguments
from inference.serve.options import (
    DEFAULT_BATCH_WAIT_S,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_REQUEST_PIXELS,
    DEFAULT_MODEL_NAME,
    ServeOptions,
)

MAX_PORT = 65535


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number of at least 0."""
    number = float(text)
    if not (math.isfinite(number) and number >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, got {text}")
    return number


def port_number(text: str) -> int:
    number = non_negative_int(text)
    if number > MAX_PORT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_PORT}, got {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Serve a checkpoint or export folder over the Open Inference Protocol (KServe v2) on Ray Serve.",
        parents=[device_arguments(backend_note=True)],
    )
    parser.add_argument(
        "--model_name_or_path", required=True, help="A checkpoint folder or Hub id, or a `clipada export` folder."
    )
    parser.add_argument(
        "--model_name", default=DEFAULT_MODEL_NAME, help="The name in the URLs: /v2/models/<name>/infer."
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default=None, help="Default: the export's runtime for an export, else torch."
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind (0.0.0.0: every interface).")
    parser.add_argument("--port", type=port_number, default=8000)
    parser.add_argument("--num_replicas", type=positive_int, default=1, help="Copies of the model serving at once.")
    parser.add_argument("--num_cpus_per_replica", type=non_negative_float, default=1.0)
    parser.add_argument(
        "--num_gpus_per_replica", type=non_negative_float, default=0.0, help="GPUs per replica (0.5: two share one)."
    )
    parser.add_argument(
        "--max_batch_size", type=positive_int, default=DEFAULT_MAX_BATCH_SIZE,
        help="Images of any requests scored in one call (dynamic batching; 1: no batching).",
    )  # fmt: skip
    parser.add_argument(
        "--batch_wait_timeout_s", type=non_negative_float, default=DEFAULT_BATCH_WAIT_S,
        help="Seconds a batch waits to fill up.",
    )  # fmt: skip
    parser.add_argument(
        "--max_request_bytes", type=positive_int, default=DEFAULT_MAX_REQUEST_BYTES,
        help="Larger request bodies are refused with 413.",
    )  # fmt: skip
    parser.add_argument(
        "--max_request_pixels", type=positive_int, default=DEFAULT_MAX_REQUEST_PIXELS,
        help="Requests whose images hold more pixels together (width x height, read from the files' headers before "
        "decoding) are refused with 413; bounds a replica's memory.",
    )  # fmt: skip
    parser.add_argument(
        "--max_ongoing_requests", type=positive_int, default=None,
        help="Requests one replica takes at once (default: enough to fill four batches, at least 32).",
    )  # fmt: skip
    parser.add_argument(
        "--ray_address", default=None,
        help="A Ray cluster to deploy on (default: RAY_ADDRESS when set, else a new local Ray).",
    )  # fmt: skip
    add_inference_mode_arguments(parser)  # as clipada predict: the thresholds decide only in their own mode
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_inference_mode_arguments(parser, args)
    return args


def serve_options(args: argparse.Namespace) -> ServeOptions:
    return ServeOptions(
        model_name_or_path=args.model_name_or_path, model_name=args.model_name, backend=args.backend,
        device=args.device, dtype=args.dtype, num_threads=args.num_threads, max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_timeout_s, max_request_bytes=args.max_request_bytes,
        max_request_pixels=args.max_request_pixels,
        inference_mode={key: getattr(args, key) for key in ("resize_mode", "tile_size", "tile_overlap")},
    )  # fmt: skip


def application(args: argparse.Namespace):
    """The Ray Serve application the flags describe."""
    from inference.serve.deployment import build_app  # Ray: only when serving

    return build_app(
        serve_options(args), args.num_replicas, args.num_cpus_per_replica, args.num_gpus_per_replica,
        args.max_ongoing_requests,
    )  # fmt: skip


def app_builder(builder_args: dict):
    """For Ray's own CLI and config files: `serve run inference.serve.command:app_builder model_name_or_path=...`
    (any flag of `clipada serve` as `name=value`; `--host/--port` come from Ray's http_options instead)."""
    argv = [item for key, value in builder_args.items() for item in (f"--{key}", str(value))]
    return application(parse_args(argv))


def check_model_folder(model_name_or_path: str) -> None:
    """A local folder must hold a checkpoint (config.json) or an export (clipada_export.json), before Ray starts."""
    check_model_location(model_name_or_path)
    folder = Path(model_name_or_path)
    if folder.is_dir() and not is_export_folder(folder) and not (folder / "config.json").is_file():
        raise ModelLoadError(f"--model_name_or_path {folder} holds neither config.json nor a clipada export")


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ValueError(f"--host {host} --port {port} cannot be bound: {error.strerror or error}") from None


def check_resources(args: argparse.Namespace) -> None:
    """The replicas must fit the Ray cluster's CPUs and GPUs (else they would wait for them forever)."""
    import ray

    available = ray.cluster_resources()
    for flag, resource in (("--num_cpus_per_replica", "CPU"), ("--num_gpus_per_replica", "GPU")):
        needed = getattr(args, flag[2:]) * args.num_replicas
        if needed > available.get(resource, 0) + 1e-9:
            per_replica = getattr(args, flag[2:])
            raise ValueError(
                f"{flag} {per_replica:g} x --num_replicas {args.num_replicas} needs {needed:g} {resource}s; the Ray "
                f"cluster has {available.get(resource, 0):g}"
            )


def replica_error(report: str) -> str:
    """The replica's own error in Ray's deployment failure report (its traceback's last `XError: message` line, not
    Ray's), or the report's last line."""
    raised = [
        match.group(2)
        for match in re.finditer(r"^\s*(?:\(\w+ pid=\d+\)\s*)?([\w.]+(?:Error|Exception)): (.+)$", report, re.MULTILINE)
        if not match.group(1).startswith("ray.")
    ]
    lines = [line.strip() for line in report.splitlines() if line.strip()]
    return raised[-1] if raised else (lines[-1] if lines else "no reason given")


def start_server(args: argparse.Namespace) -> str:
    """Starts (or joins) Ray, deploys the model and returns the server's URL once every replica is ready.

    Raises:
        ValueError: A port that cannot be bound, replicas that do not fit the cluster, or a model a replica cannot
            load (its error's last line).
    """
    import ray
    from ray import serve

    check_model_folder(args.model_name_or_path)
    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        if address is None:
            check_port_free(args.host, args.port)
        ray.init(address=address, include_dashboard=False if address is None else None, log_to_driver=True)
    check_resources(args)
    serve.start(http_options={"host": args.host, "port": args.port})
    try:
        serve.run(application(args), name=args.model_name, route_prefix="/")
    except RuntimeError as error:
        reports = [str(error)]
        try:  # the replica's traceback is in the deployment's status message
            status = serve.status().applications.get(args.model_name)
            reports += [deployment.message for deployment in status.deployments.values()] if status else []
        except Exception:  # noqa: BLE001 - the status is only for a better message
            pass
        raise ValueError(f"the model could not be deployed: {replica_error(chr(10).join(reports))}") from None
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    return f"http://{shown_host}:{args.port}"


def cli(argv: list[str] | None = None) -> None:
    """`clipada serve`: serves until Ctrl-C or SIGTERM (then shuts Serve down; a local Ray stops with the
    process)."""
    args = parse_args(argv)
    try:
        from ray import serve
    except ImportError:
        print("error: Ray Serve is not installed: pip install 'clipada[serve]'", file=sys.stderr)
        raise SystemExit(2) from None
    with usage_errors():
        url = start_server(args)
    print(
        f"serving {args.model_name_or_path} as {args.model_name!r}: {url}/v2/models/{args.model_name}/infer "
        f"({args.num_replicas} replica(s), batches of up to {args.max_batch_size}); Ctrl-C to stop",
        flush=True,
    )
    signal.signal(signal.SIGTERM, stop_on_sigterm)  # what a cluster or container sends: shut Serve down cleanly
    try:
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()


def stop_on_sigterm(signum, frame) -> None:
    """SIGTERM: leave the serving loop (Serve is shut down on the way out), exit status 143 (128 + SIGTERM)."""
    print("clipada serve: stopping (SIGTERM)", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


__all__ = ["app_builder", "application", "build_parser", "cli", "parse_args", "serve_options", "start_server"]


if __name__ == "__main__":
    cli()
