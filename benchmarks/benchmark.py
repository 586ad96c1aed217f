"""Speed and memory of CLIP-ADA as ratios to its limit, the bare frozen CLIP vision tower, measured in the same run.

For a ViT-B/16-shaped CLIP with random weights (`--tiny`: the project's tiny CLIP), per image size and batch size:

- inference (eval, no grad) for each R against the ideal `(1 + R) * (l / L) * t_bare`, where `t_bare` is the bare
  `CLIPVisionModel` through all L layers and l is `feature_layer`;
- the real `training.loop.training_step` (synthesis, forward with labels, backward, AdamW and scheduler step)
  against the ideal `t_nograd(l) + R * t_fwdbwd(l)`: the bare tower cut to l layers, once without grad (the
  coarse pass) and R times with a backward to its input (the refined passes);
- the text tower's forward + backward (the prompt vectors train: every step runs it) as a share of a step, and
  the synthesis plus the loading of a batch (`training.loader.build_train_dataloader` over a demo dataset) as a
  share of one training iteration;
- the peak memory of one call of each.

The callables of one (image size, batch size) are timed in interleaved rounds (see `measure.time_in_rounds`) and
every ratio is taken round by round, then reported as the median [min-max] over the rounds.

Precisions: `float32`; `bfloat16`: inference with the model cast to bf16, training as `--mixed_precision bf16`
runs it (fp32 weights, the forward under autocast through `accelerator.prepare`); `bf16-frozen` (training only):
the frozen CLIP cast to bf16 once, the head in fp32, under autocast. The references run in the same precision.

Example:
    ```bash
    python benchmarks/benchmark.py --threads 2          # the full CPU grid -> benchmarks/results/cpu.{json,md}
    python benchmarks/benchmark.py --quick --threads 1  # 224 px, batch 1, R = 0 and 2, fp32 and bf16
    python benchmarks/benchmark.py --tiny --output_dir /tmp/bench   # the tiny CLIP through every code path
    python benchmarks/benchmark.py --from_json benchmarks/results/cpu-quick.json   # rebuild its tables only
    ```
"""

import argparse
import copy
import functools
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import torch
from accelerate import Accelerator
from transformers import CLIPVisionConfig, CLIPVisionModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure import environment, peak_memory, time_in_rounds, tune_glibc_malloc
from report import derive, rebuild, spread, to_markdown, write

from modeling_clipada import CLIPADAConfig, CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor
from training.data import load_anomaly_dataset
from training.demo_data import make_demo_dataset
from training.loader import build_train_dataloader
from training.loop import synthesis_generator, training_step
from training.preparation import build_scheduler
from training.smoke_clip import TINY_CLIP_SIZES, smoke_clip_config
from training.synthesis import SyntheticAnomalyGenerator

# "A photo of a [CLS] with defects for anomaly detection" in CLIP's tokenizer, and a template in the tiny one's.
PROMPT = {"prompt_token_ids": [49406, 320, 1125, 539, 320, 593, 37485, 556, 46811, 16220, 49407]}
PROMPT["prompt_insert_position"] = 5
TINY_PROMPT = {"prompt_token_ids": [57, 10, 11, 12, 13, 58], "prompt_insert_position": 3}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "bf16-frozen": torch.bfloat16}
PRESETS = {
    "quick": {"image_sizes": [224], "training_image_sizes": [224], "batch_sizes": [1], "refinements": [0, 2],
              "precisions": ["float32", "bfloat16"], "repeats": 3, "loading_image_sizes": [224],
              "loading_dataset_images": 16},
    "tiny": {"image_sizes": [32], "training_image_sizes": [32], "batch_sizes": [1, 2], "repeats": 2,
             "min_run_time": 0.0, "loading_image_sizes": [32, 64], "loading_dataset_images": 4},
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--name", default=None, help="results file stem (default: the device, -quick, -tiny)")
    parser.add_argument("--output_dir", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--image_sizes", type=int, nargs="+", default=[224], help="multiples of the patch size 16")
    parser.add_argument("--training_image_sizes", type=int, nargs="*", default=[224], help="of those, train at")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--refinements", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--precisions", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--loading_image_sizes", type=int, nargs="*", default=[224, 1024], help="PNG sides to load")
    parser.add_argument("--loading_dataset_images", type=int, default=32, help="training images per demo dataset")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 with --tiny)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each callable before the rounds")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds: samples per callable")
    parser.add_argument("--min_run_time", type=float, default=0.25, help="seconds per sample (blocked_autorange)")
    parser.add_argument("--malloc", choices=["tuned", "default"], default="tuned", help="see measure.tune_glibc_malloc")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="224 px, batch 1, R 0 and 2, fp32 and bf16, 3 rounds")
    parser.add_argument("--tiny", action="store_true", help="the tiny CLIP (32 px, patch 4), 2 rounds, for tests")
    parser.add_argument("--from_json", default=None, help="measure nothing: rebuild the tables of a results JSON")
    args = parser.parse_args(argv)
    for preset in ("quick", "tiny"):
        if getattr(args, preset):
            vars(args).update(PRESETS[preset])
    args.threads = args.threads or (1 if args.tiny else torch.get_num_threads())
    args.name = args.name or args.device + ("-tiny" if args.tiny else "-quick" if args.quick else "")
    patch_size = TINY_CLIP_SIZES["patch_size"] if args.tiny else 16
    if any(size % patch_size for size in args.image_sizes + args.training_image_sizes):
        parser.error(f"image sizes must be multiples of the patch size {patch_size}")
    return args


