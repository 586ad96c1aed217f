"""The few-shot protocol of `clipada eval --shots 1 2 4 8 --seeds 0 1 2`: per (shots, seed), fit the reference memory
on that many normal training images per category, evaluate on the test split, and report mean and standard deviation
per metric over the seeds (as AdaptCLIP reports its few-shot results).

`--output_dir` receives one folder per run, `shots_<k>_seed_<s>/` (metrics.json, metrics.md, heatmaps and
`reference_shots.json`, the shot list), and the summary `few_shot.json` and `few_shot.md`. The shots come from the
training split's normal images only; the memory the checkpoint may hold is replaced in every run (k = 0: none, the
family's own maps, evaluated once). No operating point is measured: thresholds calibrated without this memory do not
apply to its maps. One process evaluates (no `accelerate launch`).

Example:
    ```bash
    clipada eval --model_name_or_path outputs/run --dataset_name data/mvtec --output_dir outputs/run/few_shot \\
        --shots 1 2 4 8 --seeds 0 1 2
    ```
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from inference.atomic import atomic_dir
from inference.command_line import usage_errors
from inference.devices import resolve_device
from inference.loading import add_class_names, load_clipada_model
from inference.modes import NO_THRESHOLDS, load_processors, with_inference_mode
from inference.output_folder import check_output_folder, write_marker
from training.data import DatasetFormatError, load_anomaly_dataset
from training.eval_processes import current_processes
from training.fit_reference import SHOTS_FILE, fit_from_split
from training.metrics.finite import NonFiniteScoresError
from training.metrics.report import without_nan

COMMAND = "clipada eval"
SUMMARY_JSON, SUMMARY_TABLE = "few_shot.json", "few_shot.md"


def run_name(shots: int, seed: int) -> str:
    """The folder of one run: `shots_4_seed_0`."""
    return f"shots_{shots}_seed_{seed}"


def planned_runs(shots: list[int], seeds: list[int]) -> list[tuple[int, int]]:
    """Every (shots, seed) pair, shots in the given order; k = 0 once (its maps do not depend on the seed)."""
    shots = list(dict.fromkeys(shots))
    seeds = list(dict.fromkeys(seeds))
    return [(k, seed) for k in shots for seed in (seeds[:1] if k == 0 else seeds)]


def summarise(means: list[dict]) -> dict[str, dict[str, float | None]]:
    """Mean and standard deviation (over the runs, ddof 0) of every numeric metric of the runs' `mean` dicts.

    Args:
        means: One `mean` metric dict per seed (values None where undefined: those runs are left out).

    Returns:
        `{metric: {"mean": ..., "std": ..., "runs": n}}`, metrics in the first run's order; None where no run has
        a value.
    """
    summary = {}
    for name, first in means[0].items():
        if isinstance(first, bool) or not isinstance(first, (int, float, type(None))):
            continue
        values = [m.get(name) for m in means]
        values = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        values = [v for v in values if math.isfinite(v)]
        if not values and first is not None:
            continue
        summary[name] = {
            "mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values)) if values else None,
            "runs": len(values),
        }
    return summary


def format_summary(summaries: dict[int, dict], metrics: tuple[str, ...]) -> str:
    """A Markdown table: one row per number of shots, `mean ± std` in percent per metric."""
    lines = ["| shots | seeds | " + " | ".join(metrics) + " |", "|---:|---:|" + "---:|" * len(metrics)]
    for shots, summary in summaries.items():
        cells = []
        for metric in metrics:
            entry = summary.get(metric)
            cells.append(
                "-"
                if entry is None or entry["mean"] is None
                else f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"
            )
        runs = max((entry["runs"] for entry in summary.values()), default=0)
        lines.append(f"| {shots} | {runs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


TABLE_METRICS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "image_f1_max", "pixel_f1_max")


def run_few_shot(args: argparse.Namespace) -> dict:
    """`clipada eval` with `--shots`: the runs, their folders and the summary (see the module's docstring).

    Args:
        args: `clipada eval`'s parsed arguments, with `shots` and `seeds`.

    Returns:
        `{"runs": {name: {"shots", "seed", "mean", "images"}}, "summary": {shots: {metric: {mean, std, runs}}}}`.
    """
    # late import: training.evaluation dispatches here from its own main
    from training.evaluation import evaluate_model, local_paths, write_evaluation

    output_dir = Path(args.output_dir)
    with usage_errors():
        if current_processes().world_size > 1:
            raise ValueError("--shots runs in one process: start clipada eval without accelerate launch")
        check_output_folder(
            output_dir,
            COMMAND,
            overwrite=args.overwrite_output_dir,
            sources=local_paths(args.dataset_name),
            contained_sources=local_paths(args.model_name_or_path),
        )
        device = resolve_device(args.device)
        model = load_clipada_model(args.model_name_or_path, dtype=getattr(torch, args.dtype)).to(device)
        processor, _ = load_processors(args.model_name_or_path, args.image_size)
        processor = with_inference_mode(processor, args.resize_mode, args.tile_size, args.tile_overlap, note=False)
        dataset = load_anomaly_dataset(
            args.dataset_name,
            dataset=args.dataset,
            categories=args.categories,
            allow_missing_files=args.skip_missing_files,
        )
        for split in ("train", "test"):
            if split not in dataset or len(dataset[split]) == 0:
                raise DatasetFormatError(f"{args.dataset_name} has no {split} split: --shots draws from train")
        names = sorted(set(dataset["train"]["category"]) | set(dataset["test"]["category"]))
        add_class_names(model, names, args.model_name_or_path)
    runs, by_shots = {}, {}
    with usage_errors(DatasetFormatError, NonFiniteScoresError, OSError, ValueError):
        with atomic_dir(output_dir.resolve() if output_dir.is_symlink() else output_dir) as staging:
            for shots, seed in planned_runs(args.shots, args.seeds):
                name = run_name(shots, seed)
                print(f"{name}: fitting the reference memory on {shots} normal images per category", file=sys.stderr)
                shot_list = fit_from_split(model, processor, dataset["train"], shots, seed)
                (staging / name).mkdir()
                per_category, mean = evaluate_model(
                    model,
                    processor,
                    dataset["test"],
                    device=device,
                    batch_size=args.per_device_eval_batch_size,
                    output_dir=staging / name,
                    num_heatmaps=args.num_heatmaps,
                    num_workers=args.dataloader_num_workers,
                    decision_config=NO_THRESHOLDS,
                )
                write_evaluation(staging / name, per_category, mean)
                record = {"split": "train", "shots": shots, "seed": seed, "images": shot_list}
                (staging / name / SHOTS_FILE).write_text(json.dumps(record, indent=2) + "\n")
                runs[name] = {"shots": shots, "seed": seed, "mean": mean, "images": shot_list}
                by_shots.setdefault(shots, []).append(mean)
            summaries = {shots: summarise(means) for shots, means in by_shots.items()}
            payload = {"shots": args.shots, "seeds": args.seeds, "summary": summaries, "runs": runs}
            text = json.dumps(without_nan(payload), indent=2, allow_nan=False) + "\n"
            (staging / SUMMARY_JSON).write_text(text)
            table = format_summary(summaries, TABLE_METRICS)
            (staging / SUMMARY_TABLE).write_text(table)
            write_marker(staging, COMMAND)
    print(table)
    return {"runs": runs, "summary": summaries}


__all__ = ["format_summary", "planned_runs", "run_few_shot", "run_name", "summarise"]
