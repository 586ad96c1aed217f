"""Tiling benchmark: pixel AUROC / AUPRO of squash vs letterbox vs tiles per defect size, and the cost per tile.

The model is the SMOKE model of the main job (`training.demo`): a random-weight CLIP (`training.smoke_clip`, 96 px
input) whose head is trained briefly with `training.train` on the demo data. Its numbers show that the pipeline
works and how the modes behave with one model; they say nothing about a pretrained CLIP's accuracy.

- generated: `--image_size` (default 1024 x 768) weave textures drawn at the demo's own pixel scale (a 96 px demo
  weave repeated: what the model was trained on, at the image's native resolution), each anomalous image with one
  stain (an ellipse blended with a blue colour, as the demo's stains) covering a known fraction of the image.
  Per fraction: the normal images plus that fraction's anomalous ones.
- real: the MVTec-AD and VisA sample files in `--realdata` (skipped when absent), a few test images per category.
- every map is compared with its mask at the image's own resolution (squash maps resized back bilinearly), with
  `training.metrics.compute_anomaly_metrics`; every image is one batched forward of all its inputs.
- cost: the model's forward on batches of n tiles against n = 1 (the squash forward), for the smoke model and a
  random ViT-B/16-shaped CLIP-ADA at 224 px (`benchmarks.benchmark.clipada_config`), timed in interleaved rounds
  (`benchmarks.measure.time_in_rounds`); and the whole per-image time of each mode on the generated images.

Example:
    ```bash
    python benchmarks/bench_tiling.py --threads 1      # -> benchmarks/results/tiling.{json,md}
    python benchmarks/bench_tiling.py --threads 1 --num_images 2 --train_steps 20 --skip_vit_b --output_dir /tmp/t
    ```
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.measure import environment, time_in_rounds  # noqa: E402
from modeling_clipada import CLIPADAForAnomalySegmentation  # noqa: E402
from processing import CLIPADAImageProcessor  # noqa: E402
from training import train  # noqa: E402
from training.data import load_anomaly_dataset  # noqa: E402
from training.demo_data import make_demo_dataset, render_weave  # noqa: E402
from training.metrics import compute_anomaly_metrics  # noqa: E402
from training.smoke_clip import build_smoke_clip  # noqa: E402

STAIN = np.array([56.0, 112.0, 196.0])
REAL_SOURCES = {"mvtec": ("mvtec", None), "visa": ("visa", "visa")}  # folder -> (name, loader's `dataset`)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train_steps", type=int, default=500, help="Smoke-model training steps (the main job's).")
    parser.add_argument("--image_size", type=int, nargs=2, default=[1024, 768], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--defect_fractions", type=float, nargs="+", default=[0.001, 0.005, 0.01, 0.05])
    parser.add_argument("--num_images", type=int, default=6, help="Normal images, and anomalous ones per fraction.")
    parser.add_argument("--tile_sizes", type=int, nargs="+", default=[96, 192, 384], help="Tile modes measured.")
    parser.add_argument("--tile_overlap", type=float, default=0.25)
    parser.add_argument("--tile_counts", type=int, nargs="+", default=[1, 4, 16, 64], help="Batches of the cost.")
    parser.add_argument("--realdata", default=str(ROOT.parent / "shared" / "realdata"))
    parser.add_argument("--max_real_images", type=int, default=8, help="Test images per real category.")
    parser.add_argument("--skip_vit_b", action="store_true", help="Leave out the ViT-B/16 cost rows.")
    parser.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def train_smoke_model(workdir: Path, steps: int, seed: int) -> Path:
    """The main job's recipe (`training.demo`): demo data, random smoke CLIP, `training.train`, no evaluation."""
    data = make_demo_dataset(workdir / "demo", seed=seed, overwrite=True)
    clip = build_smoke_clip(workdir / "smoke_clip", seed=seed)
    flags = {"--max_train_steps": steps, "--per_device_train_batch_size": 8, "--learning_rate": 2e-3, "--seed": seed}
    argv = ["--model_name_or_path", str(clip), "--dataset_name", str(data), "--output_dir", str(workdir / "model")]
    train.main(
        argv + [str(v) for item in flags.items() for v in item] + ["--skip_evaluation", "--overwrite_output_dir"]
    )
    return workdir / "model"