# ---------------------------------------------------------------------------------------------- models


def clipada_config(num_refinements: int, image_size: int, tiny: bool = False) -> CLIPADAConfig:
    """ViT-B/16-shaped CLIP-ADA (CLIP's default towers, patch 16, projection 512), or the tiny one."""
    if tiny:
        clip = smoke_clip_config(**{**TINY_CLIP_SIZES, "image_size": image_size}).to_dict()
        towers = {key: clip[key] for key in ("text_config", "vision_config", "projection_dim")}
        return CLIPADAConfig(**towers, **TINY_PROMPT, num_refinements=num_refinements)
    vision = {"patch_size": 16, "image_size": image_size}
    return CLIPADAConfig(vision_config=vision, projection_dim=512, **PROMPT, num_refinements=num_refinements)


def bare_tower(config: CLIPADAConfig, num_layers: int | None = None) -> CLIPVisionModel:
    """The reference: a frozen `CLIPVisionModel` of the same shape, all layers or the first `num_layers`."""
    layers = num_layers or config.vision_config.num_hidden_layers
    model = CLIPVisionModel(CLIPVisionConfig(**{**config.vision_config.to_dict(), "num_hidden_layers": layers}))
    return model.requires_grad_(False).eval()


def with_clip(model: CLIPADAForAnomalySegmentation, clip) -> CLIPADAForAnomalySegmentation:
    """A copy of `model`'s head around `clip`: every variant of one image size shares one frozen CLIP."""
    own, model.clip = model.clip, None
    head = copy.deepcopy(model)
    model.clip, head.clip = own, clip
    return head


def build_models(args: argparse.Namespace, image_size: int, accelerator: Accelerator, training: bool) -> dict:
    """References, inference models and training runs `(model, optimizer, scheduler)` of one image size."""
    device = accelerator.device
    torch.manual_seed(args.seed)
    heads = {r: CLIPADAForAnomalySegmentation(clipada_config(r, image_size, args.tiny)) for r in args.refinements}
    clip = heads[args.refinements[0]].clip.to(device)
    clips = {"float32": clip, "bfloat16": copy.deepcopy(clip).to(torch.bfloat16)}
    config = heads[args.refinements[0]].config
    models = {"config": config, "bare": {}, "inference": {}, "truncated": {}, "training": {}}
    for precision in [p for p in args.precisions if p != "bf16-frozen"]:
        models["bare"][precision] = bare_tower(config).to(device, DTYPES[precision])
        for r, head in heads.items():
            models["inference"][precision, r] = with_clip(head, clips[precision]).to(device, DTYPES[precision]).eval()
    for precision in args.precisions if training else []:
        frozen_dtype = torch.bfloat16 if precision == "bf16-frozen" else torch.float32
        models["truncated"][precision] = bare_tower(config, config.feature_layer).to(device, frozen_dtype)
        for r, head in heads.items():
            model = with_clip(head, clips["bfloat16" if precision == "bf16-frozen" else "float32"]).to(device)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            scheduler = build_scheduler(optimizer, [400, 700], steps_per_epoch=1)
            if precision != "float32":  # what --mixed_precision bf16 runs: the prepared forward under autocast
                model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
            models["training"][precision, r] = (model.train(), optimizer, scheduler)
    return models


