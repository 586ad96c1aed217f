"""INT8 (NNCF) OpenVINO exports of every family: the gate's figures and images/s against fp32 and bf16.

Run through `bench_export.py --int8`. Each family is built around a random CLIP of ViT-B/16's shape at 224 px (the
tiny CLIP with `--tiny`), its thresholds set between the PyTorch scores of the demo test split (so the gate compares
real decisions), exported to OpenVINO by the real `inference.deploy.export.export`, quantised on the demo data's
normal training images, and gated (`inference.deploy.int8`: decisions and pixel AUROC / AUPRO against the float32
file) on the demo test split and, when ../shared/realdata is present, on the MVTec-AD `bottle` and VisA sample
files (their own normal training images calibrate). Random weights make anomaly maps without meaning: the figures
say how far INT8 moves the outputs, not what a trained model would score.
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from measure import environment, time_in_rounds
from report import spread
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from inference.backends import ExportedBackend
from inference.deploy.export import export
from inference.deploy.int8 import calibration_feeds, gate_figures, gate_misses, quantize_openvino
from inference.families import FAMILIES
from inference.scoring import score_images
from inference.torch_backend import TorchBackend
from processing import CLIPADAImageProcessor
from training.demo_data import make_demo_dataset
from training.int8_gate import build_int8_request
from training.smoke_clip import TINY_CLIP_SIZES, smoke_clip_config

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"
# the real sample files the gate also runs on, where present: MVTec-AD's bottle, VisA's capsules and macaroni1
REAL_DATASETS = {"mvtec-bottle": REALDATA / "mvtec" / "bottle", "visa": REALDATA / "visa"}
CLIP_BPE = ROOT.parent / "shared" / "clip-bpe" / "bpe_simple_vocab_16e6.txt.gz"
HEADS = {
    "clipada": {"num_refinements": 1},
    "anomalyclip": {},
    # 30 k-means rounds, not 300: the graph unrolls every round (see docs/deploy.md); the eager model uses the same
    "adaclip": {"class_names": ["disc", "weave", "bottle", "capsules", "macaroni1"], "hsf_max_iterations": 30},
}
# the tiny CLIP (2 text layers, 4 vision layers) needs shallower prompts
TINY_HEADS = {
    "clipada": {},
    "anomalyclip": {"deep_prompt_depth": 2},
    "adaclip": {"prompt_length": 2, "prompt_depth": 2, "hsf_num_clusters": 4, "hsf_num_patches": 20},
}
RUNNERS = ("pytorch-fp32", "pytorch-bf16", "openvino-fp32", "openvino-bf16", "openvino-int8")


def tokenizer(folder: Path, tiny: bool) -> CLIPTokenizer:
    """CLIP's BPE tokenizer when ../shared/clip-bpe has it (not for the tiny CLIP's 60-token vocabulary), else the
    project's character tokenizer."""
    if CLIP_BPE.is_file() and not tiny:
        from bench_families import clip_bpe_tokenizer

        return clip_bpe_tokenizer(CLIP_BPE, folder)
    from training.smoke_clip import write_character_tokenizer

    return write_character_tokenizer(folder)


def build_checkpoint(family: str, folder: Path, demo: Path, tiny: bool, image_size: int) -> Path:
    """A random-weight model of `family`, thresholds between its PyTorch scores and map values on the demo test
    split, saved with its tokenizer and processor."""
    torch.manual_seed(0)
    if tiny:
        clip_config = smoke_clip_config(**{**TINY_CLIP_SIZES, "image_size": image_size})
    else:
        clip_config = CLIPConfig(vision_config={"patch_size": 16, "image_size": image_size}, projection_dim=512)
    words = tokenizer(folder / "tokenizer", tiny)
    head = {**HEADS[family], **(TINY_HEADS[family] if tiny else {})}
    model = FAMILIES[family].model_class.from_clip(CLIPModel(clip_config), words, **head).eval()
    processor = CLIPADAImageProcessor(size=image_size)
    request = build_int8_request(argparse.Namespace(calibration_data=str(demo), int8_test_data=None), processor)
    scored = score_images(TorchBackend(model, "cpu"), processor, request.test_images, request.test_categories)
    model.config.image_threshold = float(np.median(scored.scores))
    model.config.pixel_threshold = float(np.quantile(np.concatenate([m.ravel() for m in scored.anomaly_maps]), 0.9))
    model.save_pretrained(folder)
    words.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def gate(checkpoint: Path, fp32_folder: Path, data: Path, int8_folder: Path) -> dict:
    """Quantises the float32 export on `data`'s normal training images into `int8_folder` and gates it on `data`'s
    test split; the figures and the misses (empty: the gate passes)."""
    processor = CLIPADAImageProcessor.from_pretrained(checkpoint)
    request = build_int8_request(argparse.Namespace(calibration_data=str(data), int8_test_data=None), processor)
    fp32 = ExportedBackend(str(fp32_folder), "openvino")
    started = time.perf_counter()
    feeds = calibration_feeds(fp32, request.calibration_images, request.calibration_categories)
    int8_folder.mkdir(parents=True, exist_ok=True)
    quantize_openvino(fp32_folder / "model.xml", feeds, int8_folder / "model.xml", request.subset_size)
    quantize_s = time.perf_counter() - started
    int8 = ExportedBackend(str(fp32_folder), "openvino", graph_file=str(int8_folder / "model.xml"))
    figures = gate_figures(fp32, int8, request)
    return {
        **figures,
        "data": str(data),
        "calibration_inputs": len(feeds),
        "quantize_s": round(quantize_s, 1),
        "int8_mib": round(sum(p.stat().st_size for p in int8_folder.glob("model.*")) / 2**20, 2),
        "misses": gate_misses(figures, request),
    }


