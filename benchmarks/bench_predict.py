"""Predict benchmark: images/s of `inference.predict` against the model's forward alone, and its peak memory.

A random-weight CLIP-ADA (calibrated thresholds set by hand) scores generated PNGs (`training.demo_data` discs and
weaves, `--image_size` px, so every image is resized as real inputs are). Each measurement runs in its own Python
process, so that its RSS high-water mark (`ru_maxrss`) is its own:

- `forward`: the model alone (the backend the command loads) on pixel values prepared beforehand, batch by batch
  as the command would give them (no reading, resizing, drawing or writing);
- `predict`: `inference.predict`'s command on the folder (reading, preprocessing, forward, original-size maps,
  rows, overlays), with and without `--no-overlays`.

`--grid` measures the pipeline (issue 20) instead, on 1024 px PNGs: per model (`smoke`: the smoke CLIP-ADA, 96 px
input, float32; `vitb16`: the ViT-B/16 shape, 224 px, bfloat16), the forward alone, then `predict` with
`--overlays none|ng|all` x `--num_workers 0|1|2` (2 writer threads), then writer processes against threads, and a
run with three times the images (flat memory). Thresholds are set at the forward's 80th score percentile, so about
one image in five is NG (what `--overlays ng` draws). Every ratio is end-to-end images/s over the forward-alone
images/s measured in the same process right after it (its peak RSS is taken before), so that a shared machine's
load changes both alike.

Both run with the same `--threads` (the command's `--num_threads`) and `--device`. Images/s count the scoring loop
only (model loading excluded: for the command, its `predict_images` is timed, loader start-up included).

Example:
    ```bash
    python benchmarks/bench_predict.py --threads 1                     # 1,000 and 5,000 images
    python benchmarks/bench_predict.py --grid --grid_images 96 --vit_images 24   # -> results/predict.{md,json}
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
    mode: str,
    checkpoint: str,
    folder: str,
    output_dir: str,
    count: int,
    batch_size: int,
    threads: int,
    device: str,
    options: dict | None = None,
) -> dict:
    """One measurement, in this process (run it in a fresh one: `ru_maxrss` is the process's high-water mark).

    Args:
        mode: `forward` (the backend `inference.predict` would load, on the pixel values it would give it, prepared
            beforehand), `predict` or `predict_no_overlays` (`inference.predict`'s command on the folder with its
            defaults), or `pipeline` (the command with `options`).
        checkpoint: The model folder.
        folder: The images.
        output_dir: The command's `--output_dir` (predict modes).
        count: How many images `folder` holds (checked).
        batch_size: Images per backend call.
        threads: torch's CPU threads (the command's `--num_threads`).
        device: Where the model runs (the command's `--device`).
        options: `dtype` (both), and for `pipeline`: `overlays`, `workers`, `writers`, `writer_kind` (`thread` or
            `process`), `image_threshold`, `pixel_threshold`.

    Returns:
        `seconds` of the scoring loop alone (model loading excluded), `peak_rss_kib` at the end and `rss_before_kib`
        after the imports; `forward` adds the `scores`, the predict modes the `summary` of the command.
    """
    import functools

    from inference.backends import load_backend
    from inference.devices import configure_threads
    from inference.loading import load_processor
    from inference.predict import command
    from inference.predict.inputs import collect_inputs
    from inference.predict.pipeline import run_pipeline

    options = options or {}
    dtype = options.get("dtype", "float32")
    configure_threads(threads)  # imports torch, so the baseline holds it in every mode
    baseline = peak_rss_kib()
    extra = {}

    def forward_alone() -> tuple[float, list[float]]:
        # what `predict_images` hands the backend, batch by batch, but read and preprocessed before the clock starts
        backend = load_backend("torch", checkpoint, device, dtype, threads)
        processor = load_processor(checkpoint)
        paths = collect_inputs([folder])
        if len(paths) != count:
            raise RuntimeError(f"{folder} holds {len(paths)} images, expected {count}")
        batches = [paths[start : start + batch_size] for start in range(0, count, batch_size)]
        prepared = [processor.model_inputs([processor.process_image(str(path)) for path in batch]) for batch in batches]
        backend(prepared[0]["pixel_values"], [None] * len(batches[0]))  # warm-up, as the command's first batch
        started, cpu = time.perf_counter(), cpu_seconds()
        scores = []
        for batch, inputs in zip(batches, prepared):
            scores += backend(inputs["pixel_values"], [None] * len(batch)).pred_score.tolist()
        extra["forward_cpu_seconds"] = cpu_seconds() - cpu
        return time.perf_counter() - started, scores

    if mode == "forward":
        seconds, extra["scores"] = forward_alone()
    else:
        # `command.main` calls its module's own `predict_images`: time it there, around the whole scoring loop
        predict_images, timings = command.predict_images, []

        def timed_predict_images(*args, **kwargs):
            started, cpu = time.perf_counter(), cpu_seconds()
            counts = predict_images(*args, **kwargs)
            timings.append(time.perf_counter() - started)
            extra["cpu_seconds"] = cpu_seconds() - cpu  # its threads and its loader processes (reaped) included
            return counts

        command.predict_images = timed_predict_images
        if options.get("writer_kind", "thread") != "thread":
            command.run_pipeline = functools.partial(run_pipeline, writer_kind=options["writer_kind"])
        argv = [folder, "--model_name_or_path", checkpoint, "--output_dir", output_dir, "--overwrite_output_dir"]
        argv += ["--batch_size", str(batch_size), "--num_threads", str(threads), "--device", device]
        argv += ["--dtype", dtype]
        if mode == "pipeline":
            argv += ["--overlays", options["overlays"], "--num_workers", str(options["workers"])]
            argv += ["--num_writers", str(options.get("writers", 2))]
            for flag in ("image_threshold", "pixel_threshold"):
                argv += [f"--{flag}", str(options[flag])] if flag in options else []
        summary = command.main(argv + (["--no-overlays"] if mode == "predict_no_overlays" else []))
        if len(timings) != 1:
            raise RuntimeError("inference.predict did not call the timed predict_images: the benchmark times nothing")
        if summary["images"] != count or summary["ERROR"]:
            raise RuntimeError(f"inference.predict scored {summary}, expected {count} images without errors")
        seconds = timings[0]
        extra["summary"] = summary
    peak = peak_rss_kib()
    if mode == "pipeline":  # the forward alone again, right after, in this process: a ratio of one moment's load
        extra["forward_seconds"] = forward_alone()[0]
    return {"seconds": seconds, "peak_rss_kib": peak, "rss_before_kib": baseline, **extra}


def cpu_seconds() -> float:
    """CPU time (user + system) of this process, its threads and its reaped children: a cost that another job's
    load on a shared machine changes far less than wall-clock time."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def peak_rss_kib() -> int:
    """This process's RSS high-water mark in KiB: `VmHWM` (its own, since it started), else `ru_maxrss` (which on
    Linux keeps the parent's peak across fork and exec)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--image_size", type=int, default=128, help="side of the generated PNGs")
    parser.add_argument("--batch_size", type=int, default=8, help="inference.predict's default")
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads (predict's --num_threads)")
    parser.add_argument("--device", default="cpu", help="where the model runs (predict's --device)")
    parser.add_argument("--work_dir", help="where images, checkpoint and outputs go (default: a temporary folder)")
    parser.add_argument("--output_dir", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--grid", action="store_true", help="the pipeline grid on 1024 px PNGs (issue 20)")
    parser.add_argument("--grid_images", type=int, default=96, help="--grid: images for the smoke model")
    parser.add_argument("--vit_images", type=int, default=24, help="--grid: images for the ViT-B/16 shape (0: skip)")
    parser.add_argument("--grid_size", type=int, default=1024, help="--grid: side of the PNGs")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="--grid: --num_workers values")
    parser.add_argument("--models", nargs="+", default=["smoke", "vitb16"], choices=["smoke", "vitb16"])
    parser.add_argument("--overlays", nargs="+", default=["none", "ng", "all"], choices=["none", "ng", "all"])
    parser.add_argument("--name", default="predict", help="--grid: results/<name>.json and .md")
    parser.add_argument("--machine", default="", help="the machine, in words, for the report")
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


def make_vit_checkpoint(folder: Path) -> Path:
    """A CLIP-ADA of the ViT-B/16 shape (vision tower: 768 wide, 12 layers, 12 heads, patch 16, 224 px; features of
    layer 6, R = 1; a small text tower for the character tokenizer), random weights, with thresholds."""
    from transformers import CLIPConfig, CLIPModel

    from modeling_clipada import CLIPADAForAnomalySegmentation
    from processing import CLIPADAImageProcessor
    from training.smoke_clip import smoke_clip_config, write_character_tokenizer

    text = smoke_clip_config(hidden_size=64, projection_dim=512).text_config.to_dict()
    vision = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
    config = CLIPConfig(text_config=text, vision_config=dict(vision, patch_size=16, image_size=224), projection_dim=512)
    clip_dir = folder / "vit_clip"
    CLIPModel(config).save_pretrained(clip_dir)
    write_character_tokenizer(clip_dir)
    model = CLIPADAForAnomalySegmentation.from_clip(str(clip_dir), num_refinements=1, feature_layer=6)
    model.config.image_threshold, model.config.pixel_threshold = 0.5, 0.5
    model.save_pretrained(folder / "vit_model")
    CLIPADAImageProcessor(size=224).save_pretrained(folder / "vit_model")
    return folder / "vit_model"


def make_images(folder: Path, count: int, size: int, unique: int | None = None) -> Path:
    """`count` PNGs, discs and weaves alternating, seeded; with `unique`, that many are rendered and the others are
    copies of their files (rendering a 1024 px image takes a second; reading a copy costs what reading it does)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rendered: list[bytes] = []
    for index in range(count):
        path = folder / f"{index:05d}.png"
        if unique is not None and index >= unique:
            path.write_bytes(rendered[index % unique])
            continue
        render = render_disc if index % 2 == 0 else render_weave
        image, _ = render(rng, size)
        Image.fromarray(image).save(path)
        rendered.append(path.read_bytes())
    return folder


def run_child(
    mode: str,
    checkpoint: Path,
    folder: Path,
    output_dir: Path,
    count: int,
    batch_size: int,
    threads: int,
    device: str,
    options: dict | None = None,
) -> dict:
    """[`measure`] in a fresh Python process; returns the result row (images/s, peak RSS in MiB)."""
    args = (mode, str(checkpoint), str(folder), str(output_dir), count, batch_size, threads, device, options)
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
    row = {
        "mode": mode,
        "images": count,
        "images_per_second": count / measured["seconds"],
        "peak_rss_mib": measured["peak_rss_kib"] * 1024 / MIB,
        "rss_after_imports_mib": measured["rss_before_kib"] * 1024 / MIB,
    }
    if options is not None:
        row["options"] = {key: value for key, value in options.items() if "threshold" not in key}
        row["scores"] = measured.get("scores")
        row["summary"] = measured.get("summary")
        if "forward_seconds" in measured:
            row["forward_images_per_second"] = count / measured["forward_seconds"]
        for key in ("cpu_seconds", "forward_cpu_seconds"):
            if key in measured:
                row[key.replace("seconds", "ms_per_image")] = measured[key] * 1000 / count
    return row


def run_grid(args: argparse.Namespace, work_dir: Path) -> list[dict]:
    """The pipeline grid (see the module's docstring): one result row per run, each with its model and ratio."""
    models = []
    if "smoke" in args.models:
        models.append(("smoke", make_checkpoint(work_dir), args.grid_images, "float32"))
    if "vitb16" in args.models and args.vit_images:
        models.append(("vitb16", make_vit_checkpoint(work_dir), args.vit_images, "bfloat16"))
    unique = make_images(work_dir / "grid_unique", 8, args.grid_size)
    for images in sorted({images for _, _, count, _ in models for images in (count, 3 * count)}):
        folder = work_dir / f"grid_{images}"
        if not folder.is_dir():
            folder.mkdir()
            for index in range(images):
                (folder / f"{index:05d}.png").write_bytes((unique / f"{index % 8:05d}.png").read_bytes())
    results = []
    for name, checkpoint, count, dtype in models:
        rows = []

        def child(mode: str, options: dict, images: int = count, tag: str = "", model=(name, checkpoint)) -> dict:
            row = run_child(
                mode, model[1], work_dir / f"grid_{images}", work_dir / f"out_{model[0]}_{mode}{tag}", images,
                args.batch_size, args.threads, args.device, options,
            )  # fmt: skip
            row["model"] = model[0]
            print(json.dumps({key: value for key, value in row.items() if key != "scores"}), flush=True)
            return row

        forward = child("forward", {"dtype": dtype})
        cut = float(np.quantile(forward.pop("scores"), 0.8))
        thresholds = {"image_threshold": cut, "pixel_threshold": max(cut, 0.5)}
        rows.append(forward)
        for overlays in args.overlays:
            for workers in args.workers:
                options = {"dtype": dtype, "overlays": overlays, "workers": workers, "writers": 2, **thresholds}
                rows.append(child("pipeline", options, tag=f"_{overlays}_{workers}"))
        if name == "smoke" and "all" in args.overlays:  # writer processes against threads, where writers work most
            most = max(args.workers)
            options = {"dtype": dtype, "overlays": "all", "workers": most, "writers": 2, **thresholds}
            rows.append(child("pipeline", {**options, "writer_kind": "process"}, tag="_all_process"))
            rows.append(child("pipeline", options, images=3 * count, tag="_all_3x"))
        for row in rows:
            # over the forward measured in the same process right after it (the first forward for itself)
            reference = row.get("forward_images_per_second", forward["images_per_second"])
            row["ratio_to_forward"] = row["images_per_second"] / reference
            row.pop("scores", None)
        results += rows
    return results


def grid_table(results: list[dict]) -> list[str]:
    """The grid's Markdown table."""
    lines = [
        "| model | run | overlays | workers | writers | images | NG | images/s | forward alone | ratio "
        "| CPU ms/image | forward CPU ms/image | peak RSS (MiB) |",
        "|:---|:---|:---|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        options = r.get("options") or {}
        run = "forward alone" if r["mode"] == "forward" else "predict"
        writers = (
            "" if r["mode"] == "forward" else f"{options.get('writers', 2)} {options.get('writer_kind', 'thread')}"
        )
        ng = "" if r["mode"] == "forward" else r["summary"]["NG"]
        lines.append(
            f"| {r['model']} ({options.get('dtype')}) | {run} | {options.get('overlays', '')} | "
            f"{options.get('workers', '')} | {writers} | {r['images']} | {ng} | {r['images_per_second']:.1f} | "
            f"{r.get('forward_images_per_second', r['images_per_second']):.1f} | {r['ratio_to_forward']:.2f} | "
            f"{r.get('cpu_ms_per_image', r.get('forward_cpu_ms_per_image', 0)):.0f} | "
            f"{r.get('forward_cpu_ms_per_image', 0):.0f} | {r['peak_rss_mib']:.0f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_predict_"))
    if args.grid:
        return grid_main(args, work_dir)
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


def grid_main(args: argparse.Namespace, work_dir: Path) -> list[dict]:
    """`--grid`: runs it and writes `predict.json` and `predict.md` to `--output_dir`."""
    started = time.perf_counter()
    results = run_grid(args, work_dir)
    report = {
        "machine": {
            "description": args.machine,
            "python": platform.python_version(),
            "processor": platform.processor(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "device": args.device,
        },
        "settings": {
            "image_size": args.grid_size,
            "batch_size": args.batch_size,
            "models": {"smoke": "smoke CLIP, R=1, 96 px, float32", "vitb16": "ViT-B/16 shape, R=1, 224 px, bfloat16"},
            "seconds": round(time.perf_counter() - started),
        },
        "results": results,
    }
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    text = grid_report(report)
    (output_dir / f"{args.name}.md").write_text(text)
    print(text)
    return results


def grid_report(report: dict) -> str:
    """The Markdown of a `--grid` report: the machine, the settings and the table."""
    machine, settings = report["machine"], report["settings"]
    head = [
        "# `clipada predict` end to end against the forward alone",
        "",
        f"Machine: {machine['description'] or machine['processor']}; Python {machine['python']}, {machine['cores']} "
        f"cores, device {machine['device']}, {machine['threads']} torch thread(s). Generated by "
        "`benchmarks/bench_predict.py --grid`.",
        "",
        f"{settings['image_size']} px PNGs, batch {settings['batch_size']}; models: "
        + "; ".join(f"{name}: {text}" for name, text in settings["models"].items())
        + ". `ratio` = predict's images/s over the forward alone measured in the same process right after it; `CPU "
        "ms/image` = CPU time of predict's whole pipeline (main process, its threads, its loader processes) per image;"
        " `forward CPU ms/image` = the forward alone's.",
        "",
    ]
    return "\n".join(head + grid_table(report["results"])) + "\n"


if __name__ == "__main__":
    main()
