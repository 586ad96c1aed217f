"""Model card (README.md) for a trained CLIP-ADA checkpoint: data, hyper-parameters, metrics, how to load.

Example:
    ```python
    >>> write_model_card("outputs/clipada-mvtec", vars(args), {"per_category": ..., "mean": ...})
    ```
"""

import json
import math
from pathlib import Path

from training.calibration import resolves
from training.metrics import format_metrics_table

HYPERPARAMETERS = (
    "model_name_or_path",
    "dataset_name",
    "categories",
    "preset",
    "image_size",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "weight_decay",
    "num_train_epochs",
    "max_train_steps",
    "lr_milestones",
    "mixed_precision",
    "seed",
    "texture_dir",
)


def write_model_card(output_dir: str | Path, args: dict, metrics: dict | None, name: str | None = None) -> Path:
    """Writes `output_dir/README.md` from the training arguments, the saved config and the evaluation metrics.

    Args:
        name: What the card's loading example names when there is no `hub_model_id` (default `output_dir`; a run
            writes its card into a staging folder and names its run folder).
    """
    output_dir = Path(output_dir)
    config = json.loads((output_dir / "config.json").read_text())
    head = {
        key: config.get(key)
        for key in (
            "feature_layer",
            "num_refinements",
            "num_prompt_vectors",
            "prompt_template",
            "image_score_top_k",
            "smoothing_sigma",
        )
    }
    rows = "\n".join(f"| `{key}` | `{args.get(key)}` |" for key in HYPERPARAMETERS if key in args)
    head_rows = "\n".join(f"| `{key}` | `{value}` |" for key, value in head.items())
    if metrics:
        results = format_metrics_table(metrics["per_category"], metrics["mean"])
    else:
        results = "Not evaluated (no test split, or `--skip_evaluation`)."
    repo = args.get("hub_model_id") or name or str(output_dir)
    report_path = output_dir / "calibration.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    decisions = _decisions_section(config, report)
    card = f"""---
library_name: transformers
pipeline_tag: image-segmentation
tags:
- anomaly-detection
- clip
- clipada
---

# CLIP-ADA anomaly segmentation

A frozen CLIP with CLIP-ADA's trainable head (learnable prompt vectors, linear patch projections, coarse-to-fine
refinement), trained as one model for every category of `{args.get("dataset_name")}` on synthetic anomalies only
(Cai et al., "Anomaly Detection by Adapting a pre-trained Vision Language Model", arXiv 2403.09493).

## Results (test split, per category, %)

{results}

## Training

| hyper-parameter | value |
|---|---|
{rows}

| head config | value |
|---|---|
{head_rows}

## OK/NG decisions

{decisions}

## How to load

```python
from transformers import AutoImageProcessor, AutoModel

model = AutoModel.from_pretrained("{repo}", trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained("{repo}", trust_remote_code=True)
inputs = processor(images=[image], return_tensors="pt")
outputs = model(**inputs)                # outputs.anomaly_map (B, H, W), outputs.pred_score (B,)
# with calibrated thresholds also outputs.pred_label (B,) and outputs.pred_mask (B, H, W)
maps = processor.post_process_anomaly_maps(outputs, target_sizes=[image.size[::-1]])
```
"""
    path = output_dir / "README.md"
    path.write_text(card)
    return path


def _decisions_section(config: dict, report: dict | None = None) -> str:
    """The calibrated thresholds with what the calibration images resolve, or how to calibrate.

    Args:
        config: The saved config.json.
        report: calibration.json beside it, or None; it gives the number of defective images and the binding target.
    """
    if config.get("image_threshold") is None:
        return (
            "Not calibrated: run `clipada calibrate --model_name_or_path <this folder> --dataset_name <normal images>`."
        )
    report = report or {}
    num_normal = config.get("calibration_size") or 0
    num_defective = (report.get("resolution") or {}).get("defective_images")
    target_fpr, target_escape = config.get("target_image_fpr"), config.get("target_escape_rate")
    images = f"{num_normal} normal image{'' if num_normal == 1 else 's'}" + (
        f" and {num_defective} defective image{'' if num_defective == 1 else 's'}" if num_defective else ""
    )
    lines = [
        f"An image is NG when its score is >= `image_threshold` = {config['image_threshold']:.4f}, a pixel when its "
        f"anomaly-map value is >= `pixel_threshold` = {config['pixel_threshold']:.4f} (target pixel false-positive "
        f"rate {config.get('target_pixel_fpr')}). Calibrated on {images}; the estimates, their 95% intervals and the "
        "rates on the calibration images are in `calibration.json`.",
        "",
    ]
    if target_fpr is not None:
        resolved = _resolved(num_normal, target_fpr, "normal", "false-positive")
        lines.append(f"- False rejects: target false-positive rate {target_fpr:g} on normal images, {resolved}")
    if target_escape is not None:
        resolved = _resolved(num_defective, target_escape, "defective", "escape")
        lines.append(f"- Escapes (defective images scored below it): target escape rate {target_escape:g}, {resolved}")
    binding = (report.get("image_threshold") or {}).get("binding")
    if target_fpr is not None and target_escape is not None and binding == "escape":
        lines.append(
            "- The escape target binds: the threshold is lowered to meet it; false rejects exceed their target."
        )
    elif target_fpr is not None and target_escape is not None and binding == "false_reject":
        lines.append("- The false-reject target binds: the escape target is met with room to spare.")
    mode = config.get("calibration_mode")
    if mode:
        tiles = f"tiles of {mode['tile_size']} px (overlap {mode['tile_overlap']:g})" if mode.get("tile_size") else ""
        height, width = mode["size"]
        lines.append(
            f"- Inputs: {tiles or mode['resize_mode']} at {height}x{width}; the thresholds hold only for inputs made "
            "the same way."
        )
    for category, values in (config.get("category_thresholds") or {}).items():
        lines.append(f"- `{category}`: image {values['image_threshold']:.4f}, pixel {values['pixel_threshold']:.4f}")
    return "\n".join(lines)


def _resolved(num_images: int | None, rate: float, kind: str, name: str) -> str:
    """Whether `num_images` images of `kind` resolve a `name` rate of `rate`: n images resolve rates down to 1 / n."""
    needed = math.ceil(1 / rate - 1e-9)
    if not num_images:
        return f"resolution unknown (a rate of {rate:g} needs at least {needed} {kind} images)."
    if resolves(num_images, rate):
        return f"resolved ({num_images} {kind} images resolve rates down to 1/{num_images} = {1 / num_images:.3g})."
    return (
        f"**not resolved**: {num_images} {kind} images support {name} rates down to 1/{num_images} = "
        f"{1 / num_images:.3g} only, and a rate of {rate:g} needs at least {needed}; the threshold sits near the most "
        "extreme calibration score, and the real rate may be higher."
    )


__all__ = ["write_model_card"]