# ---------------------------------------------------------------------------------------------- the callables


def inference_entries(args: argparse.Namespace, models: dict, image_size: int, batch_size: int, device) -> list:
    """The bare tower and CLIP-ADA for each R, per inference precision: `(fields, call)` pairs."""
    config, entries = models["config"], []
    shape = {"layers": config.vision_config.num_hidden_layers, "feature_layer": config.feature_layer}
    pixels = torch.randn(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(args.seed))
    for precision, bare in models["bare"].items():
        inputs = pixels.to(device, DTYPES[precision])
        common = {"image_size": image_size, "precision": precision, "batch_size": batch_size}
        entries.append(({"kind": "reference_full", **common, **shape}, forward_call(bare, inputs, mixed=False)))
        for r in args.refinements:
            model = models["inference"][precision, r]
            entries.append(({"kind": "clipada_inference", **common, "R": r}, forward_call(model, inputs, mixed=False)))
    return entries


def training_entries(args, models: dict, image_size: int, batch_size: int, accelerator, splits: dict) -> list:
    """Per training precision: the references, `training_step` for each R and the text tower; then the synthesis
    and the loading of a batch: `(fields, call)` pairs."""
    device, entries = accelerator.device, []
    generator = torch.Generator().manual_seed(args.seed)
    pixels = torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(device)
    images = torch.randint(0, 256, pixels.shape, generator=generator, dtype=torch.uint8).to(device)
    processor, synthesizer = CLIPADAImageProcessor(size=image_size), SyntheticAnomalyGenerator(image_size=image_size)
    for precision, truncated in models["truncated"].items():
        common = {"image_size": image_size, "precision": precision, "batch_size": batch_size}
        mixed, inputs = precision != "float32", pixels.to(truncated.dtype)
        entries.append(({"kind": "reference_nograd_to_l", **common}, forward_call(truncated, inputs, mixed)))
        entries.append(({"kind": "reference_fwdbwd_to_l", **common}, forward_backward_call(truncated, inputs, mixed)))
        for r in args.refinements:
            model, optimizer, scheduler = models["training"][precision, r]
            generator = synthesis_generator(args.seed, 0, r)
            run = (accelerator, model, optimizer, scheduler, processor, synthesizer, images, generator)
            step = functools.partial(training_step, *run)
            entries.append(({"kind": "clipada_training_step", **common, "R": r}, step))
        model = models["training"][precision, args.refinements[0]][0]
        entries.append(({"kind": "text_embedding_fwdbwd", **common}, text_tower_call(model, device, mixed)))
    seeded = synthesis_generator(args.seed, 1, 0)

    def synthesis():  # what `training_step` does before the forward
        pixel_values, masks = synthesizer(images.float() / 255, generator=seeded)
        return processor.normalize(pixel_values), masks

    entries.append(({"kind": "synthesis", "image_size": image_size, "batch_size": batch_size}, synthesis))
    for file_size, (train_split, once_ms) in splits.items():
        batches = endless(build_train_dataloader(train_split, processor, batch_size, num_workers=0))
        fields = {"kind": "loading", "image_size": image_size, "batch_size": batch_size, "file_size": file_size}
        entries.append(({**fields, "once_ms_per_image": once_ms}, lambda b=batches: next(b)["pixels"].to(device)))
    return entries


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def forward_call(model, pixels: torch.Tensor, mixed: bool):
    def call():
        with torch.no_grad(), autocast(pixels.device, mixed):
            return model(pixel_values=pixels)

    return call


def forward_backward_call(model: CLIPVisionModel, pixels: torch.Tensor, mixed: bool):
    """A refined pass of the ideal: forward to layer l from an input that requires grad, backward to it."""

    def call():
        inputs = pixels.detach().requires_grad_(True)
        with autocast(pixels.device, mixed):
            hidden_states = model(pixel_values=inputs).last_hidden_state
        hidden_states.float().sum().backward()
        return inputs.grad

    return call


