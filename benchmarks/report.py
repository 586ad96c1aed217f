"""The benchmark's figures from its raw records: ideals, ratios, shares and speed-ups, taken round by round; tables.

Every record holds the per-round samples of one callable (`samples_ms`); the callables of one group were sampled
once per round, interleaved, so sample i of a model and sample i of its reference were taken moments apart. A ratio
is computed per round, then summarised as median [min-max] over the rounds.

Example:
    ```python
    >>> results = json.loads(Path("benchmarks/results/cpu.json").read_text())
    >>> derived = derive(results["records"])
    >>> derived["inference"][0]["ratio"]  # {"median": 1.016, "min": 0.99, "max": 1.04}
    ```
"""

import json
import statistics
from pathlib import Path

TARGETS = {"inference": 1.05, "training": 1.15, "bf16_speedup": 3.0, "data_share": 0.10}


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


def rounds(*records: dict):
    """The records' samples round by round (the rounds of one group are aligned)."""
    return zip(*(record["samples_ms"] for record in records))


def find(records: list[dict], kind: str, like: dict, **fields) -> dict | None:
    """The record of `kind` measured at `like`'s image size, precision and batch size (and `fields`)."""
    wanted = {"kind": kind, **{key: like.get(key) for key in ("image_size", "precision", "batch_size")}, **fields}
    return next((r for r in records if all(r.get(key) == value for key, value in wanted.items())), None)


def row(record: dict, *keys: str) -> dict:
    keys = ("image_size", "precision", "batch_size", "R", *keys)
    return {**{key: record.get(key) for key in keys}, "ms": record["ms"]["median"]}


def inference_rows(records: list[dict]) -> list[dict]:
    """CLIP-ADA inference against `(1 + R) * (l / L) * t_bare`."""
    rows = []
    for record in (r for r in records if r["kind"] == "clipada_inference"):
        bare = find(records, "reference_full", record)
        scale = (1 + record["R"]) * bare["feature_layer"] / bare["layers"]
        rows.append(
            {
                **row(record, "peak_mib", "extra_mib"),
                "images_per_s": round(record["batch_size"] * 1e3 / record["ms"]["median"], 2),
                "bare_ms": bare["ms"]["median"],
                "ideal_ms": round(scale * bare["ms"]["median"], 3),
                "ratio": spread([t / (scale * b) for t, b in rounds(record, bare)]),
            }
        )
    return rows


def training_rows(records: list[dict]) -> list[dict]:
    """Training steps against `t_nograd(l) + R * t_fwdbwd(l)`; the shares of the text tower and of the data."""
    rows = []
    for step in (r for r in records if r["kind"] == "clipada_training_step"):
        nograd, fwdbwd = find(records, "reference_nograd_to_l", step), find(records, "reference_fwdbwd_to_l", step)
        text, synthesis = find(records, "text_embedding_fwdbwd", step), find(records, "synthesis", step, precision=None)
        ideals = [n + step["R"] * f for n, f in rounds(nograd, fwdbwd)]
        batch = (step["image_size"], step["batch_size"])
        loadings = [r for r in records if r["kind"] == "loading" and (r["image_size"], r["batch_size"]) == batch]
        rows.append(
            {
                **row(step, "peak_mib", "extra_mib"),
                "nograd_ms": nograd["ms"]["median"],
                "fwdbwd_ms": fwdbwd["ms"]["median"],
                "ideal_ms": round(nograd["ms"]["median"] + step["R"] * fwdbwd["ms"]["median"], 3),
                "ratio": spread([t / i for t, i in zip(step["samples_ms"], ideals)]),
                "text_share": spread([x / t for t, x in rounds(step, text)]),
                "ratio_without_text": spread([(t - x) / i for (t, x), i in zip(rounds(step, text), ideals)]),
                # an iteration = loading a batch + `training_step` (which synthesises the anomalies)
                "data_share": [
                    {
                        "file_size": loading["file_size"],
                        "share": spread([(s + d) / (d + t) for t, s, d in rounds(step, synthesis, loading)]),
                    }
                    for loading in loadings
                ],
            }
        )
    return rows


