"""Benchmark of the synthetic anomaly generator: median milliseconds per batch, with and without a texture folder.

Example:
    ```bash
    python benchmarks/bench_synthesis.py                      # batch 16 at 224 px on the CPU
    python benchmarks/bench_synthesis.py --quick              # a few repeats, for a smoke test
    python benchmarks/bench_synthesis.py --device cuda --output bench_synthesis.json
    ```
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.synthesis import SyntheticAnomalyGenerator  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before measuring")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls; the median is reported")
    parser.add_argument("--num_textures", type=int, default=64, help="images in the generated texture folder")
    parser.add_argument(
        "--texture_dir", default=None, help="a real texture folder (e.g. DTD) instead of a generated one"
    )
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="1 warm-up call and 5 repeats")
    parser.add_argument("--output", default=None, help="also write the JSON results to this file")
    return parser.parse_args(argv)


def write_texture_folder(folder: Path, count: int, size: int, seed: int = 0) -> Path:
    """Writes ``count`` random smooth colour PNGs of ``size`` px to ``folder`` (a stand-in for DTD)."""
    generator = torch.Generator().manual_seed(seed)
    for index in range(count):
        lattice = torch.rand(1, 3, 8, 8, generator=generator)
        image = torch.nn.functional.interpolate(lattice, size=(size, size), mode="bicubic").clamp(0, 1)
        pixels = (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"texture_{index:03d}.png")
    return folder


def time_generator(
    synthesizer: SyntheticAnomalyGenerator, images: torch.Tensor, warmup: int, repeats: int
) -> dict[str, float]:
    """Median / min / max milliseconds per call of ``synthesizer`` on ``images`` (B, 3, H, W)."""
    generator = torch.Generator().manual_seed(0)
    synchronize = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    for _ in range(warmup):
        synthesizer(images, generator)
    synchronize()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        synthesizer(images, generator)
        synchronize()
        timings.append((time.perf_counter() - start) * 1000.0)
    return {
        "median_ms": round(statistics.median(timings), 3),
        "min_ms": round(min(timings), 3),
        "max_ms": round(max(timings), 3),
    }


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark, prints the results as JSON and returns them."""
    args = parse_args(argv)
    if args.quick:
        args.warmup, args.repeats = 1, 5
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    device = torch.device(args.device)
    images = torch.rand(
        args.batch_size, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0)
    )
    images = images.to(device)
    results = {
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "warmup": args.warmup,
        "repeats": args.repeats,
    }
    results["default_source"] = time_generator(SyntheticAnomalyGenerator(), images, args.warmup, args.repeats)
    with tempfile.TemporaryDirectory() as temporary:
        texture_dir = args.texture_dir or write_texture_folder(Path(temporary), args.num_textures, args.image_size)
        start = time.perf_counter()
        synthesizer = SyntheticAnomalyGenerator(texture_dir, image_size=args.image_size)
        results["texture_load_s"] = round(time.perf_counter() - start, 3)
        results["num_textures"] = int(synthesizer.textures.shape[0])
        results["texture_dir"] = time_generator(synthesizer, images, args.warmup, args.repeats)
    print(json.dumps(results, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
