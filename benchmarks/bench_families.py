"""Images/s of every model family's inference at its published setting in one run; ours vs official implementations.

Each family runs its forward (eval, no grad: maps, scores, post-processing) on a CLIP of its published shape with
random weights (no download): CLIP-ADA on ViT-B/16 at 224 px with R = 1, AnomalyCLIP on ViT-L/14@336 at 518 px.
All callables of one batch size are timed together in interleaved rounds (`measure.time_in_rounds`); images/s are
taken round by round and reported as median [min-max] over the rounds. Precisions: fp32, and bf16 (the model cast
to bfloat16).

`--official PATH` (a local copy of github.com/zqhang/AnomalyCLIP) and `--official_adaclip PATH` (one of
github.com/caoyunkang/AdaCLIP), never dependencies, add the official model at batch 1 in fp32, on the same random
weights (converted as `tests/fixtures/make_*_reference.py` do, see `official_models.py`), the same prompts and the
same input. Each is first checked to give the same anomaly map as ours (max abs diff <= 1e-4), then the official
per-image path of its `test.py` (AnomalyCLIP: `encode_image` with DPAM and the similarity maps, the text features
computed once before as `test.py` does; AdaCLIP: the whole `model(image, [class_name])`, text and k-means
included; both with scipy's Gaussian) is timed in the same rounds; the ratio ours / official is taken round by round.

A new family is one entry of `SETTINGS`: its `inference.families` name, CLIP shape, input size and head fields.

Example:
    ```bash
    python benchmarks/bench_families.py --threads 2 --official /tmp/AnomalyCLIP   # -> results/families.{json,md}
    python benchmarks/bench_families.py --families adaclip --precisions float32 --official_adaclip /tmp/AdaCLIP
    python benchmarks/bench_families.py --tiny --output_dir /tmp/bench           # the tiny CLIP, every code path
    ```
"""

import argparse
import copy
import dataclasses
import functools
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure import environment, time_in_rounds, tune_glibc_malloc
from official_models import official_adaclip, official_anomalyclip
from report import spread

