"""Speed and memory of CLIP-ADA against its limit, the bare CLIP vision tower: inference, training step, data.

One run on one machine measures, for a ViT-B/16-shaped CLIP with random weights (or a tiny one with `--tiny`):

- the bare `CLIPVisionModel` forward through all L layers (eval, no grad): the reference `t_bare`;
- CLIP-ADA inference (eval, no grad) for R = 0, 1, 2 and its ratio to the ideal `(1 + R) * (l / L) * t_bare`,
  where l is `feature_layer` (6 of 12);
- one training step (forward with labels, loss, backward, AdamW step, scheduler step, as
  `training.train.training_step` does after the synthesis) and its ratio to the ideal
  `t_nograd(l) + R * t_fwdbwd(l)`: the bare tower truncated to l layers, once without grad (the coarse pass) and
  R times with a backward to its input (each refined pass; the frozen weights need no gradient);
- the synthetic-anomaly generator (uint8 -> [0, 1], `SyntheticAnomalyGenerator`, CLIP normalisation) and the data
  loading (`training.train.build_train_dataloader` over PNG-encoded images, decoded and resized by the processor)
  of one batch, as a share of the training step;
- the peak memory of each of these calls.

Precision: "float32" is fp32 everywhere. "bfloat16" is `model.to(torch.bfloat16)` for inference (and the
references); training uses what `accelerate --mixed_precision bf16` (and so `training/train.py`) runs: fp32
weights under `torch.autocast(dtype=torch.bfloat16)`, with the references under the same autocast. The extra
precision "bf16-frozen" (`--extra_precisions`) trains with the frozen CLIP cast to bf16 and the head in fp32
under autocast (a proposal, see benchmarks/README.md).

Timing (see benchmarks/README.md): `--threads` intra-op threads (default: all cores), warm-up calls, then
`--repeats` samples of at least `--min_sample_s` each (several calls when one is short); medians are reported
with min and max. On the CPU a sample during which other processes used the CPU (read from /proc/stat) is
discarded and retaken, up to 4x `--repeats` attempts; the number discarded is kept in the JSON. On CUDA every
sample is bracketed by `torch.cuda.synchronize()`.

Memory: one extra call per measurement. CPU: the process's resident-set high-water mark (`VmHWM`, reset through
`/proc/self/clear_refs` after `malloc_trim`) and how far it rose above the resident set just before the call.
CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, and its rise above `memory_allocated`.

Example:
    ```bash
    python benchmarks/benchmark.py                   # full CPU grid -> benchmarks/results/cpu.{json,md}
    python benchmarks/benchmark.py --quick           # a short subset (< 2 min on 2 CPU cores)
    python benchmarks/benchmark.py --tiny --output_dir /tmp/bench   # tiny CLIP, every code path, seconds
    python benchmarks/benchmark.py --device cuda --batch_sizes 1 8 32 64 128 --name h100
    ```
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import transformers
from transformers import CLIPVisionConfig, CLIPVisionModel

from modeling_clipada import CLIPADAConfig, CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor

# The default template "A photo of a [CLS] with defects for anomaly detection" tokenised by CLIP's tokenizer.
PROMPT_TOKEN_IDS = [49406, 320, 1125, 539, 320, 593, 37485, 556, 46811, 16220, 49407]
PROMPT_INSERT_POSITION = 5
TINY_PROMPT_TOKEN_IDS = [57, 10, 11, 12, 13, 58]
TINY_PROMPT_INSERT_POSITION = 3
PRECISIONS = ("float32", "bfloat16")
MIB = 2**20

# Targets of the issue (checked on the run's own figures).
TARGET_INFERENCE_RATIO = 1.05
TARGET_TRAINING_RATIO = 1.15
TARGET_BF16_SPEEDUP = 3.0
TARGET_DATA_SHARE = 0.10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--name", default=None, help="results file stem (default: the device type)")
    parser.add_argument("--output_dir", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument(
        "--image_sizes",
        type=int,
        nargs="+",
        default=[224, 336],
        help="input sizes, multiples of the patch size 16 (518, a ViT-L/14 size, is not; use 512)",
    )
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument(
        "--extra_precisions",
        nargs="*",
        choices=["bf16-frozen"],
        default=["bf16-frozen"],
        help="also time training with the frozen CLIP in bf16 and the head in fp32 under autocast",
    )
    parser.add_argument("--refinements", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--training_image_sizes",
        type=int,
        nargs="*",
        default=[224],
        help="image sizes that also get training, synthesis and loading",
    )
    parser.add_argument(
        "--loading_image_sizes",
        type=int,
        nargs="*",
        default=[224, 1024],
        help="sides of the PNG files the loader decodes (224: pre-resized; 1024: MVTec-AD-sized)",
    )
    parser.add_argument("--loading_dataset_images", type=int, default=32, help="images in each loading dataset")
    parser.add_argument("--skip_training", action="store_true")
    parser.add_argument("--skip_data", action="store_true", help="skip synthesis and loading")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: all cores; 1 with --tiny, whose ops are too small to share)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before each measurement")
    parser.add_argument("--repeats", type=int, default=7, help="timed samples (rounds) per measurement")
    parser.add_argument("--min_sample_s", type=float, default=0.25, help="a sample repeats short calls up to this")
    parser.add_argument(
        "--retakes",
        type=int,
        default=2,
        help="CPU: times a sample during which other processes used the CPU is retaken",
    )
    parser.add_argument(
        "--malloc",
        choices=["tuned", "default"],
        default="tuned",
        help="tuned: glibc keeps freed memory (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB) instead of "
        "returning it to the OS after every large step and page-faulting it back; default: as is",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="224 px, batch 1, R 0 and 2, 3 repeats, 224 px loading only (< 2 min on 2 CPU cores)",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a tiny CLIP (hidden 32, 4 layers, 32 px) through every code path, for tests",
    )
    parser.add_argument(
        "--from_json",
        default=None,
        help="measure nothing: recompute the derived figures and the Markdown of a results JSON",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.image_sizes, args.training_image_sizes, args.batch_sizes, args.refinements = [224], [224], [1], [0, 2]
        args.repeats, args.warmup, args.loading_image_sizes, args.loading_dataset_images = 3, 1, [224], 16
        args.extra_precisions, args.retakes = [], 0  # bounded time even on a busy machine
    if args.tiny:
        args.image_sizes, args.training_image_sizes, args.batch_sizes = [32], [32], [1, 2]
        args.repeats, args.warmup, args.min_sample_s = 2, 1, 0.0
        args.loading_image_sizes, args.loading_dataset_images = [32, 64], 4
        args.threads = 1 if args.threads is None else args.threads
    if args.name is None:
        args.name = torch.device(args.device).type + ("-tiny" if args.tiny else "-quick" if args.quick else "")
    return args


# ---------------------------------------------------------------------------------------------- timing


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy jiffies of the whole machine, jiffies of this process), or None where /proc is absent."""
    try:
        with open("/proc/stat") as file:
            fields = [int(value) for value in file.readline().split()[1:]]
        with open("/proc/self/stat") as file:
            own = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]  # user nice system irq softirq steal
    return busy, int(own[11]) + int(own[12])


