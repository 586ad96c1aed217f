"""Cost of the few-shot reference memory: search time per image and memory size per category against k (shots).

Two parts:
1. the search alone (`reference_memory.memory_patch_map`, exact, chunked matrix products) at each family's published
   shapes: CLIP-ADA ViT-B/16 at 224 px (1 layer, 196 patches, 512 wide), AnomalyCLIP / AdaCLIP ViT-L/14-336 at 518
   px (4 layers, 1369 patches, 768 wide); random L2-normalised features (the cost does not depend on the values);
2. a whole CLIP-ADA forward (ViT-B/16-shaped random weights, 224 px, R = 1) per image with k = 0 (no memory) and
   with memories of k images, to put the search next to what the model costs anyway.

Timing: `measure.time_in_rounds` (interleaved rounds, the median reported). Memory size: float32 bytes of one
category's buffer, `layers x k x patches x width x 4`.

Example:
    ```bash
    python benchmarks/bench_reference_memory.py --shots 1 2 4 8 16 32 --output benchmarks/results/reference_memory.json
    python benchmarks/bench_reference_memory.py --quick   # tiny shapes, seconds (what the tests run)
    ```
"""

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import MIB, environment, time_in_rounds  # noqa: E402

from modeling_clipada import CLIPADAConfig, CLIPADAForAnomalySegmentation  # noqa: E402
from modeling_clipada.reference_memory import ReferenceMemory, memory_patch_map  # noqa: E402

# (layers, grid side, width) at each family's published setting
SHAPES = {
    "clipada ViT-B/16 224px": (1, 14, 512),
    "anomalyclip/adaclip ViT-L/14-336 518px": (4, 37, 768),
}
QUICK_SHAPES = {"tiny": (2, 8, 32)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--forward_shots", type=int, nargs="+", default=[0, 1, 4, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min_run_time", type=float, default=0.3)
    parser.add_argument("--quick", action="store_true", help="Tiny shapes and one round (a smoke run).")
    parser.add_argument("--output", default=None, help="Write the records here (.json) and a table beside (.md).")
    return parser.parse_args(argv)


def memory_mib(layers: int, shots: int, patches: int, width: int) -> float:
    """MiB of one category's memory in float32."""
    return layers * shots * patches * width * 4 / MIB


def search_records(shapes: dict, shots: list[int], rounds: int, min_run_time: float) -> list[dict]:
    """Seconds per image of the memory search for every shape and k."""
    generator = torch.Generator().manual_seed(0)
    records = []
    for name, (layers, side, width) in shapes.items():
        patches = side * side
        queries = [F.normalize(torch.randn(1, patches, width, generator=generator), dim=-1) for _ in range(layers)]
        calls = {}
        for k in shots:
            memory = ReferenceMemory(None, layers, width)
            memory.replace({"c": F.normalize(torch.randn(layers, k * patches, width, generator=generator), dim=-1)})
            calls[k] = lambda memory=memory, queries=queries, grid=(side, side): memory_patch_map(
                memory, queries, ["c"], grid
            )
        samples = time_in_rounds({str(k): call for k, call in calls.items()}, rounds, min_run_time)
        for k in shots:
            records.append(
                {
                    "part": "search",
                    "shape": name,
                    "shots": k,
                    "memory_patches": k * patches,
                    "memory_mib_per_category": memory_mib(layers, k, patches, width),
                    "ms_per_image": 1000 * statistics.median(samples[str(k)]),
                }
            )
    return records


def forward_records(shots: list[int], rounds: int, min_run_time: float, quick: bool) -> list[dict]:
    """Milliseconds per image of a whole CLIP-ADA forward without (k = 0) and with a memory of k images."""
    size = 32 if quick else 224
    vision = {"image_size": size, "patch_size": 4 if quick else 16}
    if quick:
        vision |= {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
        text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    else:
        text = {}
    config = CLIPADAConfig(
        vision_config=vision,
        text_config=text,
        projection_dim=32 if quick else 512,
        num_refinements=1,
        prompt_token_ids=[49406, 320, 1125, 49407],
        prompt_insert_position=1,
    )
    torch.manual_seed(0)
    model = CLIPADAForAnomalySegmentation(config).eval()
    image = torch.randn(1, 3, size, size)
    calls = {}
    for k in shots:
        fitted = copy.deepcopy(model)  # its own config: fitting records the memory's size there
        if k:
            fitted.fit_reference(torch.randn(k, 3, size, size), ["c"] * k)

        def call(fitted=fitted):
            with torch.no_grad():
                return fitted(image, categories=["c"])

        calls[str(k)] = call
    samples = time_in_rounds(calls, rounds, min_run_time)
    return [
        {
            "part": "forward",
            "shape": f"clipada {'tiny' if quick else 'ViT-B/16'} {size}px R=1",
            "shots": k,
            "ms_per_image": 1000 * statistics.median(samples[str(k)]),
        }
        for k in shots
    ]


def format_table(records: list[dict]) -> str:
    """Markdown tables: the search per shape and k, then the forward per k."""
    lines = ["| shape | k | memory patches | MiB / category | search ms / image |", "|:---|---:|---:|---:|---:|"]
    for r in (r for r in records if r["part"] == "search"):
        lines.append(
            f"| {r['shape']} | {r['shots']} | {r['memory_patches']} | {r['memory_mib_per_category']:.2f} "
            f"| {r['ms_per_image']:.2f} |"
        )
    lines += ["", "| model | k | forward ms / image |", "|:---|---:|---:|"]
    lines += [f"| {r['shape']} | {r['shots']} | {r['ms_per_image']:.1f} |" for r in records if r["part"] == "forward"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    min_run_time = 0.01 if args.quick else args.min_run_time
    shapes = QUICK_SHAPES if args.quick else SHAPES
    records = search_records(shapes, args.shots, rounds, min_run_time)
    records += forward_records(args.forward_shots, rounds, min_run_time, args.quick)
    result = {"environment": environment(torch.device("cpu")), "records": records}
    table = format_table(records)
    if args.output:
        output = Path(args.output)
        output.write_text(json.dumps(result, indent=2) + "\n")
        output.with_suffix(".md").write_text(table)
    print(table)
    return result


if __name__ == "__main__":
    main()