def runner_calls(family: str, checkpoint: Path, fp32_folder: Path, int8_folder: Path, threads: int, pixels, names):
    """Each runner as a callable on `(1, 3, H, W)` pixels (AdaCLIP: class `disc`)."""
    categories = ["disc"] if FAMILIES[family].needs_class_names else None
    calls = {}
    for name in RUNNERS:
        if name.startswith("pytorch"):
            dtype = "bfloat16" if name.endswith("bf16") else "float32"
            backend = TorchBackend.from_pretrained(str(checkpoint), device="cpu", dtype=dtype)
            calls[name] = lambda backend=backend: backend(pixels, categories)
            continue
        graph_file = str(int8_folder / "model.xml") if name.endswith("int8") else None
        precision = "bf16" if name.endswith("bf16") else "f32"
        runner = ExportedBackend(str(fp32_folder), "openvino", threads, precision, graph_file=graph_file)
        calls[name] = lambda runner=runner: runner(pixels, categories)
    return {name: call for name, call in calls.items() if name in names}


def bf16_supported() -> bool:
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def run_int8(args: argparse.Namespace) -> dict:
    """Builds, exports, quantises, gates and times every family; writes `<output_dir>/<name>.{json,md}`."""
    started = time.perf_counter()
    names = [name for name in RUNNERS if name != "openvino-bf16" or bf16_supported()]
    families = {}
    with tempfile.TemporaryDirectory(prefix="clipada-bench-int8-") as workdir:
        workdir = Path(workdir)
        demo = make_demo_dataset(workdir / "demo", num_train=8, num_test_good=4, num_test_defect=1)
        datasets = {"demo": demo, **{name: path for name, path in REAL_DATASETS.items() if path.is_dir()}}
        for family in FAMILIES:
            checkpoint = build_checkpoint(family, workdir / family, demo, args.tiny, args.image_size)
            fp32_folder = workdir / f"{family}-openvino"
            export_started = time.perf_counter()
            metadata = export(str(checkpoint), fp32_folder, "openvino")
            record = {"export_s": round(time.perf_counter() - export_started, 1), "fp32_mib": metadata["file_mib"],
                      "parity": metadata["parity"], "gates": {}}  # fmt: skip
            for data_name, data in datasets.items():
                record["gates"][data_name] = gate(checkpoint, fp32_folder, data, workdir / f"{family}-int8-{data_name}")
                print(f"{family} {data_name}: {json.dumps(record['gates'][data_name])}", flush=True)
            pixels = np.random.default_rng(0).standard_normal((1, 3, args.image_size, args.image_size), np.float32)
            calls = runner_calls(family, checkpoint, fp32_folder, workdir / f"{family}-int8-demo", args.threads,
                                 pixels, names)  # fmt: skip
            samples = time_in_rounds(calls, args.repeats, args.min_run_time)
            record["images_per_s"] = {
                name: round(1 / sorted(values)[len(values) // 2], 3) for name, values in samples.items()
            }
            record["samples_ms"] = {name: spread([v * 1e3 for v in values]) for name, values in samples.items()}
            print(f"{family}: {record['images_per_s']}", flush=True)
            families[family] = record
            shutil.rmtree(checkpoint, ignore_errors=True)
    import nncf
    import openvino

    results = {
        "environment": {**environment(torch.device("cpu")), "openvino": openvino.__version__, "nncf": nncf.__version__},
        "settings": vars(args),
        "runners": names,
        "families": families,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    path = Path(args.output_dir) / args.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    path.with_suffix(".md").write_text(to_markdown(results))
    print(to_markdown(results))
    return results


def to_markdown(results: dict) -> str:
    """The speed table and the gate table."""
    env, names = results["environment"], results["runners"]
    lines = [
        f"# INT8 OpenVINO exports: {env['cpu']}, {results['settings']['threads']} thread(s), {env['date'][:10]}",
        "",
        f"images/s at batch 1, {results['settings']['image_size']} px, random weights (median of "
        f"{results['settings']['repeats']} interleaved rounds)",
        "",
        "| family | " + " | ".join(names) + " | INT8 / OpenVINO fp32 |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for family, record in results["families"].items():
        speeds = record["images_per_s"]
        ratio = speeds["openvino-int8"] / speeds["openvino-fp32"]
        lines.append(f"| {family} | " + " | ".join(f"{speeds[n]:.2f}" for n in names) + f" | {ratio:.2f}x |")
    lines += [
        "",
        "| family | data | test images | decisions identical | pixel AUROC fp32 -> INT8 | AUPRO fp32 -> INT8 | "
        "map max diff | score max diff | MiB fp32 -> INT8 | gate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for family, record in results["families"].items():
        for data, g in record["gates"].items():
            verdict = "passes" if not g["misses"] else "refused: " + "; ".join(g["misses"])
            lines.append(
                f"| {family} | {data} | {g['test_images']} | {100 * g['decision_agreement']:.1f}% | "
                f"{100 * g['fp32']['pixel_auroc']:.2f} -> {100 * g['int8']['pixel_auroc']:.2f} | "
                f"{100 * g['fp32']['aupro']:.2f} -> {100 * g['int8']['aupro']:.2f} | "
                f"{g['anomaly_map_max_abs_diff']:.1e} | {g['pred_score_max_abs_diff']:.1e} | "
                f"{record['fp32_mib']} -> {g['int8_mib']} | {verdict} |"
            )
    return "\n".join(lines) + "\n"


__all__ = ["run_int8", "to_markdown"]
