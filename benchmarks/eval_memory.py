"""Evaluation-memory check: stream generated test images through `training.evaluation.evaluate_model`; track memory.

The images are generated with `training.demo_data`'s renderers (normal discs and weaves, and defective ones with
their masks), PNG-encoded into a `datasets.Dataset` on disk (memory-mapped, as a prepared dataset is), and
evaluated by the real evaluation path (`evaluate_model`: processor collate, model forward, `AnomalyMetrics`).
`AnomalyMetrics.update` is wrapped to read the process memory after every batch, and a snapshot is kept when
the number of images seen first reaches each checkpoint (500, 1,000 and 2,000 by default).

What should hold: apart from the metric buffers (4 bytes per pixel, plus 4 per anomalous pixel, which
`AnomalyMetrics.nbytes` reports), memory stays flat. The check compares the anonymous resident memory
(`RssAnon`: heap, tensors, buffers) minus the buffers at the first and the last checkpoint. File-backed
resident pages (`RssFile`: the memory-mapped Arrow file being read, shared libraries) are reported apart: they
are page cache the kernel reclaims, not memory the evaluation holds.

Example:
    ```bash
    python benchmarks/eval_memory.py                           # 2,000 images, ViT-B/16 shape, R = 1, bf16
    python benchmarks/eval_memory.py --tiny --num_images 64 --checkpoints 16 32 64 --output_dir /tmp/evalmem
    ```
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import clipada_config
from measure import cpu_model_name

from modeling_clipada import CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor

MIB = 2**20
# Flat means: RssAnon minus the metric buffers grows by less than this between the first and last checkpoint.
FLAT_TOLERANCE_MIB = 64.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_images", type=int, default=2000)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--image_size", type=int, default=224, help="side of the generated PNGs and of the model input")
    parser.add_argument("--num_refinements", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument(
        "--batch_size", type=int, default=16, help="evaluation batch size (training.evaluation's default)"
    )
    parser.add_argument("--anomalous_fraction", type=float, default=0.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a tiny CLIP (32 px) instead of the ViT-B/16 shape")
    parser.add_argument("--output_dir", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--name", default="eval_memory")
    args = parser.parse_args(argv)
    if args.tiny and args.image_size == 224:
        args.image_size = 32
    if args.tiny and args.threads is None:
        args.threads = 1  # tiny ops gain nothing from more threads, and suffer most when the cores are shared
    if max(args.checkpoints) > args.num_images:
        parser.error("a checkpoint lies beyond --num_images")
    return args


def memory_status() -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon and RssFile of this process in MiB (Linux /proc)."""
    values = {}
    with open("/proc/self/status") as file:
        for line in file:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                values[key] = round(int(value.split()[0]) / 1024, 1)
    return values


