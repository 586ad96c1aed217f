"""Predict benchmark: images/s of `inference.predict` against the model's forward alone, and its peak memory.

A random-weight smoke CLIP-ADA (96 px input, R = 1, calibrated thresholds set by hand) scores generated PNGs
(`training.demo_data` discs and weaves, `--image_size` px, so every image is resized as real inputs are). Each
measurement runs in its own Python process, so that its RSS high-water mark (`ru_maxrss`) is its own:

- `forward`: the model alone (the backend the command loads) on pixel values prepared beforehand, batch by batch
  as the command would give them (no reading, resizing, drawing or writing);
- `predict`: `inference.predict`'s command on the folder (reading, preprocessing, forward, original-size maps,
  rows, overlays), with and without `--no-overlays`.

Both run with the same `--threads` (the command's `--num_threads`) and `--device`. Images/s count the scoring loop
only (model loading excluded: for the command, its `predict_images` is timed). Flat memory means the peak RSS at
5,000 images is that at 1,000, within a few MiB.

Example:
    ```bash
    python benchmarks/bench_predict.py --threads 1                     # 1,000 and 5,000 images
    python benchmarks/bench_predict.py --counts 50 200 --output_dir /tmp/bench_predict
    ```
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.demo_data import render_disc, render_weave  # noqa: E402

MIB = 2**20


def measure(
    mode: str, checkpoint: str, folder: str, output_dir: str, count: int, batch_size: int, threads: int, device: str
) -> dict:
    """One measurement, in this process (run it in a fresh one: `ru_maxrss` is the process's high-water mark).

    Args:
        mode: `forward` (the backend `inference.predict` would load, on the pixel values it would give it, prepared
            beforehand), `predict` or `predict_no_overlays` (`inference.predict`'s command on the folder).
        checkpoint: The model folder.
        folder: The images.
        output_dir: The command's `--output_dir` (predict modes).
        count: How many images `folder` holds (checked).
        batch_size: Images per backend call.
        threads: torch's CPU threads (the command's `--num_threads`).
        device: Where the model runs (the command's `--device`).

    Returns:
        `seconds` of the scoring loop alone (model loading excluded), `peak_rss_kib` at the end and `rss_before_kib`
        after the imports.
    """
    from inference.backends import load_backend
    from inference.devices import configure_threads
    from inference.loading import load_processor
    from inference.predict import command
    from inference.predict.inputs import collect_inputs

    configure_threads(threads)  # imports torch, so the baseline holds it in every mode
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "forward":
        # what `predict_images` hands the backend, batch by batch, but read and preprocessed before the clock starts
        backend = load_backend("torch", checkpoint, device, "float32", threads)
        processor = load_processor(checkpoint)
        paths = collect_inputs([folder])
        if len(paths) != count:
            raise RuntimeError(f"{folder} holds {len(paths)} images, expected {count}")
        batches = [paths[start : start + batch_size] for start in range(0, count, batch_size)]
        prepared = [processor.model_inputs([processor.process_image(str(path)) for path in batch]) for batch in batches]
        started = time.perf_counter()
        for batch, inputs in zip(batches, prepared):
            backend(inputs["pixel_values"], [None] * len(batch))
        seconds = time.perf_counter() - started
    else:
        # `command.main` calls its module's own `predict_images`: time it there, around the whole scoring loop
        predict_images, timings = command.predict_images, []

        def timed_predict_images(*args, **kwargs):
            started = time.perf_counter()
            counts = predict_images(*args, **kwargs)
            timings.append(time.perf_counter() - started)
            return counts

        command.predict_images = timed_predict_images
        argv = [folder, "--model_name_or_path", checkpoint, "--output_dir", output_dir, "--overwrite_output_dir"]
        argv += ["--batch_size", str(batch_size), "--num_threads", str(threads), "--device", device]
        summary = command.main(argv + (["--no-overlays"] if mode == "predict_no_overlays" else []))
        if len(timings) != 1:
            raise RuntimeError("inference.predict did not call the timed predict_images: the benchmark times nothing")
        if summary["images"] != count or summary["ERROR"]:
            raise RuntimeError(f"inference.predict scored {summary}, expected {count} images without errors")
        seconds = timings[0]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_rss_kib": peak, "rss_before_kib": baseline}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--image_size", type=int, default=128, help="side of the generated PNGs")
    parser.add_argument("--batch_size", type=int, default=8, help="inference.predict's default")
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads (predict's --num_threads)")
    parser.add_argument("--device", default="cpu", help="where the model runs (predict's --device)")
    parser.add_argument("--work_dir", help="where images, checkpoint and outputs go (default: a temporary folder)")
    parser.add_argument("--output_dir", default=str(Path(__file__).resolve().parent / "results"))
    return parser.parse_args(argv)


def make_checkpoint(folder: Path) -> Path:
    """A smoke CLIP-ADA (random weights) with thresholds, saved with its processor."""
    from modeling_clipada import CLIPADAForAnomalySegmentation
    from processing import CLIPADAImageProcessor
    from training.smoke_clip import build_smoke_clip

    clip_dir = build_smoke_clip(folder / "smoke_clip")
    model = CLIPADAForAnomalySegmentation.from_clip(str(clip_dir), num_refinements=1, feature_layer=2)
    model.config.image_threshold, model.config.pixel_threshold = 0.5, 0.5
    model.save_pretrained(folder / "model")
    CLIPADAImageProcessor(size=model.config.vision_config.image_size).save_pretrained(folder / "model")
    return folder / "model"


def make_images(folder: Path, count: int, size: int) -> Path:
    """`count` PNGs, discs and weaves alternating, seeded."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        render = render_disc if index % 2 == 0 else render_weave
        image, _ = render(rng, size)
        Image.fromarray(image).save(folder / f"{index:05d}.png")
    return folder


def run_child(
    mode: str, checkpoint: Path, folder: Path, output_dir: Path, count: int, batch_size: int, threads: int, device: str
) -> dict:
    """[`measure`] in a fresh Python process; returns the result row (images/s, peak RSS in MiB)."""
    args = (mode, str(checkpoint), str(folder), str(output_dir), count, batch_size, threads, device)
    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import bench_predict; "
        f"print(json.dumps(bench_predict.measure(*{args!r})))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{mode} on {count} images failed:\n{result.stderr[-3000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "mode": mode,
        "images": count,
        "images_per_second": count / measured["seconds"],
        "peak_rss_mib": measured["peak_rss_kib"] * 1024 / MIB,
        "rss_after_imports_mib": measured["rss_before_kib"] * 1024 / MIB,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_predict_"))
    checkpoint = make_checkpoint(work_dir)
    results = []
    for count in args.counts:
        folder = make_images(work_dir / f"images_{count}", count, args.image_size)
        modes = ["forward", "predict", "predict_no_overlays"] if count == min(args.counts) else ["predict"]
        for mode in modes:
            output_dir = work_dir / f"out_{mode}_{count}"
            results.append(
                run_child(mode, checkpoint, folder, output_dir, count, args.batch_size, args.threads, args.device)
            )
            print(json.dumps(results[-1]), flush=True)
    report = {
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor(),
            "threads": args.threads,
            "device": args.device,
        },
        "settings": {"image_size": args.image_size, "batch_size": args.batch_size, "model": "smoke CLIP, R=1, 96 px"},
        "results": results,
    }
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "predict.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| run | images | images/s | peak RSS (MiB) |", "|:---|---:|---:|---:|"]
    lines += [
        f"| {r['mode']} | {r['images']} | {r['images_per_second']:.1f} | {r['peak_rss_mib']:.0f} |" for r in results
    ]
    (output_dir / "predict.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