class Sampler:
    """Times callables in interleaved rounds, so that slow drifts of the machine's speed hit all of them alike.

    One sample is `calls` back-to-back calls (enough to last `min_sample_s`), bracketed by
    `torch.cuda.synchronize()` on CUDA. On the CPU, a sample during which other processes used more than 2% of
    the machine (from /proc/stat) is retaken up to `retakes` times; if still contended it is kept and counted.
    """

    def __init__(self, device: torch.device, warmup: int, repeats: int, min_sample_s: float, retakes: int = 2):
        self.device, self.warmup, self.repeats, self.min_sample_s = device, warmup, repeats, min_sample_s
        self.retakes = retakes
        self.check_contention = device.type == "cpu" and _cpu_jiffies() is not None
        self.ticks = os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def sample(self, fn: Callable[[], object], calls: int) -> tuple[float, bool]:
        """Seconds per call over one sample, and whether other processes shared the CPU meanwhile."""
        before = _cpu_jiffies() if self.check_contention else None
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        self.synchronize()
        elapsed = time.perf_counter() - start
        if before is None:
            return elapsed / calls, False
        after = _cpu_jiffies()
        others = (after[0] - before[0]) - (after[1] - before[1])
        return elapsed / calls, others > max(1.0, 0.02 * elapsed * self.ticks)

    def rounds(self, fns: list[Callable[[], object]]) -> list[dict]:
        """Warm-up, then `repeats` rounds; each round samples every callable once (order rotated per round)."""
        calls = []
        for fn in fns:
            for _ in range(self.warmup):
                fn()
            self.synchronize()
            start = time.perf_counter()
            fn()
            self.synchronize()
            calls.append(max(1, math.ceil(self.min_sample_s / max(time.perf_counter() - start, 1e-9))))
        samples = [[] for _ in fns]
        retried, contended = [0] * len(fns), [0] * len(fns)
        for round_index in range(self.repeats):
            for offset in range(len(fns)):
                index = (round_index + offset) % len(fns)
                for attempt in range(self.retakes + 1):
                    seconds, busy = self.sample(fns[index], calls[index])
                    if not busy:
                        break
                    retried[index] += attempt < self.retakes
                samples[index].append(seconds)
                contended[index] += busy
        return [
            {
                "median_ms": round(statistics.median(values) * 1e3, 3),
                "min_ms": round(min(values) * 1e3, 3),
                "max_ms": round(max(values) * 1e3, 3),
                "samples_ms": [round(value * 1e3, 3) for value in values],
                "calls_per_sample": calls[index],
                "retried_samples": retried[index],
                "contended_samples": contended[index],
            }
            for index, values in enumerate(samples)
        ]


# ---------------------------------------------------------------------------------------------- memory


def _proc_status_mib(*keys: str) -> dict[str, float]:
    values = {}
    with open("/proc/self/status") as file:
        for line in file:
            key, _, value = line.partition(":")
            if key in keys:
                values[key] = int(value.split()[0]) / 1024
    return values


class MemoryMeter:
    """Peak memory of one call. CPU: RSS high-water mark; CUDA: `max_memory_allocated`. Values in MiB."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "cuda.max_memory_allocated" if device.type == "cuda" else self._cpu_method()
        try:
            self._libc = ctypes.CDLL("libc.so.6")
        except OSError:
            self._libc = None

    @staticmethod
    def _cpu_method() -> str:
        try:
            with open("/proc/self/clear_refs", "w") as file:
                file.write("5")
            return "VmHWM"
        except OSError:
            return "VmRSS sampled every 1 ms" if os.path.exists("/proc/self/status") else "unavailable"

    def __call__(self, fn: Callable[[], object]) -> dict[str, float | None]:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            fn()
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            return {"peak_mib": round(peak / MIB, 1), "extra_mib": round((peak - base) / MIB, 1)}
        if self.method == "unavailable":
            fn()
            return {"peak_mib": None, "extra_mib": None}
        if self._libc is not None:
            self._libc.malloc_trim(0)  # hand freed heap pages back, so the rise counts what this call needs
        base = _proc_status_mib("VmRSS")["VmRSS"]
        if self.method == "VmHWM":
            with open("/proc/self/clear_refs", "w") as file:
                file.write("5")  # resets VmHWM to the current RSS
            fn()
            peak = _proc_status_mib("VmHWM")["VmHWM"]
        else:
            peak = self._sampled_peak(fn, base)
        return {"peak_mib": round(peak, 1), "extra_mib": round(peak - base, 1)}

    @staticmethod
    def _sampled_peak(fn: Callable[[], object], base: float) -> float:
        peak, done = [base], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], _proc_status_mib("VmRSS")["VmRSS"])
                time.sleep(0.001)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            fn()
        finally:
            done.set()
            thread.join()
        return max(peak[0], _proc_status_mib("VmRSS")["VmRSS"])


def tune_glibc_malloc() -> str:
    """Keeps freed heap memory in the process (no mmap for large blocks, no trimming); returns what was done.

    With glibc's defaults, a training step frees its activations at the end, glibc hands the pages back to the
    kernel, and the next step page-faults them in again (zero-filled): thousands of faults per step, a cost
    that depends on what ran before rather than on the model. jemalloc/tcmalloc or the `MALLOC_MMAP_MAX_` and
    `MALLOC_TRIM_THRESHOLD_` environment variables have the same effect.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        if libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**31 - 1):
            return "glibc mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)"
    except (OSError, AttributeError):
        pass
    return "unchanged (not glibc)"


