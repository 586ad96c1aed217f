"""Ray benchmark: `clipada predict --engine ray` on a two-node Ray cluster on this machine's loopback against the
single-process command, on the same images: the same rows, and images/s of each.

A random-weight smoke CLIP-ADA (96 px input, R = 1, thresholds set by hand; `bench_predict.make_checkpoint`) scores
generated PNGs (`bench_predict.make_images`: discs and weaves, `--image_size` px). Every run is the command in its
own process, timed from start to exit (model loading, and for Ray joining the cluster and starting the actors,
included). Each engine runs at two image counts, so that its fixed cost and its steady rate come apart:
`steady images/s = (large - small) / (time large - time small)`.

Engines (all on the same cores):
- `local`: the command with its defaults (`--num_workers`, `--num_writers`: loader processes and writer threads);
- `local_1proc`: `--num_workers 0 --num_writers 0`, one process doing everything in turn;
- `ray_2nodes`: `--engine ray --ray_address` a `inference.predict.ray_cluster.LoopbackCluster` of two nodes with
  `--cpus_per_node` CPUs each (read and finish tasks, one model actor).

Example:
    ```bash
    python benchmarks/bench_ray.py                                 # 100 and 400 images of 512 px, overlays of NG
    python benchmarks/bench_ray.py --counts 20 60 --image_size 256 --output_dir /tmp/bench_ray
    ```
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_predict import make_checkpoint, make_images  # noqa: E402

from inference.predict.ray_cluster import QUIET_ENV, LoopbackCluster  # noqa: E402

ENGINES = ("local", "local_1proc", "ray_2nodes")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs=2, default=[100, 400], help="The small and the large run.")
    parser.add_argument("--image_size", type=int, default=512, help="Side of the generated PNGs.")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--overlays", choices=("all", "ng", "none"), default="ng")
    parser.add_argument("--cpus_per_node", type=int, default=1, help="CPUs of each of the two Ray nodes.")
    parser.add_argument("--output_dir", type=Path, default=None, help="Work folder (default: a temporary one).")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "ray")
    return parser.parse_args(argv)


def predict_command(folder: Path, checkpoint: Path, output_dir: Path, args: argparse.Namespace, engine: str) -> list:
    """The command line of one run."""
    command = [sys.executable, "-m", "inference.predict", str(folder), "--model_name_or_path", str(checkpoint)]
    command += ["--output_dir", str(output_dir), "--batch_size", str(args.batch_size), "--overlays", args.overlays]
    command += ["--num_threads", "1"]
    if engine == "local_1proc":
        command += ["--num_workers", "0", "--num_writers", "0"]
    return command


def timed(command: list, env: dict) -> float:
    """Seconds from start to exit of `command`; raises with its stderr when it fails."""
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return seconds


def read_rows(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "predictions.jsonl").read_text().splitlines()]


def same_rows(first: list[dict], second: list[dict]) -> dict:
    """Whether two runs wrote the same rows: paths in the same order, the same decisions, overlays and boxes, and
    scores within 1e-6 (the largest difference is reported)."""
    exact = ("path", "decision", "overlay", "boxes", "num_regions", "width", "height", "error")
    differences = [abs(a["score"] - b["score"]) for a, b in zip(first, second) if a["score"] is not None]
    equal = len(first) == len(second) and all(a[key] == b[key] for a, b in zip(first, second) for key in exact)
    max_difference = max(differences, default=0.0)
    return {"same_rows": bool(equal and max_difference <= 1e-6), "max_score_difference": max_difference}


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores visible, {platform.system()} {platform.release()}"


def run(args: argparse.Namespace, work_dir: Path) -> dict:
    load_before = os.getloadavg()[0]
    checkpoint = make_checkpoint(work_dir / "checkpoint")
    small, large = args.counts
    folders = {
        count: make_images(work_dir / f"images_{count}", count, args.image_size, unique=16) for count in (small, large)
    }
    env = {**os.environ, **QUIET_ENV, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    seconds: dict[str, dict[int, float]] = {engine: {} for engine in ENGINES}
    for engine in ("local", "local_1proc"):
        for count, folder in folders.items():
            output = work_dir / f"{engine}_{count}"
            seconds[engine][count] = timed(predict_command(folder, checkpoint, output, args, engine), env)
    with LoopbackCluster(num_nodes=2, cpus_per_node=args.cpus_per_node) as cluster:
        for count, folder in folders.items():
            output = work_dir / f"ray_2nodes_{count}"
            command = predict_command(folder, checkpoint, output, args, "ray_2nodes")
            command += ["--engine", "ray", "--ray_address", cluster.address]
            seconds["ray_2nodes"][count] = timed(command, env)
    reference = read_rows(work_dir / f"local_1proc_{large}")
    results = []
    for engine in ENGINES:
        wall = seconds[engine]
        steady = (large - small) / (wall[large] - wall[small]) if wall[large] > wall[small] else None
        results.append(
            {
                "engine": engine,
                "seconds": {str(count): round(value, 2) for count, value in wall.items()},
                "images_per_s_end_to_end": round(large / wall[large], 2),
                "images_per_s_steady": None if steady is None else round(steady, 2),
                **same_rows(reference, read_rows(work_dir / f"{engine}_{large}")),
            }
        )
    settings = {
        "counts": args.counts, "image_size": args.image_size, "batch_size": args.batch_size,
        "overlays": args.overlays, "cpus_per_node": args.cpus_per_node, "model": "smoke CLIP-ADA, R=1, 96 px",
        "threads": "--num_threads 1, OMP_NUM_THREADS=1",
        "load_average": f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (1 min)",
    }  # fmt: skip
    return {"machine": machine(), "settings": settings, "results": results}


def table(report: dict) -> list[str]:
    small, large = report["settings"]["counts"]
    lines = [
        f"| engine | {small} images (s) | {large} images (s) | images/s end to end ({large}) | images/s steady | "
        "same rows as one process |",
        "|:---|---:|---:|---:|---:|:---|",
    ]
    for result in report["results"]:
        wall = result["seconds"]
        lines.append(
            f"| {result['engine']} | {wall[str(small)]} | {wall[str(large)]} | {result['images_per_s_end_to_end']} | "
            f"{result['images_per_s_steady']} | {'yes' if result['same_rows'] else 'no'} "
            f"(max score difference {result['max_score_difference']:.1e}) |"
        )
    return lines


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_ray-") as temporary:
        work_dir = args.output_dir or Path(temporary)
        work_dir.mkdir(parents=True, exist_ok=True)
        report = run(args, work_dir)
    lines = table(report)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    settings = ", ".join(f"{key} {value}" for key, value in report["settings"].items())
    text = [f"Machine: {report['machine']}.", f"Settings: {settings}.", "", *lines]
    args.results.with_suffix(".md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return report


if __name__ == "__main__":
    main()