def bf16_speedups(records: list[dict]) -> list[dict]:
    """fp32 time / bf16 time, round by round, of the bare tower, inference and the training step."""
    names = {"reference_full": "bare tower", "clipada_inference": "inference", "clipada_training_step": "training"}
    rows = []
    for record in records:
        fp32 = find(records, record["kind"], record, precision="float32", R=record.get("R"))
        if record["kind"] in names and record["precision"] != "float32" and fp32 is not None:
            what = names[record["kind"]] + (f" ({record['precision']})" if "training" in record["kind"] else "")
            speedup = spread([f / b for f, b in rounds(fp32, record)])
            rows.append({**row(record), "what": what, "fp32_ms": fp32["ms"]["median"], "speedup": speedup})
    return rows


def target(name: str, values: list[float], limit: float, at_least: bool = False) -> dict:
    failing = [value for value in values if (value < limit if at_least else value > limit)]
    worst, best = (min, max) if at_least else (max, min)
    return {
        "target": name,
        "holds": not failing if values else None,
        "worst": worst(values, default=None),
        "best": best(values, default=None),
        "failing": f"{len(failing)} / {len(values)}",
    }


def derive(records: list[dict]) -> dict:
    """The tables' figures from the raw records; each target is checked on every configuration's median."""
    inference, training, speedups = inference_rows(records), training_rows(records), bf16_speedups(records)
    limit = TARGETS["inference"]
    targets = [target(f"inference <= {limit} x ideal", [e["ratio"]["median"] for e in inference], limit)]
    for precision in dict.fromkeys(e["precision"] for e in training):
        values, limit = [e["ratio"]["median"] for e in training if e["precision"] == precision], TARGETS["training"]
        targets.append(target(f"training step ({precision}) <= {limit} x ideal", values, limit))
    for what in dict.fromkeys(s["what"] for s in speedups):
        values, limit = [s["speedup"]["median"] for s in speedups if s["what"] == what], TARGETS["bf16_speedup"]
        targets.append(target(f"bf16 >= {limit} x faster than fp32: {what}", values, limit, at_least=True))
    shares, limit = [d["share"]["median"] for e in training for d in e["data_share"]], TARGETS["data_share"]
    targets.append(target(f"synthesis + loading < {limit:.0%} of a training iteration", shares, limit))
    return {"targets": targets, "inference": inference, "training": training, "bf16_speedup": speedups}


# ---------------------------------------------------------------------------------------------- Markdown

TABLES = {  # section: (header, explanation, {column: key})
    "targets": ("Targets", "", {"target": "target", "holds": "holds", "worst": "worst", "best": "best",
                                "failing / measured": "failing"}),
    "inference": ("Inference (eval, no grad) vs the ideal (1 + R) * (l / L) * bare tower", "",
                  {"px": "image_size", "precision": "precision", "batch": "batch_size", "R": "R", "CLIP-ADA ms": "ms",
                   "images/s": "images_per_s", "bare ms": "bare_ms", "ideal ms": "ideal_ms", "ratio": "ratio",
                   "peak MiB": "peak_mib", "+MiB": "extra_mib"}),
    "training": ("Training step vs the ideal nograd(l) + R * fwdbwd(l)",
                 "`training.train.training_step`: synthesis, forward with labels, backward, AdamW and scheduler step. "
                 "`bfloat16`: fp32 weights, the forward under autocast (`--mixed_precision bf16`); `bf16-frozen`: the "
                 "frozen CLIP in bf16, the head in fp32, under autocast. Text share: the text tower's forward + "
                 "backward in a step. Data share: synthesis + loading of a batch in loading + step, per PNG side.",
                 {"px": "image_size", "precision": "precision", "batch": "batch_size", "R": "R", "step ms": "ms",
                  "nograd(l) ms": "nograd_ms", "fwdbwd(l) ms": "fwdbwd_ms", "ideal ms": "ideal_ms", "ratio": "ratio",
                  "text share": "text_share", "ratio without text": "ratio_without_text", "data share": "data_share",
                  "peak MiB": "peak_mib", "+MiB": "extra_mib"}),
    "per_batch": ("Synthesis, loading and the text tower per batch",
                  "Loading: one batch of `build_train_dataloader` (main process) moved to the device; the loader "
                  "decodes and resizes every PNG once, before the first epoch, at the cost per image in `once ms`.",
                  {"what": "kind", "precision": "precision", "px": "image_size", "file px": "file_size",
                   "batch": "batch_size", "ms": "ms", "once ms": "once_ms_per_image", "peak MiB": "peak_mib",
                   "+MiB": "extra_mib"}),
    "bf16_speedup": ("bf16 speed-up over fp32 (fp32 time / bf16 time)", "",
                     {"what": "what", "px": "image_size", "batch": "batch_size", "R": "R", "fp32 ms": "fp32_ms",
                      "bf16 ms": "ms", "speed-up": "speedup"}),
}  # fmt: skip