def weave_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A 96 px demo weave (period 12 px, checker 24 px) repeated to `height x width`: seamless, at the demo's scale."""
    cell, _ = render_weave(rng, 96)
    return np.tile(cell, (height // 96 + 1, width // 96 + 1, 1))[:height, :width]


def add_stain(image: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One elliptic stain covering `fraction` of the image (within a few pixels); returns the image and its mask."""
    height, width = image.shape[:2]
    ratio = rng.uniform(0.5, 1.0)
    semi_major = np.sqrt(fraction * height * width / (np.pi * ratio))
    semi_minor = ratio * semi_major
    cx, cy = rng.uniform(semi_major, width - semi_major), rng.uniform(semi_minor, height - semi_minor)
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).ellipse([cx - semi_major, cy - semi_minor, cx + semi_major, cy + semi_minor], fill=255)
    mask = np.asarray(canvas) > 0
    result = image.astype(np.float64)
    result[mask] = 0.4 * result[mask] + 0.6 * STAIN
    return result.astype(np.uint8), mask.astype(np.uint8)


def generated_set(args: argparse.Namespace) -> dict[str, list[tuple[np.ndarray, np.ndarray, int]]]:
    """`{"normal": [(image, mask, 0)], "0.001": [(image, mask, 1)], ...}` for every defect fraction."""
    width, height = args.image_size
    rng = np.random.default_rng(args.seed)
    sets = {"normal": [(weave_image(rng, width, height), np.zeros((height, width), np.uint8), 0)]}
    sets["normal"] += [(weave_image(rng, width, height), sets["normal"][0][1], 0) for _ in range(args.num_images - 1)]
    for fraction in args.defect_fractions:
        sets[str(fraction)] = [
            (*add_stain(weave_image(rng, width, height), fraction, rng), 1) for _ in range(args.num_images)
        ]
    return sets


def score_images(model, processor: CLIPADAImageProcessor, images: list[np.ndarray]) -> tuple[list, list, float]:
    """Maps at each image's size, scores, and seconds per image (preprocessing, ONE forward per image, merging)."""
    maps, scores = [], []
    top_k = model.config.image_score_top_k
    started = time.perf_counter()
    for image in images:
        inputs = processor(images=image)
        with torch.inference_mode():
            outputs = model(inputs["pixel_values"])
        (anomaly_map,), score = processor.post_process_anomaly_detection(
            outputs, [image.shape[:2]], inputs.get("image_layouts"), top_k
        )
        maps.append(anomaly_map.float().numpy()), scores.append(float(score[0]))
    return maps, scores, (time.perf_counter() - started) / len(images)


def metrics_of(maps: list, masks: list, scores: list, labels: list) -> dict[str, float]:
    result = compute_anomaly_metrics(np.stack(maps), np.stack(masks), np.asarray(scores), np.asarray(labels))
    return {key: float(result[key]) for key in ("pixel_auroc", "aupro", "image_auroc")}


def processors(args: argparse.Namespace, model_dir: Path) -> dict[str, CLIPADAImageProcessor]:
    """squash (the checkpoint's), letterbox and one tile mode per `--tile_sizes`."""
    size = CLIPADAImageProcessor.from_pretrained(model_dir).size.height
    modes = {
        "squash": CLIPADAImageProcessor(size=size),
        "letterbox": CLIPADAImageProcessor(size=size, resize_mode="letterbox"),
    }
    for tile in args.tile_sizes:
        modes[f"tiles {tile}"] = CLIPADAImageProcessor(size=size, tile_size=tile, tile_overlap=args.tile_overlap)
    return modes


def measure_generated(args, model, modes: dict) -> list[dict]:
    sets = generated_set(args)
    width, height = args.image_size
    rows = []
    for mode, processor in modes.items():
        layouts = processor(images=np.zeros((height, width, 3), np.uint8)).get("image_layouts")
        outputs = {
            name: score_images(model, processor, [image for image, _, _ in items]) for name, items in sets.items()
        }
        seconds = np.mean([outputs[name][2] for name in sets])
        for fraction in args.defect_fractions:
            items = sets["normal"] + sets[str(fraction)]
            maps = outputs["normal"][0] + outputs[str(fraction)][0]
            scores = outputs["normal"][1] + outputs[str(fraction)][1]
            measured = metrics_of(maps, [mask for _, mask, _ in items], scores, [label for _, _, label in items])
            rows.append(
                {
                    "mode": mode,
                    "defect_fraction": fraction,
                    "tiles": layouts[0].num_inputs if layouts else 1,
                    "ms_per_image": seconds * 1e3,
                    **measured,
                }
            )
        print(f"[generated] {mode}: {seconds * 1e3:.0f} ms/image", flush=True)
    return rows


def measure_real(args, model, modes: dict) -> list[dict]:
    """Per real category: up to `--max_real_images` test images, anomalous and normal alternating."""
    rows = []
    for folder, (name, layout) in REAL_SOURCES.items():
        root = Path(args.realdata) / folder
        if not root.is_dir():
            print(f"[real] {root} absent: skipped")
            continue
        test = load_anomaly_dataset(str(root), dataset=layout, allow_missing_files=True)["test"]
        for category in sorted(set(test["category"])):
            indices = [i for i, value in enumerate(test["category"]) if value == category]
            labels = np.asarray(test["label"])[indices]
            chosen = _alternate(
                np.asarray(indices)[labels == 1], np.asarray(indices)[labels == 0], args.max_real_images
            )
            examples = [test[int(i)] for i in chosen]
            images = [np.asarray(example["image"].convert("RGB")) for example in examples]
            masks = [_mask(example["mask"], image.shape[:2]) for example, image in zip(examples, images)]
            for mode, processor in modes.items():
                maps, scores, seconds = score_images(model, processor, images)
                measured = metrics_of(maps, masks, scores, [example["label"] for example in examples])
                rows.append(
                    {
                        "source": name,
                        "category": category,
                        "images": len(images),
                        "mode": mode,
                        "size": f"{images[0].shape[1]}x{images[0].shape[0]}",
                        "ms_per_image": seconds * 1e3,
                        **measured,
                    }
                )
            print(f"[real] {name}/{category}: {len(images)} images", flush=True)
    return rows


def _mask(mask: Image.Image | None, size: tuple[int, int]) -> np.ndarray:
    """A PIL mask (any value > 0 anomalous; None: normal) -> uint8 {0, 1} `(H, W)`."""
    return np.zeros(size, np.uint8) if mask is None else (np.asarray(mask) > 0).astype(np.uint8)


def _alternate(anomalous: np.ndarray, normal: np.ndarray, count: int) -> list[int]:
    order = [value for pair in zip(anomalous, normal) for value in pair]
    order += list(anomalous[len(normal) :]) + list(normal[len(anomalous) :])
    return order[:count]


def measure_cost(args, models: dict[str, tuple]) -> list[dict]:
    """ms per forward of n tiles, per model; ratio = (ms / n) / (ms of n = 1)."""
    rows = []
    for name, (model, size, counts) in models.items():
        generator = torch.Generator().manual_seed(0)
        batches = {n: torch.randn(n, 3, size, size, generator=generator) for n in counts}

        calls = {n: (lambda m=model, p=batches[n]: _forward(m, p)) for n in counts}
        samples = time_in_rounds(calls, rounds=3, min_run_time=0.3)
        single = float(np.median(samples[1]))
        for n in counts:
            seconds = float(np.median(samples[n]))
            per_tile = {"ms_per_tile": seconds * 1e3 / n, "per_tile_vs_single": seconds / n / single}
            rows.append({"model": name, "input": size, "tiles": n, "ms": seconds * 1e3, **per_tile})
        print(f"[cost] {name}: {single * 1e3:.1f} ms for one input", flush=True)
    return rows


def _forward(model, pixel_values: torch.Tensor):
    with torch.inference_mode():
        return model(pixel_values)


def cost_models(args, smoke_model) -> dict[str, tuple]:
    """`{name: (model, input size, tile counts)}`: the smoke model and, unless skipped, a ViT-B/16-shaped one."""
    size = smoke_model.config.vision_config.image_size
    models = {"smoke (96 px)": (smoke_model, size, sorted({1, *args.tile_counts}))}
    if not args.skip_vit_b:
        from benchmarks.benchmark import clipada_config

        torch.manual_seed(args.seed)
        vit_b = CLIPADAForAnomalySegmentation(clipada_config(1, 224)).eval()
        models["ViT-B/16 CLIP-ADA R=1 (224 px, random)"] = (vit_b, 224, [1, 2, 4, 8])
    return models


def markdown(results: dict) -> str:
    """The tables of `results` (what `main` writes to tiling.md)."""
    env, settings = results["environment"], results["settings"]
    lines = [
        "# Tiled and letterboxed inference: squash vs letterbox vs tiles",
        "",
        f"Machine: {env['cpu']} ({env['cpu_count']} cores, shared), {env['torch_threads']} torch thread(s), "
        f"torch {env['torch']}, transformers {env['transformers']}, {env['date']}.",
        "",
        f"SMOKE MODEL: a random-weight CLIP (96 px input) whose CLIP-ADA head trained {settings['train_steps']} steps "
        "on the demo data. The numbers show the pipeline and how the modes behave with one model, not accuracy.",
        f"Tiles overlap {settings['tile_overlap']:.0%}; 'tiles N' cuts tiles of N image pixels, each resized to the "
        "96 px input. Every map is compared with its mask at the image's own resolution.",
        "",
    ]
    modes = list(dict.fromkeys(row["mode"] for row in results["generated"]))
    width, height = settings["image_size"]
    lines += [
        f"## Generated weaves, {width} x {height}, one stain of the given area "
        f"({settings['num_images']} normal + {settings['num_images']} anomalous images per row)",
        "",
        "P-AUROC / AUPRO per defect size:",
        "",
        "| defect area | " + " | ".join(modes) + " |",
        "|---|" + "---|" * len(modes),
    ]
    for fraction in settings["defect_fractions"]:
        cells = [_cell(results["generated"], mode=mode, defect_fraction=fraction) for mode in modes]
        lines.append(f"| {fraction:.1%} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "I-AUROC per defect size:",
        "",
        "| defect area | " + " | ".join(modes) + " |",
        "|---|" + "---|" * len(modes),
    ]
    for fraction in settings["defect_fractions"]:
        rows = [_row(results["generated"], mode=mode, defect_fraction=fraction) for mode in modes]
        lines.append(f"| {fraction:.1%} | " + " | ".join(f"{row['image_auroc']:.3f}" for row in rows) + " |")
    first = {
        mode: _row(results["generated"], mode=mode, defect_fraction=settings["defect_fractions"][0]) for mode in modes
    }
    lines += ["", "| mode | inputs per image | ms per image (preprocess + forward + merge) |", "|---|---|---|"]
    lines += [f"| {mode} | {row['tiles']} | {row['ms_per_image']:.0f} |" for mode, row in first.items()]
    if results["real"]:
        title = "## Real sample files (MVTec-AD, VisA), a few test images per category"
        header = ["| category | size | images | " + " | ".join(modes) + " |", "|---|---|---|" + "---|" * len(modes)]
        lines += ["", title, "", "P-AUROC / AUPRO / I-AUROC:", "", *header]
        for key in dict.fromkeys((row["source"], row["category"]) for row in results["real"]):
            rows = [_row(results["real"], source=key[0], category=key[1], mode=mode) for mode in modes]
            cells = [f"{r['pixel_auroc']:.3f} / {r['aupro']:.3f} / {r['image_auroc']:.3f}" for r in rows]
            lines.append(f"| {key[0]}/{key[1]} | {rows[0]['size']} | {rows[0]['images']} | " + " | ".join(cells) + " |")
    header = "| model | tiles n | ms per forward | ms per tile | per tile / single forward |"
    lines += ["", "## Cost per tile: one batched forward of n tiles", "", header, "|---|---|---|---|---|"]
    for row in results["cost"]:
        lines.append(
            f"| {row['model']} | {row['tiles']} | {row['ms']:.1f} | {row['ms_per_tile']:.2f} | "
            f"{row['per_tile_vs_single']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _row(rows: list[dict], **match) -> dict:
    return next(row for row in rows if all(row[key] == value for key, value in match.items()))


def _cell(rows: list[dict], **match) -> str:
    row = _row(rows, **match)
    return f"{row['pixel_auroc']:.3f} / {row['aupro']:.3f}"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_tiling_") as workdir:
        started = time.perf_counter()
        model_dir = train_smoke_model(Path(workdir), args.train_steps, args.seed)
        print(f"[model] smoke model trained in {time.perf_counter() - started:.0f} s", flush=True)
        model = CLIPADAForAnomalySegmentation.from_pretrained(model_dir).eval()
        modes = processors(args, model_dir)
        results = {
            "environment": environment(torch.device("cpu")),
            "settings": {key: value for key, value in vars(args).items() if key != "output_dir"},
            "generated": measure_generated(args, model, modes),
            "real": measure_real(args, model, modes),
            "cost": measure_cost(args, cost_models(args, model)),
        }
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "tiling.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / "tiling.md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()


__all__ = ["add_stain", "main", "markdown", "weave_image"]