def generate_rows(num_images: int, image_size: int, anomalous_fraction: float, seed: int):
    """Yields rows of `training.data.anomaly_features` (PNG bytes): demo discs and weaves, normal or defective."""
    import io

    from PIL import Image

    from training.demo_data import DEFECT_TYPES, RENDERERS, add_defect, image_rng

    def png(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    categories = sorted(RENDERERS)
    for index in range(num_images):
        category = categories[index % len(categories)]
        rng = image_rng(seed, category, "eval_memory", index)
        image, region = RENDERERS[category](rng, image_size)
        label = int(rng.random() < anomalous_fraction)
        mask, defect = None, "good"
        if label:
            defect = DEFECT_TYPES[category][int(rng.integers(len(DEFECT_TYPES[category])))]
            image, mask_array = add_defect(image, region, defect, rng)
            mask = png(mask_array)
        # one evaluation category, so that the metric buffers grow over all the images (the worst case)
        yield {
            "image": png(image),
            "mask": mask,
            "label": label,
            "category": "synthetic",
            "defect_type": defect,
            "image_path": f"synthetic/{defect}/{index:05d}.png",
        }


def build_dataset(args: argparse.Namespace, cache_dir: Path):
    import datasets

    from training.data import anomaly_features

    datasets.disable_progress_bars()
    return datasets.Dataset.from_generator(
        generate_rows, features=anomaly_features(), cache_dir=str(cache_dir),
        gen_kwargs={"num_images": args.num_images, "image_size": args.image_size,
                    "anomalous_fraction": args.anomalous_fraction, "seed": args.seed},
    )  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    import training.evaluation as evaluation
    from training.metrics import AnomalyMetrics

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    checkpoints = sorted(set(args.checkpoints))
    trace: list[dict] = []
    snapshots: list[dict] = []
    state = {"seen": 0}

    class RecordingMetrics(AnomalyMetrics):
        """`AnomalyMetrics` that reads the process memory after every batch it receives."""

        def update(self, anomaly_maps, masks, image_scores, *args, **kwargs) -> None:
            super().update(anomaly_maps, masks, image_scores, *args, **kwargs)
            state["seen"] += len(image_scores)
            point = {"images": state["seen"], "metric_buffers_mib": round(self.nbytes / MIB, 1), **memory_status()}
            point["rss_anon_minus_buffers_mib"] = round(point["RssAnon"] - point["metric_buffers_mib"], 1)
            trace.append(point)
            while checkpoints[len(snapshots) :] and state["seen"] >= checkpoints[len(snapshots)]:
                snapshots.append({"checkpoint": checkpoints[len(snapshots)], **point})

        def compute(self, *args, **kwargs) -> dict[str, float]:
            results = super().compute(*args, **kwargs)
            trace.append(
                {
                    "images": state["seen"],
                    "after": "compute",
                    **memory_status(),
                    "metric_buffers_mib": round(self.nbytes / MIB, 1),
                }
            )
            return results

    with tempfile.TemporaryDirectory(prefix="clipada-evalmem-") as workdir:
        started = time.perf_counter()
        dataset = build_dataset(args, Path(workdir))
        generation_s = time.perf_counter() - started
        dtype = getattr(torch, args.dtype)
        model = CLIPADAForAnomalySegmentation(clipada_config(args.num_refinements, args.image_size, args.tiny))
        model = model.to(args.device, dtype).eval()
        processor = CLIPADAImageProcessor(size=args.image_size)
        gc.collect()
        before = memory_status()
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")  # VmHWM from here on is the evaluation's own high-water mark
        original = evaluation.AnomalyMetrics
        evaluation.AnomalyMetrics = RecordingMetrics
        try:
            started = time.perf_counter()
            per_category, _ = evaluation.evaluate_model(
                model,
                processor,
                dataset,
                device=args.device,
                batch_size=args.batch_size,
                output_dir=None,
                num_heatmaps=0,
            )
            evaluation_s = time.perf_counter() - started
        finally:
            evaluation.AnomalyMetrics = original
        after = memory_status()
        del dataset

    first, last = snapshots[0], snapshots[-1]
    growth = last["rss_anon_minus_buffers_mib"] - first["rss_anon_minus_buffers_mib"]
    return {
        "environment": {
            "cpu": cpu_model_name(),
            "device": args.device,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "settings": dict(vars(args)),
        "before_evaluation": before,
        "snapshots": snapshots,
        "after_evaluation": after,
        "trace": trace,
        "growth_excluding_buffers_mib": round(growth, 1),
        "flat": growth < FLAT_TOLERANCE_MIB,
        "flat_tolerance_mib": FLAT_TOLERANCE_MIB,
        "metrics": per_category,
        "generation_s": round(generation_s, 1),
        "evaluation_s": round(evaluation_s, 1),
    }


def to_markdown(results: dict) -> str:
    settings = results["settings"]
    lines = [
        f"# Evaluation memory: {settings['num_images']} generated images through `training.evaluation.evaluate_model`",
        "",
        (
            f'CPU "{results["environment"]["cpu"]}", device `{settings["device"]}`, '
            f"{'tiny CLIP' if settings['tiny'] else 'ViT-B/16-shaped CLIP'}, R = {settings['num_refinements']}, "
            f"{settings['dtype']}, {settings['image_size']} px, batch {settings['batch_size']}, one category (the "
            f"metric buffers grow over all images). Evaluation took {results['evaluation_s']:.0f} s. Memory in MiB; "
            f"before the evaluation (model loaded): RSS {results['before_evaluation']['VmRSS']}, "
            f"anonymous {results['before_evaluation']['RssAnon']}."
        ),
        "",
        (
            "| images | peak RSS (VmHWM) | RSS | anonymous (RssAnon) | file-backed (RssFile) | metric buffers | "
            "anonymous - buffers |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for snapshot in results["snapshots"]:
        lines.append(
            f"| {snapshot['images']} | {snapshot['VmHWM']} | {snapshot['VmRSS']} | {snapshot['RssAnon']} | "
            f"{snapshot['RssFile']} | {snapshot['metric_buffers_mib']} | "
            f"{snapshot['rss_anon_minus_buffers_mib']} |"
        )
    after = results["after_evaluation"]
    lines += [
        "",
        (
            f"After `compute` and the end of the category: peak RSS {after['VmHWM']}, RSS {after['VmRSS']}, "
            f"anonymous {after['RssAnon']}."
        ),
        "",
        (
            f"Growth of (anonymous - buffers) from the first to the last checkpoint: "
            f"{results['growth_excluding_buffers_mib']} MiB -> "
            f"{'flat' if results['flat'] else '**NOT flat**'} (tolerance {results['flat_tolerance_mib']:.0f} MiB)."
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    try:
        results = run(args)
    finally:
        torch.set_num_threads(threads)  # main() may run inside another program (the tests)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{args.name}.json").write_text(json.dumps(results, indent=1) + "\n")
    markdown = to_markdown(results)
    (output_dir / f"{args.name}.md").write_text(markdown)
    print(markdown)
    return results


if __name__ == "__main__":
    main()