# ---------------------------------------------------------------------------------------------- models


def clipada_config(num_refinements: int, image_size: int, tiny: bool) -> CLIPADAConfig:
    """ViT-B/16-shaped CLIP-ADA (or a tiny one): random weights, the default template's token ids."""
    if tiny:
        common = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4}
        return CLIPADAConfig(
            text_config={**common, "num_hidden_layers": 2, "vocab_size": 60, "max_position_embeddings": 77},
            vision_config={**common, "num_hidden_layers": 4, "image_size": image_size, "patch_size": 4},
            projection_dim=16, num_refinements=num_refinements,
            prompt_token_ids=TINY_PROMPT_TOKEN_IDS, prompt_insert_position=TINY_PROMPT_INSERT_POSITION,
        )  # fmt: skip
    return CLIPADAConfig(
        vision_config={"patch_size": 16, "image_size": image_size},  # CLIPVisionConfig defaults: 768 wide, 12 layers
        projection_dim=512, num_refinements=num_refinements,
        prompt_token_ids=PROMPT_TOKEN_IDS, prompt_insert_position=PROMPT_INSERT_POSITION,
    )  # fmt: skip


def bare_vision_model(config: CLIPADAConfig, num_layers: int | None = None) -> CLIPVisionModel:
    """The reference: a frozen `CLIPVisionModel` of the same shape (sdpa), all layers or the first `num_layers`."""
    vision_config = CLIPVisionConfig(
        **{**config.vision_config.to_dict(), **({"num_hidden_layers": num_layers} if num_layers is not None else {})}
    )
    vision_config._attn_implementation = config.vision_config._attn_implementation or "sdpa"
    model = CLIPVisionModel(vision_config).eval()
    model.requires_grad_(False)
    return model