def text_tower_call(model: CLIPADAForAnomalySegmentation, device: torch.device, mixed: bool):
    """The template with the prompt vectors through the text tower, forward and backward."""

    def call():
        with autocast(device, mixed):
            embedding = model.text_embedding()
        embedding.float().sum().backward()
        model.prompt_vectors.grad = None

    return call


def endless(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def demo_train_splits(args: argparse.Namespace, workdir: Path, image_size: int) -> dict:
    """Per PNG side: a demo dataset's train split, and what decoding and resizing it once costs per image (ms)."""
    splits = {}
    for file_size in args.loading_image_sizes:
        root = workdir / f"demo_{file_size}px"
        if not root.exists():  # two categories
            num_train = max(1, args.loading_dataset_images // 2)
            make_demo_dataset(root, num_train=num_train, num_test_good=1, num_test_defect=1, image_size=file_size)
        train_split = load_anomaly_dataset(str(root), cache_dir=workdir / "cache")["train"]
        # the first loader of a split decodes and resizes every image (`datasets` caches it); later ones reuse it
        started = time.perf_counter()
        build_train_dataloader(train_split, CLIPADAImageProcessor(size=image_size), batch_size=1)
        splits[file_size] = (train_split, round((time.perf_counter() - started) * 1e3 / len(train_split), 2))
    return splits


# ---------------------------------------------------------------------------------------------- measuring


def measure_group(entries: list, args: argparse.Namespace, device: torch.device, started: float) -> list[dict]:
    """Times the `(fields, call)` entries in interleaved rounds, then the peak memory of one call of each."""
    calls = {index: call for index, (_, call) in enumerate(entries)}
    samples = time_in_rounds(calls, args.repeats, args.min_run_time, args.warmup)
    records = []
    for index, (fields, call) in enumerate(entries):
        samples_ms = [round(seconds * 1e3, 4) for seconds in samples[index]]
        records.append({**fields, "samples_ms": samples_ms, "ms": spread(samples_ms), **peak_memory(call, device)})
        label, ms = ", ".join(f"{key} {value}" for key, value in fields.items()), records[-1]["ms"]
        seconds = time.perf_counter() - started
        print(f"[{seconds:4.0f} s] {label}: {ms['median']:.2f} ms [{ms['min']:.2f}-{ms['max']:.2f}]", flush=True)
    return records


def run_grid(args: argparse.Namespace, accelerator: Accelerator, started: float) -> list[dict]:
    """One inference group and one training group per (image size, batch size); their records."""
    device, records = accelerator.device, []
    with tempfile.TemporaryDirectory(prefix="clipada-bench-") as workdir:
        for image_size in args.image_sizes:
            training = image_size in args.training_image_sizes
            models = build_models(args, image_size, accelerator, training)
            splits = demo_train_splits(args, Path(workdir), image_size) if training else {}
            for batch_size in args.batch_sizes:
                entries = inference_entries(args, models, image_size, batch_size, device)
                records += measure_group(entries, args, device, started)
                if training:
                    entries = training_entries(args, models, image_size, batch_size, accelerator, splits)
                    records += measure_group(entries, args, device, started)
            accelerator.free_memory()
            del models, splits
            gc.collect()
    return records


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    """Measures the grid and writes `<output_dir>/<name>.json` and `.md`; with `--from_json` only rebuilds them.

    Run it as a script: it sets the process's torch threads, its malloc and its (one) `AcceleratorState`.
    """
    args = parse_args(argv)
    if args.from_json:
        return rebuild(Path(args.from_json))
    started = time.perf_counter()
    malloc = tune_glibc_malloc() if args.malloc == "tuned" else "glibc defaults"
    bf16 = any(precision != "float32" for precision in args.precisions)
    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision="bf16" if bf16 else "no")
    torch.set_num_threads(args.threads)
    records = run_grid(args, accelerator, started)
    results = {
        "environment": environment(accelerator.device),
        "settings": vars(args),
        "malloc": malloc,
        "records": records,
        "derived": derive(records),
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    write(results, Path(args.output_dir) / args.name)
    print(to_markdown(results))
    return results


if __name__ == "__main__":
    main()