def percent(share: dict) -> str:
    return f"{share['median']:.1%} [{share['min']:.1%}-{share['max']:.1%}]"


def cell(key: str, value) -> str:
    """One table cell; how a number is written depends on what it is (its key)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if key == "data_share":
        return "<br>".join(f"{percent(d['share'])} ({d['file_size']} px)" for d in value) or "-"
    if key == "text_share":
        return percent(value)
    if isinstance(value, dict):  # a ratio or speed-up over rounds
        return f"{value['median']:.3f} [{value['min']:.2f}-{value['max']:.2f}]"
    if key in ("peak_mib", "extra_mib"):
        return f"{value:.0f}"
    if key in ("worst", "best"):
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def to_markdown(results: dict) -> str:
    env, settings, derived = results["environment"], results["settings"], results["derived"]
    kinds = ("synthesis", "loading", "text_embedding_fwdbwd")
    sections = {**derived, "per_batch": [row(r, "kind", "file_size", "once_ms_per_image", "peak_mib", "extra_mib")
                                         for r in results["records"] if r["kind"] in kinds]}  # fmt: skip
    lines = [
        f"# CLIP-ADA against the bare CLIP vision tower: {env.get('gpu') or env['cpu']}",
        "",
        f"{env['date']}, `{env['device']}`, {env['torch_threads']} torch threads ({env['cpu_count']} cores, "
        f"{env['cpu_capability']}), torch {env['torch']}, transformers {env['transformers']}, malloc: "
        f"{results['malloc']}; {'the tiny' if settings['tiny'] else 'a ViT-B/16-shaped'} CLIP with random weights. "
        f"The run took {results['wall_time_s']:.0f} s.",
        "",
        f"ms: per call, the median over {settings['repeats']} interleaved rounds of one `blocked_autorange` sample "
        f"(>= {settings['min_run_time']} s, its mean per call) per callable and round. Ratios, shares and "
        f"speed-ups: taken round by round, median [min-max]. Memory ({env['memory_method']}): the peak MiB of the "
        "process (CPU) or of allocated CUDA memory during one call, and +MiB, its rise during the call.",
    ]
    for section, (title, explanation, columns) in TABLES.items():
        lines += ["", f"## {title}", "", *([explanation, ""] if explanation else [])]
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell(k, r.get(k)) for k in columns.values()) + " |" for r in sections[section]]
    return "\n".join(lines) + "\n"


def rebuild(path: Path) -> dict:
    """Recomputes `derived` and the Markdown of a results JSON from its records; nothing is measured."""
    results = json.loads(path.read_text())
    results["derived"] = derive(results["records"])
    write(results, path)
    return results


def write(results: dict, path: Path) -> None:
    """`path.json` and `path.md`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    path.with_suffix(".md").write_text(to_markdown(results))


__all__ = ["derive", "rebuild", "spread", "to_markdown", "write"]
