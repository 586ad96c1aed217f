"""Serve benchmark: p50/p99 latency of `clipada serve` at fixed request rates, and the highest sustained rate, with
dynamic batching against batch 1 and one replica against two.

A random-weight smoke CLIP-ADA (96 px input, R = 1, `bench_predict.make_checkpoint`) serves generated 128 px PNGs
(`training.demo_data` discs and weaves), one image per request, sent as v2 JSON (base64) by an open-loop load
generator in this process (asyncio + aiohttp): requests leave at a fixed rate whether or not earlier ones were
answered, and each latency counts from the moment its request was due, so a server that falls behind shows it
(no coordinated omission). A rate is *sustained* when every request was answered with 200, the answers came at
>= 95 % of the offered rate, and the p99 latency stayed under `--slo_ms`. The rates of a configuration are tried
from low to high and stop at the first one not sustained; `--repeats` sweeps every configuration again, interleaved,
since a shared machine's load changes during a run.

Each configuration (`--configs`, `batch:replicas`) is one `clipada serve` deployment on the same local Ray, each
replica with `--threads` CPU threads and one reserved CPU. The load generator shares the machine's cores with the
server: on a small machine its own cost is part of the figures.

Example:
    ```bash
    python benchmarks/bench_serve.py                                     # 1:1, 8:1, 1:2, 8:2, two sweeps
    python benchmarks/bench_serve.py --configs 8:1 --rates 10 20 --duration 3 --repeats 1 --output_dir /tmp/b
    ```
"""

import argparse
import asyncio
import base64
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_predict import make_checkpoint, make_images  # noqa: E402

DEFAULT_RATES = [10, 20, 40, 60, 80, 100, 120, 160, 200, 240, 320]
MODEL = "clipada"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["1:1", "8:1", "1:2", "8:2"], help="max_batch_size:replicas")
    parser.add_argument("--rates", nargs="+", type=float, default=DEFAULT_RATES, help="Requests per second, rising.")
    parser.add_argument("--duration", type=float, default=5.0, help="Seconds of load per rate.")
    parser.add_argument("--repeats", type=int, default=2, help="Sweeps of every configuration, interleaved.")
    parser.add_argument("--slo_ms", type=float, default=1000.0, help="The p99 latency a sustained rate stays under.")
    parser.add_argument("--batch_wait_timeout_s", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per replica.")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--num_images", type=int, default=32, help="Distinct images the requests cycle through.")
    parser.add_argument("--work_dir", default=None, help="Where the model and images go (default: a temp folder).")
    parser.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "results"))
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request_bodies(folder: Path) -> list[bytes]:
    """One v2 infer request (JSON, one base64 PNG) per image."""
    bodies = []
    for path in sorted(folder.glob("*.png")):
        data = base64.b64encode(path.read_bytes()).decode()
        tensor = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [data]}
        bodies.append(json.dumps({"inputs": [tensor]}).encode())
    return bodies


async def offer_load(url: str, bodies: list[bytes], rate: float, duration: float, slo_ms: float) -> dict:
    """Sends `rate` requests per second for `duration` seconds (open loop) and measures each from its due time."""
    import aiohttp

    count = max(1, int(rate * duration))
    latencies: list[float] = []
    failures = 0
    timeout = aiohttp.ClientTimeout(total=duration + 10)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def one(index: int, due: float) -> None:
            nonlocal failures
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            try:
                async with session.post(url, data=bodies[index % len(bodies)]) as response:
                    await response.read()
                    if response.status != 200:
                        failures += 1
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                failures += 1
                return
            latencies.append(time.perf_counter() - due)

        start = time.perf_counter() + 0.05
        await asyncio.gather(*(one(index, start + index / rate) for index in range(count)))
        elapsed = time.perf_counter() - start
    answered = np.array(latencies) * 1000.0
    p50, p99 = (float(np.percentile(answered, q)) for q in (50, 99)) if len(answered) else (float("nan"),) * 2
    achieved = len(latencies) / elapsed
    sustained = failures == 0 and achieved >= 0.95 * rate and p99 <= slo_ms
    return {
        "rate": rate,
        "sent": count,
        "answered": len(latencies),
        "failed": failures,
        "achieved_rate": achieved,
        "p50_ms": p50,
        "p99_ms": p99,
        "sustained": bool(sustained),
    }


