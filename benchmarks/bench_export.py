"""Speed of the exported runners (ONNX Runtime, OpenVINO) against PyTorch, as ratios to the bare vision tower.

For a ViT-B/16-shaped CLIP-ADA with random weights at 224 px (`--tiny`: the project's tiny CLIP), R = 0, 1, 2 and
batch 1 and 8: images/s of PyTorch fp32 and bf16, ONNX Runtime fp32, OpenVINO fp32 and bf16 (its
`INFERENCE_PRECISION_HINT`, where the CPU has bf16), each as a ratio to the ideal `(1 + R) * (l / L) * t_bare` of
`benchmark.py` (the bare `CLIPVisionModel` in the same precision, timed in the same interleaved rounds); the file
sizes (OpenVINO also with FP16 weights) and the cold start of each runner (load + first image, in this process,
libraries already imported). Every model goes through the real `inference.deploy.export.export`.

`--int8`: every family (CLIP-ADA R = 1, AnomalyCLIP, AdaCLIP; ViT-B/16-shaped, random weights, 224 px, CLIP's BPE
tokenizer from ../shared/clip-bpe when present), its OpenVINO export quantised by NNCF on the demo data's normal
training images (`inference.deploy.int8`), the INT8 gate's figures on the demo test split and on the real MVTec-AD
sample files (../shared/realdata/mvtec/bottle, when present), and images/s at batch 1 of PyTorch fp32/bf16 and
OpenVINO fp32/bf16/INT8, timed in interleaved rounds.

Example:
    ```bash
    python benchmarks/bench_export.py --threads 1          # -> benchmarks/results/export.{json,md}
    python benchmarks/bench_export.py --int8 --threads 1   # -> benchmarks/results/export-int8.{json,md}
    python benchmarks/bench_export.py --tiny --output_dir /tmp/bench
    ```
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark import bare_tower, clipada_config
from measure import environment, time_in_rounds
from report import spread

from inference.deploy.export import export
from inference.deploy.runners import ExportedCLIPADA
from modeling_clipada import CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor

# runner -> (precision of its bare-tower reference, how it is built)
RUNNERS = {
    "pytorch-fp32": "float32",
    "pytorch-bf16": "bfloat16",
    "onnxruntime-fp32": "float32",
    "openvino-fp32": "float32",
    "openvino-bf16": "bfloat16",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="threads of torch, ONNX Runtime and OpenVINO")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--refinements", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds: samples per runner")
    parser.add_argument("--min_run_time", type=float, default=0.25, help="seconds per sample (blocked_autorange)")
    parser.add_argument("--tiny", action="store_true", help="the tiny CLIP (32 px), for tests")
    parser.add_argument("--output_dir", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--name", default=None, help="results file stem (default export, export-tiny)")
    parser.add_argument("--int8", action="store_true", help="INT8 (NNCF) of every family: gate figures and speed")
    args = parser.parse_args(argv)
    args.image_size = 32 if args.tiny else 224
    args.name = args.name or ("export" + ("-int8" if args.int8 else "") + ("-tiny" if args.tiny else ""))
    return args


def bf16_supported() -> bool:
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def write_checkpoint(folder: Path, num_refinements: int, image_size: int, tiny: bool) -> Path:
    """A random-weight CLIP-ADA checkpoint with thresholds (so the graphs hold the decisions) and its processor."""
    torch.manual_seed(0)
    config = clipada_config(num_refinements, image_size, tiny)
    config.image_threshold, config.pixel_threshold = 0.5, 0.5
    CLIPADAForAnomalySegmentation(config).save_pretrained(folder)
    CLIPADAImageProcessor(size=image_size).save_pretrained(folder)
    return folder


def load_runner(name: str, checkpoint: Path, exports: dict, threads: int):
    """The runner `name` as a callable on numpy pixels."""
    if name.startswith("pytorch"):
        dtype = torch.bfloat16 if name.endswith("bf16") else torch.float32
        model = CLIPADAForAnomalySegmentation.from_pretrained(checkpoint, dtype=dtype).eval()

        def call(pixel_values):
            with torch.no_grad():
                return model(torch.from_numpy(pixel_values).to(dtype))

        return call
    folder = exports["onnx" if name.startswith("onnxruntime") else "openvino"]
    return ExportedCLIPADA(folder, num_threads=threads, precision="bf16" if name.endswith("bf16") else "f32")


def cold_start(name: str, checkpoint: Path, exports: dict, threads: int, pixel_values) -> float:
    """Seconds to load the runner and score its first image."""
    started = time.perf_counter()
    runner = load_runner(name, checkpoint, exports, threads)
    runner(pixel_values[:1])
    return time.perf_counter() - started


def measure(args: argparse.Namespace, workdir: Path, runners: list[str]) -> tuple[list[dict], list[dict]]:
    """Timing records and file-size/cold-start records of every R."""
    timings, files = [], []
    generator = torch.Generator().manual_seed(0)
    for r in args.refinements:
        checkpoint = write_checkpoint(workdir / f"r{r}", r, args.image_size, args.tiny)
        exports = {"onnx": workdir / f"r{r}-onnx", "openvino": workdir / f"r{r}-openvino"}
        for export_format, folder in exports.items():
            metadata = export(str(checkpoint), folder, export_format)
            files.append({"R": r, "format": export_format, "weights": "float32", "mib": metadata["file_mib"],
                          "parity": metadata["parity"]})  # fmt: skip
        metadata = export(str(checkpoint), workdir / f"r{r}-openvino-fp16", "openvino", fp16=True)
        files.append({"R": r, "format": "openvino", "weights": "float16", "mib": metadata["file_mib"],
                      "parity": metadata["parity"]})  # fmt: skip
        pixels = torch.randn(max(args.batch_sizes), 3, args.image_size, args.image_size, generator=generator).numpy()
        for name in runners:
            files.append({"R": r, "runner": name, "cold_start_s": round(cold_start(name, checkpoint, exports,
                          args.threads, pixels), 3)})  # fmt: skip
        loaded = {name: load_runner(name, checkpoint, exports, args.threads) for name in runners}
        config = CLIPADAForAnomalySegmentation.config_class.from_pretrained(checkpoint)
        bare = {precision: bare_tower(config).to(getattr(torch, precision)) for precision in set(RUNNERS.values())}
        for batch_size in args.batch_sizes:
            batch = pixels[:batch_size]
            calls = {name: (lambda runner=runner, batch=batch: runner(batch)) for name, runner in loaded.items()}
            for precision, tower in bare.items():
                inputs = torch.from_numpy(batch).to(tower.dtype)
                calls[f"bare-{precision}"] = lambda tower=tower, inputs=inputs: _no_grad(tower, inputs)
            samples = time_in_rounds(calls, args.repeats, args.min_run_time)
            scale = (1 + r) * config.feature_layer / config.vision_config.num_hidden_layers
            for name in runners:
                reference = samples[f"bare-{RUNNERS[name]}"]
                timings.append({
                    "R": r, "batch_size": batch_size, "runner": name,
                    "samples_ms": [round(s * 1e3, 3) for s in samples[name]],
                    "bare_ms": [round(s * 1e3, 3) for s in reference],
                    "images_per_s": round(batch_size / sorted(samples[name])[len(samples[name]) // 2], 2),
                    "ratio": spread([t / (scale * b) for t, b in zip(samples[name], reference)]),
                })  # fmt: skip
                print(f"R {r} batch {batch_size} {name}: {timings[-1]['images_per_s']} img/s, ratio "
                      f"{timings[-1]['ratio']['median']}", flush=True)  # fmt: skip
    return timings, files


def _no_grad(tower, inputs):
    with torch.no_grad():
        return tower(pixel_values=inputs)


def to_markdown(results: dict) -> str:
    """The speed table, the goal, file sizes and cold starts."""
    env, timings = results["environment"], results["timings"]
    runners = list(dict.fromkeys(t["runner"] for t in timings))
    lines = [
        f"# Exported runners: {env['cpu']}, {results['settings']['threads']} thread(s), {env['date'][:10]}",
        "",
        "images/s (ratio to the bare-tower ideal `(1 + R) * (l / L) * t_bare` in the same precision; median of "
        f"{results['settings']['repeats']} interleaved rounds)",
        "",
        "| runner | " + " | ".join(f"R={r}, batch {b}" for r, b in results["columns"]) + " |",
        "|---|" + "---|" * len(results["columns"]),
    ]
    for runner in runners:
        cells = []
        for r, b in results["columns"]:
            t = next(t for t in timings if (t["runner"], t["R"], t["batch_size"]) == (runner, r, b))
            cells.append(f"{t['images_per_s']:.2f} ({t['ratio']['median']:.2f})")
        lines.append(f"| {runner} | " + " | ".join(cells) + " |")
    goal = results["goal"]
    lines += ["", f"Goal (best exported runner at batch 1 >= PyTorch bf16 at batch 1, every R): "
              f"{'met' if goal['met'] else 'not met'}: " + "; ".join(
                  f"R={g['R']}: {g['best']} {g['best_images_per_s']} vs {g['pytorch_bf16_images_per_s']} img/s"
                  for g in goal["per_R"]), ""]  # fmt: skip
    lines += [
        "| R | file | weights | MiB | anomaly_map max abs diff | pred_score max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    for f in (f for f in results["files"] if "format" in f):
        p = f["parity"]
        lines.append(f"| {f['R']} | {f['format']} | {f['weights']} | {f['mib']} | "
                     f"{p['anomaly_map_max_abs_diff']:.1e} | {p['pred_score_max_abs_diff']:.1e} |")  # fmt: skip
    lines += ["", "| R | runner | cold start (load + first image), s |", "|---|---|---|"]
    lines += [f"| {f['R']} | {f['runner']} | {f['cold_start_s']} |" for f in results["files"] if "runner" in f]
    return "\n".join(lines) + "\n"


def goal(timings: list[dict]) -> dict:
    """Whether the fastest exported runner at batch 1 is at least as fast as PyTorch bf16, per R."""
    per_r = []
    for r in sorted({t["R"] for t in timings if t["batch_size"] == 1}):
        rows = [t for t in timings if t["R"] == r and t["batch_size"] == 1]
        exported = max((t for t in rows if not t["runner"].startswith("pytorch")), key=lambda t: t["images_per_s"])
        bf16 = next(t for t in rows if t["runner"] == "pytorch-bf16")
        per_r.append({"R": r, "best": exported["runner"], "best_images_per_s": exported["images_per_s"],
                      "pytorch_bf16_images_per_s": bf16["images_per_s"],
                      "met": exported["images_per_s"] >= bf16["images_per_s"]})  # fmt: skip
    return {"met": all(g["met"] for g in per_r), "per_R": per_r}


def main(argv: list[str] | None = None) -> dict:
    import json

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.int8:
        from bench_int8 import run_int8

        return run_int8(args)
    started = time.perf_counter()
    runners = [name for name in RUNNERS if name != "openvino-bf16" or bf16_supported()]
    with tempfile.TemporaryDirectory(prefix="clipada-bench-export-") as workdir:
        timings, files = measure(args, Path(workdir), runners)
    results = {
        "environment": environment(torch.device("cpu")),
        "settings": vars(args),
        "columns": [(r, b) for r in args.refinements for b in args.batch_sizes],
        "timings": timings,
        "files": files,
        "goal": goal(timings) if 1 in args.batch_sizes else None,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    import onnxruntime
    import openvino

    results["environment"].update(onnxruntime=onnxruntime.__version__, openvino=openvino.__version__)
    path = Path(args.output_dir) / args.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    path.with_suffix(".md").write_text(to_markdown(results))
    print(to_markdown(results))
    return results


if __name__ == "__main__":
    main()
