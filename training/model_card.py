"""Model card (README.md) for a trained CLIP-ADA checkpoint: data, hyper-parameters, metrics, how to load.

Example:
    ```python
    >>> write_model_card("outputs/clipada-mvtec", vars(args), {"per_category": ..., "mean": ...})
    ```
"""

import json
from pathlib import Path

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


def write_model_card(output_dir: str | Path, args: dict, metrics: dict | None) -> Path:
    """Writes `output_dir/README.md` from the training arguments, the saved config and the evaluation metrics."""
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
    repo = args.get("hub_model_id") or str(output_dir)
    decisions = _decisions_section(config)
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


def _decisions_section(config: dict) -> str:
    """The calibrated thresholds, or how to calibrate."""
    if config.get("image_threshold") is None:
        return (
            "Not calibrated: run `clipada calibrate --model_name_or_path <this folder> --dataset_name <normal images>`."
        )
    lines = [
        f"Calibrated on {config.get('calibration_size')} held-out normal images: an image is NG when its score is "
        f">= `image_threshold` = {config['image_threshold']:.4f} (target false-positive rate "
        f"{config.get('target_image_fpr')}), a pixel when its anomaly-map value is >= `pixel_threshold` = "
        f"{config['pixel_threshold']:.4f} (target pixel rate {config.get('target_pixel_fpr')}). The estimates and "
        "their 95% intervals are in `calibration.json`."
    ]
    for category, values in (config.get("category_thresholds") or {}).items():
        lines.append(f"- `{category}`: image {values['image_threshold']:.4f}, pixel {values['pixel_threshold']:.4f}")
    return "\n".join(lines)


__all__ = ["write_model_card"]