from inference.families import FAMILIES
from training.smoke_clip import TINY_CLIP_SIZES, smoke_clip_config, write_character_tokenizer

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLIP_BPE = REPOSITORY_ROOT.parent / "shared" / "clip-bpe" / "bpe_simple_vocab_16e6.txt.gz"
PARITY_TOLERANCE = 1e-4
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# CLIPConfig's default towers are ViT-B's (text 512 wide); the vision tower and the projection are set here.
CLIP_SHAPES = {
    "ViT-B/16": {"vision_config": {"patch_size": 16, "image_size": 224}, "projection_dim": 512},
    "ViT-L/14@336": {
        "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                          "num_attention_heads": 16, "patch_size": 14, "image_size": 336},
        "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
        "projection_dim": 768,
    },
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class PublishedSetting:
    """One family's published inference setting, and its tiny stand-in for tests.

    Attributes:
        family: Its name in `inference.families.FAMILIES`.
        clip_shape: A key of `CLIP_SHAPES`.
        image_size: The published input side in pixels.
        head: Arguments of the family's `from_clip` (head fields, class names).
        tiny_head: The same for the tiny CLIP (2 text layers, 4 vision layers).
    """

    family: str
    clip_shape: str
    image_size: int
    head: dict
    tiny_head: dict


SETTINGS = (
    PublishedSetting("clipada", "ViT-B/16", 224, {"num_refinements": 1}, {"num_refinements": 1}),
    PublishedSetting("anomalyclip", "ViT-L/14@336", 518, {}, {"deep_prompt_depth": 2}),
    PublishedSetting(
        "adaclip",
        "ViT-L/14@336",
        518,
        {},
        {"prompt_length": 2, "prompt_depth": 2, "hsf_num_clusters": 4, "hsf_num_patches": 20},
    ),
)
TINY_IMAGE_SIZE = 32


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, default=None, help="local copy of github.com/zqhang/AnomalyCLIP")
    parser.add_argument("--official_commit", default=None, help="the copy's commit, when it is no git checkout")
    parser.add_argument("--official_adaclip", type=Path, default=None, help="local copy of caoyunkang/AdaCLIP")
    parser.add_argument("--official_adaclip_commit", default=None, help="its commit, when it is no git checkout")
    parser.add_argument("--clip_bpe", type=Path, default=DEFAULT_CLIP_BPE, help="CLIP's bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--families", nargs="+", choices=[s.family for s in SETTINGS], default=None)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1])
    parser.add_argument("--precisions", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 with --tiny)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds: samples per callable")
    parser.add_argument("--min_run_time", type=float, default=0.0, help="seconds per sample (blocked_autorange)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="the tiny CLIP at 32 px, 2 rounds, for tests")
    parser.add_argument("--output_dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--name", default=None, help="results file stem (default: families, families-tiny)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.repeats = min(args.repeats, 2)
    args.threads = args.threads or (1 if args.tiny else torch.get_num_threads())
    args.name = args.name or ("families-tiny" if args.tiny else "families")
    if not args.tiny and not args.clip_bpe.is_file():
        parser.error(f"--clip_bpe {args.clip_bpe}: no such file (CLIP's BPE vocabulary, e.g. the official copy's)")
    families = args.families or [setting.family for setting in SETTINGS]
    for flag, family, marker, kind, repository in (
        ("official", "anomalyclip", "AnomalyCLIP_lib", "folder", "zqhang/AnomalyCLIP"),
        ("official_adaclip", "adaclip", "method/adaclip.py", "file", "caoyunkang/AdaCLIP"),
    ):
        folder = getattr(args, flag)
        if folder is None:
            continue
        if not (folder / marker).exists():
            parser.error(f"--{flag} {folder}: no {marker} {kind} (not a copy of {repository})")
        if args.tiny or family not in families or 1 not in args.batch_sizes or "float32" not in args.precisions:
            parser.error(f"--{flag} needs {family}, batch size 1 and float32, and no --tiny")
    if min(args.batch_sizes) < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--batch_sizes, --repeats and --threads must be >= 1")
    return args


def clip_bpe_tokenizer(bpe_file: Path, folder: Path) -> CLIPTokenizer:
    """CLIP's BPE tokenizer (OpenAI's `bpe_simple_vocab_16e6.txt.gz`, as in ../shared/clip-bpe) written to `folder`."""
    merges = gzip.open(bpe_file, "rt", encoding="utf-8").read().split("\n")[1 : 49152 - 256 - 2 + 1]
    characters = list(bytes_to_unicode().values())
    vocab = [*characters, *(c + "</w>" for c in characters), *("".join(m.split()) for m in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(folder)


def build_model(setting: PublishedSetting, tiny: bool, seed: int, tokenizer: CLIPTokenizer):
    """The family's model (`from_clip`) around a random CLIP of its published shape (or the tiny CLIP), in eval."""
    if tiny:
        clip = smoke_clip_config(**{**TINY_CLIP_SIZES, "image_size": TINY_IMAGE_SIZE}).to_dict()
        towers = {key: clip[key] for key in ("text_config", "vision_config", "projection_dim")}
    else:
        towers = CLIP_SHAPES[setting.clip_shape]
    torch.manual_seed(seed)
    clip = CLIPModel(CLIPConfig(**towers))
    head = setting.tiny_head if tiny else setting.head
    model = FAMILIES[setting.family].model_class.from_clip(clip, tokenizer, **head)
    return model.requires_grad_(False).eval()


def forward_call(model, pixel_values: torch.Tensor):
    def call():
        with torch.no_grad():
            return model(pixel_values=pixel_values)

    return call


def parity(ours, official_call, pixel_values: torch.Tensor) -> dict:
    """Max abs differences of the anomaly map and the image score, ours against the official code's, fp32."""
    with torch.no_grad():
        outputs = ours(pixel_values=pixel_values)
    official_map, official_score = official_call(pixel_values)
    result = {
        "anomaly_map_max_abs_diff": (outputs.anomaly_map - official_map.float()).abs().max().item(),
        "pred_score_max_abs_diff": (outputs.pred_score - official_score.float()).abs().max().item(),
        "anomaly_map_range": [outputs.anomaly_map.min().item(), outputs.anomaly_map.max().item()],
        "tolerance": PARITY_TOLERANCE,
    }
    result["same"] = result["anomaly_map_max_abs_diff"] <= PARITY_TOLERANCE
    return result


# ---------------------------------------------------------------------------------------------- measuring


def measure(args: argparse.Namespace) -> dict:
    """Builds the models, checks parity with the official code (`--official*`), times every batch size."""
    settings = [s for s in SETTINGS if args.families is None or s.family in args.families]
    sizes = {s.family: TINY_IMAGE_SIZE if args.tiny else s.image_size for s in settings}
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = write_character_tokenizer(folder) if args.tiny else clip_bpe_tokenizer(args.clip_bpe, Path(folder))
    models = {}
    for setting in settings:
        model = build_model(setting, args.tiny, args.seed, tokenizer)
        for precision in args.precisions:
            models[setting.family, precision] = model if precision == "float32" else copy.deepcopy(model)
            models[setting.family, precision].to(DTYPES[precision])
    generator = torch.Generator().manual_seed(args.seed)
    pixels = {(family, b): torch.randn(b, 3, size, size, generator=generator) for family, size in sizes.items()
              for b in args.batch_sizes}  # fmt: skip
    officials, results = {}, {"records": []}
    if args.official is not None:
        officials["anomalyclip"] = official_anomalyclip(models["anomalyclip", "float32"], args.official,
                                                        args.official_commit)  # fmt: skip
    if args.official_adaclip is not None:
        officials["adaclip"] = official_adaclip(
            models["adaclip", "float32"], args.official_adaclip, args.official_adaclip_commit, args.clip_bpe,
            sizes["adaclip"],
        )  # fmt: skip
    for family, official in officials.items():
        check = parity(models[family, "float32"], official.parity_call, pixels[family, 1])
        results.setdefault("official", {})[family] = {"repository": official.repository, "commit": official.commit,
                                                      "parity": check}  # fmt: skip
        print(f"{family}: parity with the official code: {check}", flush=True)
        if not check["same"]:
            raise SystemExit(f"error: ours and the official {family} anomaly map differ: {check}")
    for batch_size in args.batch_sizes:
        entries = [
            ({"family": family, "precision": precision, "batch_size": batch_size, "image_size": sizes[family]},
             forward_call(model, pixels[family, batch_size].to(DTYPES[precision])))
            for (family, precision), model in models.items()
        ]  # fmt: skip
        for family, official in officials.items():
            if batch_size == 1:
                fields = {"family": f"{family}_official", "precision": "float32", "batch_size": 1}
                call = functools.partial(official.call, pixels[family, 1])
                entries.append(({**fields, "image_size": sizes[family]}, call))
        results["records"] += time_entries(entries, args.repeats, args.min_run_time)
    fp32 = {r["family"]: r for r in results["records"] if (r["precision"], r["batch_size"]) == ("float32", 1)}
    for family in officials:
        ours, theirs = fp32[family]["samples_ms"], fp32[f"{family}_official"]["samples_ms"]
        results["official"][family]["time_ratio_ours_to_official"] = spread([o / t for o, t in zip(ours, theirs)])
    return results


def time_entries(entries: list, repeats: int, min_run_time: float) -> list[dict]:
    """Times `(fields, call)` entries in interleaved rounds; per entry its ms and images/s, round by round."""
    samples = time_in_rounds(dict(enumerate(call for _, call in entries)), repeats, min_run_time)
    records = []
    for index, (fields, _) in enumerate(entries):
        samples_ms = [round(seconds * 1e3, 3) for seconds in samples[index]]
        images_per_s = spread([fields["batch_size"] * 1e3 / ms for ms in samples_ms])
        records.append({**fields, "samples_ms": samples_ms, "ms": spread(samples_ms), "images_per_s": images_per_s})
        print(f"{fields}: {images_per_s} images/s", flush=True)
    return records


def to_markdown(results: dict) -> str:
    """The images/s table, the official comparison and the parity check."""
    env, settings = results["environment"], results["settings"]
    shapes = {s.family: f"{'tiny CLIP' if settings['tiny'] else s.clip_shape}" for s in SETTINGS}
    shapes |= {f"{family}_official": f"{shape} (official code)" for family, shape in shapes.items()}
    lines = [
        f"# Model families at their published settings: {env.get('gpu') or env['cpu']}",
        "",
        f"{env['date']}, `{env['device']}`, {env['torch_threads']} torch threads ({env['cpu_count']} cores), "
        f"torch {env['torch']}, transformers {env['transformers']}; random weights. Forward in eval without grad "
        f"(maps, scores, post-processing). images/s and ms: median [min-max] over {settings['repeats']} "
        f"interleaved rounds. The run took {results['wall_time_s']:.0f} s.",
        "",
        "| family | CLIP shape | px | precision | batch | images/s | ms per call |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["records"]:
        rate, ms = r["images_per_s"], r["ms"]
        lines.append(
            f"| {r['family']} | {shapes[r['family']]} | {r['image_size']} | {r['precision']} | {r['batch_size']} | "
            f"{rate['median']:.3g} [{rate['min']:.3g}-{rate['max']:.3g}] | {ms['median']:.1f} [{ms['min']:.1f}-"
            f"{ms['max']:.1f}] |"
        )
    for official in results.get("official", {}).values():
        check, ratio = official["parity"], official["time_ratio_ours_to_official"]
        name = official["repository"].rsplit("/", 1)[1]
        lines += [
            "",
            f"Ours / official {name} ({official['repository']} at {official['commit'][:7]}), time per image, "
            f"fp32, batch 1, round by round: **{ratio['median']:.3f}** [{ratio['min']:.3f}-{ratio['max']:.3f}].",
            f"Same input, same weights: anomaly map max abs diff {check['anomaly_map_max_abs_diff']:.2e} (tolerance "
            f"{check['tolerance']:g}; maps in [{check['anomaly_map_range'][0]:.4f}, "
            f"{check['anomaly_map_range'][1]:.4f}]), image score max abs diff {check['pred_score_max_abs_diff']:.2e}.",
        ]
    return "\n".join(lines) + "\n"


def write(results: dict, stem: Path) -> None:
    """`stem.json` and `stem.md`, each written to a temporary file first so that no half file replaces one."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(results, indent=1) + "\n"), (".md", to_markdown(results))):
        temporary = stem.with_suffix(suffix + ".tmp")
        temporary.write_text(text)
        temporary.replace(stem.with_suffix(suffix))


def main(argv: list[str] | None = None) -> dict:
    """Measures and writes `<output_dir>/<name>.json` and `.md`; prints the table."""
    args = parse_args(argv)
    started = time.perf_counter()
    malloc = tune_glibc_malloc()
    torch.set_num_threads(args.threads)
    results = measure(args)
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    results = {"environment": environment(torch.device("cpu")), "settings": settings, "malloc": malloc, **results}
    results["wall_time_s"] = round(time.perf_counter() - started, 1)
    write(results, args.output_dir / args.name)
    print(to_markdown(results))
    return results


__all__ = ["CLIP_SHAPES", "SETTINGS", "PublishedSetting", "build_model", "main", "parity"]


if __name__ == "__main__":
    main()