def vision_tower_gflops(config: CLIPADAConfig, image_size: int, num_layers: int | None = None) -> float:
    """Multiply-add FLOPs x 2 of one image through the bare vision tower (patch embedding, layers, no head)."""
    vision = config.vision_config
    width, inner, patches = vision.hidden_size, vision.intermediate_size, (image_size // vision.patch_size) ** 2
    tokens, layers = patches + 1, num_layers if num_layers is not None else vision.num_hidden_layers
    per_layer = 2 * tokens * (4 * width * width + 2 * width * inner) + 4 * tokens * tokens * width
    return (2 * patches * 3 * vision.patch_size**2 * width + layers * per_layer) / 1e9


def autocast_context(device: torch.device, enabled: bool) -> Callable[[], contextlib.AbstractContextManager]:
    if not enabled:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------- the benchmark


class Benchmark:
    """Runs the grid and collects one record (a dict) per measured callable."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.sampler = Sampler(self.device, args.warmup, args.repeats, args.min_sample_s, args.retakes)
        self.memory = MemoryMeter(self.device)
        self.records: list[dict] = []
        self.started = time.perf_counter()

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f}s] {message}", flush=True)

    def measure_group(self, entries: list[tuple[dict, Callable[[], object]]]) -> None:
        """Times the entries `(fields, fn)` in interleaved rounds, then the peak memory of one call of each."""
        timings = self.sampler.rounds([fn for _, fn in entries])
        for (fields, fn), timing in zip(entries, timings):
            memory = self.memory(fn)
            batch = fields.get("batch_size")
            record = {
                **fields,
                **timing,
                **memory,
                "images_per_s": round(batch / (timing["median_ms"] / 1e3), 2) if batch else None,
            }
            self.records.append(record)
            label = " ".join(f"{key}={value}" for key, value in fields.items())
            flags = f" ({timing['contended_samples']} contended)" if timing["contended_samples"] else ""
            self.log(
                f"{label}: {timing['median_ms']:.2f} ms [{timing['min_ms']:.2f}, {timing['max_ms']:.2f}]{flags}, "
                f"peak {memory['peak_mib']} MiB (+{memory['extra_mib']})"
            )

    def inputs(self, batch_size: int, image_size: int, dtype: torch.dtype) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.args.seed)
        return torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(self.device, dtype)

    def training_precisions(self) -> list[str]:
        extra = self.args.extra_precisions if "bfloat16" in self.args.precisions else []
        return list(self.args.precisions) + list(extra)

    # ------------------------------------------------------------------ models of one image size

    def build_models(self, image_size: int, training: bool) -> dict:
        """Every model of one image size; the R variants of one precision share one frozen CLIP."""
        torch.manual_seed(self.args.seed)
        heads = {}
        clip = None
        for num_refinements in self.args.refinements:
            model = CLIPADAForAnomalySegmentation(clipada_config(num_refinements, image_size, self.args.tiny))
            clip = clip if clip is not None else model.clip
            model.clip = clip
            heads[num_refinements] = model.to(self.device).eval()
        config = clipada_config(0, image_size, self.args.tiny)
        models = {"config": config, "inference": {}, "training": {}, "reference_full": {}, "truncated": {}}
        for precision in self.args.precisions:
            dtype = torch.float32 if precision == "float32" else torch.bfloat16
            frozen = clip if precision == "float32" else copy.deepcopy(clip).to(self.device, dtype)
            models["inference"][precision] = {r: _with_clip(m, frozen).to(dtype) for r, m in heads.items()}
            models["reference_full"][precision] = bare_vision_model(config).to(self.device, dtype)
        if not training:
            return models
        truncated = bare_vision_model(config, config.feature_layer).to(self.device)
        for precision in self.training_precisions():
            # "bfloat16" trains fp32 weights under autocast (accelerate's mixed precision); "bf16-frozen" casts the
            # frozen CLIP to bf16 and keeps the trained head in fp32.
            frozen = (
                models["inference"]["bfloat16"][self.args.refinements[0]].clip if precision == "bf16-frozen" else clip
            )
            models["training"][precision] = {r: _with_clip(m, frozen).train() for r, m in heads.items()}
            models["truncated"][precision] = (
                copy.deepcopy(truncated).to(torch.bfloat16) if precision == "bf16-frozen" else truncated
            )
        return models

    # ------------------------------------------------------------------ the measurement groups

    def run_inference(self, image_size: int, batch_size: int, models: dict) -> None:
        entries = []
        for precision in self.args.precisions:
            dtype = torch.float32 if precision == "float32" else torch.bfloat16
            pixels = self.inputs(batch_size, image_size, dtype)
            config = models["config"]
            entries.append(
                (
                    {
                        "kind": "reference_full",
                        "image_size": image_size,
                        "precision": precision,
                        "batch_size": batch_size,
                        "layers": config.vision_config.num_hidden_layers,
                        "feature_layer": config.feature_layer,
                        "gflops_per_image": round(vision_tower_gflops(config, image_size), 2),
                    },
                    _no_grad_call(models["reference_full"][precision], pixels),
                )
            )
            for num_refinements, model in models["inference"][precision].items():
                entries.append(
                    (
                        {
                            "kind": "clipada_inference",
                            "image_size": image_size,
                            "precision": precision,
                            "batch_size": batch_size,
                            "R": num_refinements,
                        },
                        _no_grad_call(model, pixels),
                    )
                )
        self.measure_group(entries)

    def run_training(self, image_size: int, batch_size: int, models: dict, data: dict) -> None:
        pixel_values, masks = data["batches"][batch_size]
        entries = []
        common = {"image_size": image_size, "batch_size": batch_size}
        for precision in self.training_precisions():
            autocast = autocast_context(self.device, precision != "float32")
            truncated = models["truncated"][precision]
            pixels = self.inputs(batch_size, image_size, torch.float32)
            entries += [
                (
                    {"kind": "reference_nograd_to_l", "precision": precision, **common},
                    _no_grad_pass(truncated, pixels, autocast),
                ),
                (
                    {"kind": "reference_fwdbwd_to_l", "precision": precision, **common},
                    _forward_backward_pass(truncated, pixels, autocast),
                ),
            ]
            for num_refinements, model in models["training"][precision].items():
                entries.append(
                    (
                        {"kind": "clipada_training_step", "precision": precision, "R": num_refinements, **common},
                        _training_step(model, pixel_values, masks, autocast),
                    )
                )
            any_model = next(iter(models["training"][precision].values()))
            entries.append(
                (
                    {"kind": "text_embedding_fwdbwd", "precision": precision, **common},
                    _text_embedding_pass(any_model, autocast),
                )
            )
        entries += [(fields, fn) for fields, fn in data["entries"] if fields["batch_size"] == batch_size]
        self.measure_group(entries)

    # ------------------------------------------------------------------ synthesis and loading

    def prepare_data(self, image_size: int, workdir: Path) -> dict:
        """Synthesis and loading callables per batch size, and one synthesised training batch per batch size."""
        from training.synthesis import SyntheticAnomalyGenerator
        from training.train import synthesis_generator

        processor = CLIPADAImageProcessor(size=image_size)
        synthesizer = SyntheticAnomalyGenerator(image_size=image_size)
        data = {"batches": {}, "entries": [], "prepare_ms_per_image": {}}
        for batch_size in self.args.batch_sizes:
            generator = torch.Generator().manual_seed(self.args.seed)
            images = (torch.rand(batch_size, 3, image_size, image_size, generator=generator) * 255).to(torch.uint8)
            images = images.to(self.device)
            pixel_values, masks = synthesizer(images.float() / 255, generator=synthesis_generator(self.args.seed, 0, 0))
            data["batches"][batch_size] = (processor.normalize(pixel_values), masks)
            if self.args.skip_data:
                continue
            data["entries"].append(
                (
                    {"kind": "synthesis", "image_size": image_size, "batch_size": batch_size},
                    _synthesis_call(synthesizer, processor, images, self.args.seed),
                )
            )
            for file_size in self.args.loading_image_sizes:
                largest = max(self.args.batch_sizes)  # one dataset per file size, whole batches for every size
                num_images = largest * math.ceil(self.args.loading_dataset_images / largest)
                loader, prepared_s = _train_dataloader(
                    workdir, file_size, image_size, batch_size, num_images, self.args.seed
                )
                fields = {"kind": "loading", "image_size": image_size, "file_size": file_size, "batch_size": batch_size}
                if file_size not in data["prepare_ms_per_image"]:
                    data["prepare_ms_per_image"][file_size] = round(prepared_s * 1e3 / len(loader.dataset), 2)
                fields["prepare_once_ms_per_image"] = data["prepare_ms_per_image"][file_size]
                data["entries"].append((fields, _next_batch(loader, self.device)))
        return data

    # ------------------------------------------------------------------ the whole grid

    def run(self) -> dict:
        with tempfile.TemporaryDirectory(prefix="clipada-bench-") as workdir:
            for image_size in self.args.image_sizes:
                training = image_size in self.args.training_image_sizes and not self.args.skip_training
                self.log(f"building the models for {image_size} px")
                models = self.build_models(image_size, training)
                data = self.prepare_data(image_size, Path(workdir)) if training else None
                for batch_size in self.args.batch_sizes:
                    self.run_inference(image_size, batch_size, models)
                    if training:
                        self.run_training(image_size, batch_size, models, data)
                del models, data
                gc.collect()
        return self.results()

    def results(self) -> dict:
        return {
            "environment": {**environment(self.device, self.memory.method), "malloc": self.args.malloc_setting},
            "settings": dict(vars(self.args)),
            "records": self.records,
            "derived": derive(self.records),
            "wall_time_s": round(time.perf_counter() - self.started, 1),
        }


def _with_clip(model: CLIPADAForAnomalySegmentation, clip) -> CLIPADAForAnomalySegmentation:
    """A copy of `model`'s head around the given (shared, frozen) CLIP."""
    original = model.clip
    model.clip = None
    try:
        head = copy.deepcopy(model)
    finally:
        model.clip = original
    head.clip = clip
    return head


def _no_grad_call(model, pixels: torch.Tensor) -> Callable[[], object]:
    def run():
        with torch.no_grad():
            return model(pixel_values=pixels)

    return run


def _no_grad_pass(model: CLIPVisionModel, pixels: torch.Tensor, autocast) -> Callable[[], object]:
    def run():
        with torch.no_grad(), autocast():
            return model(pixel_values=pixels).last_hidden_state

    return run


def _forward_backward_pass(model: CLIPVisionModel, pixels: torch.Tensor, autocast) -> Callable[[], object]:
    """Forward to layer l with the input requiring grad (as a refined pass's input does), then backward."""

    def run():
        inputs = pixels.detach().requires_grad_(True)
        with autocast():
            hidden_states = model(pixel_values=inputs).last_hidden_state
        hidden_states.float().sum().backward()
        return inputs.grad

    return run


def _training_step(model, pixel_values: torch.Tensor, masks: torch.Tensor, autocast) -> Callable[[], float]:
    """`training.train.training_step` after the synthesis: forward with labels, backward, AdamW and scheduler step."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def step() -> float:
        with autocast():  # accelerate's mixed precision wraps the forward in autocast, the backward runs outside
            outputs = model(pixel_values=pixel_values, labels=masks)
        outputs.loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        return outputs.loss.item()

    return step


def _text_embedding_pass(model, autocast) -> Callable[[], object]:
    """The text tower with the prompt vectors, forward and backward: what every training step adds to the ideal."""

    def run():
        with autocast():
            text_embedding = model.text_embedding()
        text_embedding.float().sum().backward()
        model.prompt_vectors.grad = None

    return run


def _synthesis_call(synthesizer, processor, images: torch.Tensor, seed: int) -> Callable[[], object]:
    """`training_step`'s data part: uint8 -> [0, 1] -> synthetic anomalies (a fresh seeded generator) -> normalise."""
    from training.train import synthesis_generator

    counter = iter(range(2**62))

    def run():
        pixels, masks = synthesizer(images.float() / 255, generator=synthesis_generator(seed, 0, next(counter)))
        return processor.normalize(pixels), masks

    return run


def _train_dataloader(workdir: Path, file_size: int, image_size: int, batch_size: int, num_images: int, seed: int):
    """`training.train.build_train_dataloader` over a demo dataset in the MVTec-AD layout with `file_size` PNGs.

    Returns:
        The loader and the seconds `build_train_dataloader` took (the demo dataset's generation excluded).
    """
    import datasets

    from training.demo_data import make_demo_dataset
    from training.train import build_train_dataloader, load_dataset_from_args, parse_args

    root = workdir / f"demo_{file_size}px"
    if not root.exists():
        make_demo_dataset(
            root,
            categories=("disc", "weave"),
            num_train=max(1, (num_images + 1) // 2),
            num_test_good=1,
            num_test_defect=1,
            image_size=file_size,
            seed=seed,
        )
    args = parse_args(
        [
            "--dataset_name",
            str(root),
            "--output_dir",
            str(workdir / "unused"),
            "--per_device_train_batch_size",
            str(batch_size),
            "--image_size",
            str(image_size),
            "--seed",
            str(seed),
        ]
    )
    datasets.disable_progress_bars()
    cache = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = workdir / "datasets_cache"  # the Arrow files go away with `workdir`
    try:
        started = time.perf_counter()  # the first call per file size: cold cache, every image decoded and resized
        train_split = load_dataset_from_args(args)["train"]
        loader = build_train_dataloader(args, _SingleProcess(), CLIPADAImageProcessor(size=image_size), train_split)
        return loader, time.perf_counter() - started
    finally:
        datasets.config.HF_DATASETS_CACHE = cache


class _SingleProcess:
    """What `build_train_dataloader` needs of an `Accelerator` in one process (no global accelerate state)."""

    num_processes, process_index, is_main_process = 1, 0, True

    @staticmethod
    def main_process_first() -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def _next_batch(loader, device: torch.device) -> Callable[[], torch.Tensor]:
    """One batch from the loader (a new epoch when one ends), moved to the device as `accelerate` does."""
    state = {"iterator": iter(loader)}

    def run() -> torch.Tensor:
        try:
            images = next(state["iterator"])
        except StopIteration:
            state["iterator"] = iter(loader)
            images = next(state["iterator"])
        return images.to(device, non_blocking=True)

    return run


# ---------------------------------------------------------------------------------------------- derived figures


def _find(records: list[dict], **fields) -> dict | None:
    for record in records:
        if all(record.get(key) == value for key, value in fields.items()):
            return record
    return None


def _per_round(values: list[float]) -> dict:
    """Median, min and max of a per-round quantity (the rounds of one group are aligned)."""
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


def derive(records: list[dict]) -> dict:
    """Ideals, ratios, bf16 speed-ups and data shares, each computed round by round, then the median."""
    inference, training, speedups, data_shares = [], [], [], []
    for record in records:
        size, precision, batch = record.get("image_size"), record.get("precision"), record.get("batch_size")
        if record["kind"] == "clipada_inference":
            reference = _find(records, kind="reference_full", image_size=size, precision=precision, batch_size=batch)
            if reference is None:
                continue
            scale = (1 + record["R"]) * reference["feature_layer"] / reference["layers"]
            ratios = [t / (scale * r) for t, r in zip(record["samples_ms"], reference["samples_ms"])]
            inference.append(
                {
                    "image_size": size,
                    "precision": precision,
                    "batch_size": batch,
                    "R": record["R"],
                    "measured_ms": record["median_ms"],
                    "ideal_ms": round(scale * reference["median_ms"], 3),
                    "ratio": _per_round(ratios),
                    "ratio_of_minima": round(record["min_ms"] / (scale * reference["min_ms"]), 4),
                    "images_per_s": record["images_per_s"],
                }
            )
        elif record["kind"] == "clipada_training_step":
            found = {
                kind: _find(records, kind=kind, image_size=size, precision=precision, batch_size=batch)
                for kind in ("reference_nograd_to_l", "reference_fwdbwd_to_l", "text_embedding_fwdbwd")
            }
            nograd, fwdbwd, text = found.values()
            if nograd is None or fwdbwd is None:
                continue
            ideals = [n + record["R"] * f for n, f in zip(nograd["samples_ms"], fwdbwd["samples_ms"])]
            entry = {
                "image_size": size,
                "precision": precision,
                "batch_size": batch,
                "R": record["R"],
                "measured_ms": record["median_ms"],
                "ideal_ms": round(nograd["median_ms"] + record["R"] * fwdbwd["median_ms"], 3),
                "ratio": _per_round([t / i for t, i in zip(record["samples_ms"], ideals)]),
                "ratio_of_minima": round(record["min_ms"] / (nograd["min_ms"] + record["R"] * fwdbwd["min_ms"]), 4),
                "text_share": _per_round([x / t for x, t in zip(text["samples_ms"], record["samples_ms"])])
                if text is not None
                else None,
                # the step without the text tower's forward + backward, against the same ideal
                "ratio_without_text": _per_round(
                    [(t - x) / i for t, x, i in zip(record["samples_ms"], text["samples_ms"], ideals)]
                )
                if text is not None
                else None,
            }
            training.append(entry)
            synthesis = _find(records, kind="synthesis", image_size=size, batch_size=batch)
            loadings = [
                r for r in records if r["kind"] == "loading" and r["image_size"] == size and r["batch_size"] == batch
            ]
            for loading in loadings if synthesis is not None else []:
                shares = [
                    (s + l) / t for s, l, t in zip(synthesis["samples_ms"], loading["samples_ms"], record["samples_ms"])
                ]
                data_shares.append(
                    {
                        "image_size": size,
                        "precision": precision,
                        "batch_size": batch,
                        "R": record["R"],
                        "file_size": loading["file_size"],
                        "synthesis_ms": synthesis["median_ms"],
                        "loading_ms": loading["median_ms"],
                        "step_ms": record["median_ms"],
                        "share": _per_round(shares),
                    }
                )
    for record in records:
        if record.get("precision") in (None, "float32") or record["kind"] not in (
            "clipada_inference",
            "clipada_training_step",
            "reference_full",
        ):
            continue
        keys = {k: record.get(k) for k in ("kind", "image_size", "batch_size", "R")}
        fp32 = _find(records, precision="float32", **{k: v for k, v in keys.items() if v is not None})
        if fp32 is None:
            continue
        kind = {"clipada_inference": "inference", "reference_full": "reference (bare tower)"}.get(
            record["kind"], f"training ({record['precision']})"
        )
        speedups.append(
            {
                "kind": kind,
                "image_size": keys["image_size"],
                "batch_size": keys["batch_size"],
                "R": keys["R"],
                "fp32_ms": fp32["median_ms"],
                "bf16_ms": record["median_ms"],
                "speedup": _per_round([f / b for f, b in zip(fp32["samples_ms"], record["samples_ms"])]),
                "speedup_of_minima": round(fp32["min_ms"] / record["min_ms"], 4),
            }
        )
    return {
        "inference": inference,
        "training": training,
        "bf16_speedup": speedups,
        "data_share": data_shares,
        "targets": check_targets(inference, training, speedups, data_shares),
        "throughput": throughput(records),
    }


def check_targets(inference, training, speedups, data_shares) -> list[dict]:
    """Each target of the issue over every measured configuration (medians of the per-round figures)."""

    def summary(name, entries, key, limit, higher_is_better=False, **fields):
        """Worst and best over the configurations; `holds` on the medians of rounds and on the minima."""
        selected = [e for e in entries if all(e[k] == v for k, v in fields.items())]
        values = [e[key]["median"] for e in selected]
        minima = [e[f"{key}_of_minima"] for e in selected if f"{key}_of_minima" in e]
        if not values:
            return {
                "target": name,
                "holds": None,
                "holds_on_minima": None,
                "worst": None,
                "best": None,
                "failing": 0,
                "count": 0,
            }

        def fails(value):
            return value < limit if higher_is_better else value > limit

        return {
            "target": name,
            "holds": not any(map(fails, values)),
            "holds_on_minima": not any(map(fails, minima)) if minima else None,
            "worst": min(values) if higher_is_better else max(values),
            "best": max(values) if higher_is_better else min(values),
            "failing": sum(map(fails, values)),
            "count": len(values),
        }

    targets = [summary(f"inference <= {TARGET_INFERENCE_RATIO} x ideal", inference, "ratio", TARGET_INFERENCE_RATIO)]
    for precision in dict.fromkeys(e["precision"] for e in training):
        targets.append(
            summary(
                f"training step ({precision}) <= {TARGET_TRAINING_RATIO} x ideal",
                training,
                "ratio",
                TARGET_TRAINING_RATIO,
                precision=precision,
            )
        )
    for kind in dict.fromkeys(s["kind"] for s in speedups):
        targets.append(
            summary(
                f"bf16 >= {TARGET_BF16_SPEEDUP} x faster than fp32: {kind}",
                speedups,
                "speedup",
                TARGET_BF16_SPEEDUP,
                True,
                kind=kind,
            )
        )
    for file_size in sorted({d["file_size"] for d in data_shares}):
        targets.append(
            summary(
                f"synthesis + loading < {TARGET_DATA_SHARE:.0%} of a training step ({file_size} px files)",
                data_shares,
                "share",
                TARGET_DATA_SHARE,
                file_size=file_size,
            )
        )
    return targets


def throughput(records: list[dict]) -> list[dict]:
    """Inference images/s per (size, precision, R): at batch 1 and at the best batch size."""
    rows = {}
    for record in records:
        if record["kind"] != "clipada_inference":
            continue
        key = (record["image_size"], record["precision"], record["R"])
        row = rows.setdefault(
            key,
            {
                "image_size": key[0],
                "precision": key[1],
                "R": key[2],
                "batch_1": None,
                "best": None,
                "best_batch_size": None,
            },
        )
        if record["batch_size"] == 1:
            row["batch_1"] = record["images_per_s"]
        if row["best"] is None or record["images_per_s"] > row["best"]:
            row["best"], row["best_batch_size"] = record["images_per_s"], record["batch_size"]
    return list(rows.values())


# ---------------------------------------------------------------------------------------------- environment


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, memory_method: str) -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "cpu": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags_bf16": _cpu_flags(("avx512_bf16", "amx_bf16", "avx512f")),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "memory_method": memory_method,
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(
            gpu=properties.name,
            gpu_memory_gib=round(properties.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            allow_tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            allow_tf32_cudnn=torch.backends.cudnn.allow_tf32,
        )
    return info


def _cpu_flags(names: tuple[str, ...]) -> list[str]:
    try:
        with open("/proc/cpuinfo") as file:
            flags = next((line.split(":", 1)[1].split() for line in file if line.startswith("flags")), [])
    except OSError:
        return []
    return [name for name in names if name in flags]


# ---------------------------------------------------------------------------------------------- Markdown


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _timing(record: dict | None) -> str:
    if record is None:
        return "-"
    flag = f" ({record['contended_samples']}c)" if record.get("contended_samples") else ""
    return f"{record['median_ms']:.1f} [{record['min_ms']:.1f}-{record['max_ms']:.1f}]{flag}"


def _spread(stats: dict | None, digits: int = 3, percent: bool = False) -> str:
    if stats is None:
        return "-"
    if percent:
        return f"{stats['median']:.1%} [{stats['min']:.1%}-{stats['max']:.1%}]"
    return f"{stats['median']:.{digits}f} [{stats['min']:.{digits}f}-{stats['max']:.{digits}f}]"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(cell if isinstance(cell, str) else _fmt(cell) for cell in row) + " |" for row in rows),
    ]