def run_config(checkpoint: Path, bodies: list[bytes], batch: int, replicas: int, args: argparse.Namespace) -> dict:
    """Deploys one configuration, warms it up, then offers the rates in turn until one is not sustained."""
    from ray import serve

    from inference.serve.command import parse_args as serve_args
    from inference.serve.command import start_server

    port = free_port()
    argv = ["--model_name_or_path", str(checkpoint), "--port", str(port), "--num_threads", str(args.threads)]
    argv += ["--max_batch_size", str(batch), "--num_replicas", str(replicas), "--device", "cpu"]
    argv += ["--batch_wait_timeout_s", str(args.batch_wait_timeout_s)]
    url = start_server(serve_args(argv)) + f"/v2/models/{MODEL}/infer"
    try:
        asyncio.run(offer_load(url, bodies, 10.0, 2.0, float("inf")))  # warm-up: first calls, threads, caches
        runs = []
        for rate in args.rates:
            result = asyncio.run(offer_load(url, bodies, rate, args.duration, args.slo_ms))
            runs.append(result)
            print(json.dumps({"max_batch_size": batch, "replicas": replicas, **result}), flush=True)
            if not result["sustained"]:
                break
    finally:
        serve.shutdown()
    sustained = [run["rate"] for run in runs if run["sustained"]]
    return {
        "max_batch_size": batch,
        "replicas": replicas,
        "highest_sustained_rate": max(sustained) if sustained else 0.0,
        "runs": runs,
    }


def markdown(report: dict) -> str:
    """The results as Markdown: the highest sustained rate of each configuration in each sweep, then every rate."""
    machine, settings = report["machine"], report["settings"]
    load = machine["load_average_1min"]
    lines = [
        f"Machine: {machine['description']}; {settings['threads']} thread(s) per replica; model: {settings['model']}; "
        f"one {settings['image_size']} px PNG per request (v2 JSON, base64); {settings['duration_s']:g} s per rate, "
        f"open loop; sustained: all answered, >= 95 % of the rate, p99 <= {settings['slo_ms']:g} ms. 1-minute load "
        f"average before / after (other jobs share the cores): {load['before']:.1f} / {load['after']:.1f}.",
        "",
    ]
    configs = list(dict.fromkeys((result["max_batch_size"], result["replicas"]) for result in report["results"]))
    repeats = sorted({result["repeat"] for result in report["results"]})
    lines += [
        "| max batch | replicas | " + " | ".join(f"sweep {r + 1}: highest sustained (req/s)" for r in repeats) + " |",
        "|---:|---:|" + "---:|" * len(repeats),
    ]
    for batch, replicas in configs:
        rates = [
            f"{result['highest_sustained_rate']:g}"
            for result in report["results"]
            if (result["max_batch_size"], result["replicas"]) == (batch, replicas)
        ]
        lines.append(f"| {batch} | {replicas} | " + " | ".join(rates) + " |")
    lines += [
        "",
        "| sweep | max batch | replicas | rate (req/s) | achieved (req/s) | p50 (ms) | p99 (ms) | sustained |",
        "|---:|---:|---:|---:|---:|---:|---:|:---|",
    ]
    for result in report["results"]:
        for run in result["runs"]:
            lines.append(
                f"| {result['repeat'] + 1} | {result['max_batch_size']} | {result['replicas']} | {run['rate']:g} | "
                f"{run['achieved_rate']:.1f} | {run['p50_ms']:.0f} | {run['p99_ms']:.0f} | "
                f"{'yes' if run['sustained'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import ray

    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_serve-"))
    checkpoint = make_checkpoint(work_dir)
    bodies = request_bodies(make_images(work_dir / "images", args.num_images, args.image_size))
    load_before = os.getloadavg()[0]
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        results = []
        for repeat in range(args.repeats):  # interleaved, so that a busy spell of the machine hits every config
            for config in args.configs:
                batch, replicas = (int(part) for part in config.split(":"))
                results.append({"repeat": repeat, **run_config(checkpoint, bodies, batch, replicas, args)})
    finally:
        ray.shutdown()
    report = {
        "machine": {
            "description": f"{platform.processor() or platform.machine()} {_cpu_name()}, {os.cpu_count()} cores "
            "(shared), no GPU",
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        },
        "settings": {
            "model": "smoke CLIP-ADA, random weights, R=1, 96 px",
            "image_size": args.image_size,
            "threads": args.threads,
            "duration_s": args.duration,
            "repeats": args.repeats,
            "slo_ms": args.slo_ms,
            "batch_wait_timeout_s": args.batch_wait_timeout_s,
        },
        "results": results,
    }
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "serve.json").write_text(json.dumps(report, indent=2) + "\n")
    (output_dir / "serve.md").write_text(markdown(report))
    print(markdown(report))
    return report


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


if __name__ == "__main__":
    main()
