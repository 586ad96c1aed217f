"""What random subsampling of the few-shot reference memory costs in accuracy (`fit_reference(max_patches=...)`).

On the demo data (two categories, 96 px, `training.demo_data`) with the smoke CLIP (random weights): a CLIP-ADA head
straight from `from_clip` (no training) fits its memory on k normal training images per category, first whole, then
subsampled to a fraction of its patches (seeded), and is evaluated by `training.evaluation.evaluate_model` with the
memory's map alone (`reference_fusion="memory"`: the untrained head's own map would hide the memory's effect) and
fused with it (`"mean"`, the default). The figures show what subsampling removes from the memory's map on data whose
defects the random features still see (colour and texture changes), not the accuracy of a trained model on a
benchmark: no real CLIP can be downloaded here.

Example:
    ```bash
    python benchmarks/bench_memory_subsample.py --shots 4 --fractions 1 0.5 0.25 0.1 --seeds 0 1 2 \
        --output benchmarks/results/memory_subsample.json
    ```
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modeling_clipada import CLIPADAForAnomalySegmentation  # noqa: E402
from processing import CLIPADAImageProcessor  # noqa: E402
from training.data import load_anomaly_dataset  # noqa: E402
from training.demo_data import make_demo_dataset  # noqa: E402
from training.evaluation import evaluate_model  # noqa: E402
from training.fit_reference import select_shots  # noqa: E402
from training.smoke_clip import build_smoke_clip  # noqa: E402

METRICS = ("image_auroc", "pixel_auroc", "aupro")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=4, help="Normal training images per category in the memory.")
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Seeds of the shots and subsets.")
    parser.add_argument("--fusions", nargs="+", default=["memory", "mean"], choices=["memory", "mean"])
    parser.add_argument("--output", default=None, help="Write the records here (.json) and a table beside (.md).")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, work: Path) -> list[dict]:
    """One record per (fusion, fraction, seed): the memory's patch count and the mean metrics over categories."""
    dataset = load_anomaly_dataset(str(make_demo_dataset(work / "demo")))
    clip_folder = build_smoke_clip(work / "clip")
    model = CLIPADAForAnomalySegmentation.from_clip(str(clip_folder)).eval()
    processor = CLIPADAImageProcessor(size=model.config.vision_config.image_size)
    train = dataset["train"]
    records = []
    for seed in args.seeds:
        rows = select_shots(train, args.shots, seed)
        indices = [index for category_rows in rows.values() for index in category_rows]
        images = [train[index]["image"] for index in indices]
        categories = [train[index]["category"] for index in indices]
        full = model.fit_reference(images, categories, image_processor=processor)
        for fraction in args.fractions:
            max_patches = None if fraction >= 1 else max(1, round(fraction * min(full.values())))
            sizes = model.fit_reference(
                images, categories, image_processor=processor, max_patches=max_patches, seed=seed
            )
            for fusion in args.fusions:
                model.config.reference_fusion = fusion
                with torch.no_grad():
                    _, mean = evaluate_model(model, processor, dataset["test"], batch_size=8, num_heatmaps=0)
                records.append(
                    {"fusion": fusion, "fraction": fraction, "seed": seed, "patches": sizes,
                     **{name: mean.get(name) for name in METRICS}}
                )  # fmt: skip
                print(json.dumps(records[-1]), flush=True)
    return records


def format_table(records: list[dict], shots: int) -> str:
    """Mean ± std over the seeds, in percent, per fusion and fraction."""
    lines = [
        f"k = {shots} shots per category; mean ± std over {len({r['seed'] for r in records})} seeds, in percent",
        "",
        "| fusion | fraction of patches kept | patches per category | " + " | ".join(METRICS) + " |",
        "|:---|---:|---:|" + "---:|" * len(METRICS),
    ]
    for fusion in dict.fromkeys(r["fusion"] for r in records):
        for fraction in dict.fromkeys(r["fraction"] for r in records):
            group = [r for r in records if r["fusion"] == fusion and r["fraction"] == fraction]
            patches = sorted({size for r in group for size in r["patches"].values()})
            cells = []
            for name in METRICS:
                values = [100 * r[name] for r in group if r[name] is not None]
                spread = statistics.pstdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}" if values else "-")
            shown = "-".join(map(str, (patches[0], patches[-1]))) if len(patches) > 1 else str(patches[0])
            lines.append(f"| {fusion} | {fraction:g} | {shown} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        records = run(args, Path(work))
    table = format_table(records, args.shots)
    print(table)
    if args.output:
        output = Path(args.output)
        output.write_text(json.dumps({"shots": args.shots, "records": records}, indent=2) + "\n")
        title = (
            "# Random subsampling of the reference memory: demo data, smoke CLIP (random weights), CLIP-ADA head\n\n"
        )
        output.with_suffix(".md").write_text(title + table)
    return records


if __name__ == "__main__":
    main()