def _same(entry: dict, *keys: str) -> dict:
    return {key: entry[key] for key in keys}


def to_markdown(results: dict) -> str:
    env, records, derived, settings = (
        results["environment"],
        results["records"],
        results["derived"],
        results["settings"],
    )
    device = env.get("gpu") or env["cpu"]
    lines = [
        f"# CLIP-ADA benchmark on {device}",
        "",
        (
            f'{env["date"]}, `{env["device"]}`: CPU "{env["cpu"]}" ({env["cpu_count"]} cores, {env["torch_threads"]} '
            f"torch threads, {env['cpu_capability']}, flags: {', '.join(env['cpu_flags_bf16']) or 'none'})"
        )
        + (f", GPU {env['gpu']} ({env['gpu_memory_gib']} GiB, CUDA {env['cuda']})" if env.get("gpu") else "")
        + (
            f"; torch {env['torch']}, transformers {env['transformers']}; "
            f"{'tiny CLIP' if settings['tiny'] else 'ViT-B/16-shaped CLIP, random weights'}, feature layer l of L "
            f"layers; malloc: {env['malloc']}."
        ),
        "",
        (
            f"Times: ms per call, median [min-max] of {settings['repeats']} samples taken in interleaved rounds "
            "(every row of a table section is sampled once per round); ratios, shares and speed-ups are computed round "
            "by round, then the median [min-max]. (Nc) = N samples kept although other processes used the CPU. "
            f"Memory ({env['memory_method']}): peak MiB of the process (CPU) or of allocated CUDA memory, and +MiB, "
            f"its rise during the call. The run took {results['wall_time_s']:.0f} s."
        ),
        "",
        "## Targets",
        "",
        (
            "`holds`: on every configuration's median of per-round figures (worst, best and failing count are of "
            "those); `on minima`: on the ratio of the minimum times instead (the least disturbed samples)."
        ),
        "",
        *_table(
            ["target", "holds", "on minima", "worst", "best", "failing / measured"],
            [
                [
                    t["target"],
                    t["holds"],
                    t["holds_on_minima"],
                    _fmt(t["worst"], 3),
                    _fmt(t["best"], 3),
                    f"{t['failing']} / {t['count']}",
                ]
                for t in derived["targets"]
            ],
        ),
        "",
        "## Inference (eval, no grad) vs the ideal (1 + R) * (l / L) * bare tower",
        "",
    ]
    rows = []
    for entry in derived["inference"]:
        keys = _same(entry, "image_size", "precision", "batch_size")
        record = _find(records, kind="clipada_inference", R=entry["R"], **keys)
        reference = _find(records, kind="reference_full", **keys)
        gflops = reference["gflops_per_image"] * reference["batch_size"] / (reference["median_ms"] / 1e3)
        rows.append(
            [
                entry["image_size"],
                entry["precision"],
                entry["batch_size"],
                entry["R"],
                _timing(record),
                _fmt(record["images_per_s"]),
                _timing(reference),
                f"{gflops:.0f}",
                _fmt(entry["ideal_ms"]),
                _spread(entry["ratio"]),
                _fmt(entry["ratio_of_minima"], 3),
                _fmt(record["peak_mib"], 0),
                _fmt(record["extra_mib"], 0),
            ]
        )
    lines += _table(
        [
            "px",
            "precision",
            "batch",
            "R",
            "CLIP-ADA ms",
            "images/s",
            "bare tower ms (L layers)",
            "bare GFLOP/s",
            "ideal ms",
            "ratio",
            "ratio of minima",
            "peak MiB",
            "+MiB",
        ],
        rows,
    )
    lines += [
        "",
        "## Training step (forward + loss + backward + AdamW) vs the ideal nograd(l) + R * fwdbwd(l)",
        "",
        (
            "`bfloat16` = fp32 weights under bf16 autocast (accelerate `--mixed_precision bf16`); `bf16-frozen` = "
            "frozen CLIP cast to bf16, head in fp32, under autocast. Text share: the text tower's forward + "
            "backward (the prompt vectors train, so every step needs it) as a share of the step."
        ),
        "",
    ]
    rows = []
    for entry in derived["training"]:
        keys = _same(entry, "image_size", "precision", "batch_size")
        record = _find(records, kind="clipada_training_step", R=entry["R"], **keys)
        shares = [d for d in derived["data_share"] if all(d[k] == entry[k] for k in (*keys, "R"))]
        share_text = "<br>".join(f"{_spread(d['share'], percent=True)} ({d['file_size']} px)" for d in shares) or "-"
        rows.append(
            [
                entry["image_size"],
                entry["precision"],
                entry["batch_size"],
                entry["R"],
                _timing(record),
                _timing(_find(records, kind="reference_nograd_to_l", **keys)),
                _timing(_find(records, kind="reference_fwdbwd_to_l", **keys)),
                _fmt(entry["ideal_ms"]),
                _spread(entry["ratio"]),
                _fmt(entry["ratio_of_minima"], 3),
                _spread(entry["text_share"], percent=True),
                _spread(entry["ratio_without_text"]),
                share_text,
                _fmt(record["peak_mib"], 0),
                _fmt(record["extra_mib"], 0),
            ]
        )
    lines += _table(
        [
            "px",
            "precision",
            "batch",
            "R",
            "step ms",
            "nograd(l) ms",
            "fwdbwd(l) ms",
            "ideal ms",
            "ratio",
            "ratio of minima",
            "text share",
            "ratio without text",
            "synthesis + loading share",
            "peak MiB",
            "+MiB",
        ],
        rows,
    )
    lines += ["", "## Synthesis, loading and the text tower per batch", ""]
    names = {
        "synthesis": "synthesis (uint8 -> anomalies -> normalised)",
        "loading": "loading (train dataloader, resized-once cache)",
        "text_embedding_fwdbwd": "text tower fwd + bwd",
    }
    rows = [
        [
            names[r["kind"]] + (f" [{r['precision']}]" if r.get("precision") else ""),
            r["image_size"],
            r.get("file_size", "-"),
            r["batch_size"],
            _timing(r),
            _fmt(r.get("prepare_once_ms_per_image")),
            _fmt(r["peak_mib"], 0),
            _fmt(r["extra_mib"], 0),
        ]
        for r in records
        if r["kind"] in names
    ]
    lines += [
        (
            "Loading: `build_train_dataloader` decodes, checks and resizes every PNG once (first epoch, cached by "
            "`datasets`; the one-time cost per image is in its own column), then each batch reads uint8 tensors."
        ),
        "",
    ]
    lines += _table(["what", "px", "file px", "batch", "ms per batch", "once, ms per image", "peak MiB", "+MiB"], rows)
    lines += ["", "## bf16 speed-up over fp32 (fp32 time / bf16 time)", ""]
    lines += _table(
        ["what", "px", "batch", "R", "fp32 ms", "bf16 ms", "speed-up", "of minima"],
        [
            [
                s["kind"],
                s["image_size"],
                s["batch_size"],
                s["R"],
                _fmt(s["fp32_ms"]),
                _fmt(s["bf16_ms"]),
                _spread(s["speedup"], 2),
                _fmt(s["speedup_of_minima"], 2),
            ]
            for s in derived["bf16_speedup"]
        ],
    )
    lines += ["", "## Inference throughput (images/s): batch 1 and the best batch size", ""]
    lines += _table(
        ["px", "precision", "R", "batch 1", "best", "at batch"],
        [
            [t["image_size"], t["precision"], t["R"], _fmt(t["batch_1"]), _fmt(t["best"]), t["best_batch_size"]]
            for t in derived["throughput"]
        ],
    )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main


def rederive(path: str) -> dict:
    """Recomputes `derived` and the Markdown of an earlier run from its raw records (nothing is measured)."""
    path = Path(path)
    results = json.loads(path.read_text())
    results["derived"] = derive(results["records"])
    path.write_text(json.dumps(results, indent=1) + "\n")
    path.with_suffix(".md").write_text(to_markdown(results))
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.from_json:
        return rederive(args.from_json)
    threads = torch.get_num_threads()
    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        return run(args)
    finally:
        torch.set_num_threads(threads)  # main() may run inside another program (the tests)


def run(args: argparse.Namespace) -> dict:
    """Measures the grid of `args` and writes `<output_dir>/<name>.json` and `.md`."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available")
    for size in args.image_sizes:
        if size % (4 if args.tiny else 16):
            raise SystemExit(f"error: image size {size} is not a multiple of the patch size")
    args.malloc_setting = tune_glibc_malloc() if args.malloc == "tuned" else "glibc defaults"
    results = Benchmark(args).run()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{args.name}.json").write_text(json.dumps(results, indent=1) + "\n")
    markdown = to_markdown(results)
    (output_dir / f"{args.name}.md").write_text(markdown)
    print(markdown)
    return results


if __name__ == "__main__":
    main()
