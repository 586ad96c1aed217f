"""`clipada convert-official`: a released AnomalyCLIP or AdaCLIP weight file as a checkpoint of this library.

The official projects publish their trained prompts as `torch.save` files (AnomalyCLIP's `{"prompt_learner": ...}`,
AdaCLIP's trainer `save_dict`). This command reads one with `torch.load(weights_only=True)` only, maps every tensor
to our names (shapes checked, nothing left over; see `training.official_checkpoints`), pairs it with the CLIP it was
trained on, and writes a normal checkpoint: `model.safetensors`, `config.json`, the processor at the official input
size (518 x 518, square bicubic resize), the CLIP tokenizer, and a model card naming the source file and its SHA-256.
`clipada calibrate`, `predict`, `export`, `app` and `serve` take the result as any other checkpoint.

Example:
    ```bash
    clipada convert-official --family anomalyclip checkpoints/9_12_4_multiscale_visa/epoch_15.pth \\
        --output_dir outputs/anomalyclip-visa
    clipada convert-official --family adaclip pretrained_mvtec_colondb.pth --output_dir outputs/adaclip-mvtec \\
        --class_names candle capsules cashew
    ```
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from inference.atomic import atomic_dir
from inference.command_line import overwrite_argument, positive_int, usage_errors
from inference.output_folder import check_output_folder, write_marker
from training.official_checkpoints import (
    FAMILIES,
    OfficialCheckpointError,
    OfficialHead,
    adaclip_head,
    anomalyclip_head,
    check_family,
    read_official_file,
)

COMMAND = "clipada convert-official"
OFFICIAL_CLIP = "openai/clip-vit-large-patch14-336"
OFFICIAL_IMAGE_SIZE = 518
OFFICIAL_REPOSITORIES = {
    "anomalyclip": "https://github.com/zqhang/AnomalyCLIP",
    "adaclip": "https://github.com/caoyunkang/AdaCLIP",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description="Convert a released AnomalyCLIP or AdaCLIP weight file (.pth) into a checkpoint of this library.",
        parents=[overwrite_argument("an earlier conversion")],
    )
    parser.add_argument("file", help="The official weight file (torch.save output), e.g. epoch_15.pth.")
    parser.add_argument("--family", required=True, choices=FAMILIES, help="Which project wrote the file.")
    parser.add_argument("--output_dir", required=True, help="A new folder for the converted checkpoint.")
    parser.add_argument(
        "--clip_model_name_or_path",
        default=OFFICIAL_CLIP,
        help=f"The CLIP the file was trained on (default: the official {OFFICIAL_CLIP}); a local CLIP folder works.",
    )
    parser.add_argument(
        "--class_names", nargs="+", default=None, help="AdaCLIP: category names to tokenise now (more later)."
    )
    parser.add_argument(
        "--prompt_depth",
        type=positive_int,
        default=None,
        help="AdaCLIP files with dynamic prompts only (official type 'D'), which do not tell it (official: 4).",
    )
    parser.add_argument(
        "--feature_layers",
        type=positive_int,
        nargs="+",
        default=None,
        help="AnomalyCLIP: the vision layers whose maps are used (test-time, not in the file; official: the last).",
    )
    parser.add_argument(
        "--dpam_start_layer",
        type=positive_int,
        default=None,
        help="AnomalyCLIP: first DPAM layer (test-time, not in the file; official: L/4, 6 for ViT-L).",
    )
    parser.add_argument(
        "--hsf_num_clusters",
        type=positive_int,
        default=None,
        help="AdaCLIP: k-means clusters of HSF (official k_clusters, default 20; 5 x it patches are clustered).",
    )
    parser.add_argument(
        "--image_size",
        type=positive_int,
        default=OFFICIAL_IMAGE_SIZE,
        help=f"The processor's input size (default: the official {OFFICIAL_IMAGE_SIZE}).",
    )
    return parser.parse_args(argv)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert(
    path: Path,
    family: str,
    clip_name_or_path: str,
    class_names: list[str] | None = None,
    prompt_depth: int | None = None,
    test_time_fields: dict | None = None,
):
    """The model of `family` with the file's head on `clip_name_or_path`'s CLIP, and the head's description.

    `test_time_fields` are config fields the official code takes as test-time arguments, not from the file
    (AnomalyCLIP's `feature_layers`, `dpam_start_layer`; AdaCLIP's `hsf_num_clusters`, `hsf_num_patches`).

    Raises:
        OfficialCheckpointError: The file cannot be read as `family`'s, or does not fit the CLIP (names the tensors).
        ModelLoadError: The CLIP cannot be loaded.
    """
    from inference.loading import check_model_location

    flat = check_family(read_official_file(path), family, path)
    if family == "anomalyclip":
        head = anomalyclip_head(flat, path)
    else:
        head = adaclip_head(flat, path, prompt_depth)
    check_model_location(clip_name_or_path)
    head.fields |= {name: value for name, value in (test_time_fields or {}).items() if value is not None}
    if family == "anomalyclip":
        model = _anomalyclip_model(head, clip_name_or_path, path)
    else:
        model = _adaclip_model(head, clip_name_or_path, class_names, path)
    return model.eval(), head


def _anomalyclip_model(head: OfficialHead, clip_name_or_path: str, path: Path):
    from transformers import CLIPModel

    from inference.loading import load_with_named_errors
    from modeling_clipada import AnomalyCLIPConfig, AnomalyCLIPForAnomalySegmentation

    clip = load_with_named_errors(CLIPModel.from_pretrained, clip_name_or_path)
    clip_config = _clip_fields(clip)
    vocab_size = clip.config.text_config.vocab_size
    for name in ("normal_prompt_token_ids", "abnormal_prompt_token_ids"):
        bad = [token for token in head.fields[name] if not 0 <= token < vocab_size]
        if bad:
            raise OfficialCheckpointError(
                f"{path}: its prompts' token ids {bad[:5]} do not exist in {clip_name_or_path}'s vocabulary "
                f"({vocab_size} tokens): pair it with the CLIP it was trained on"
            )
    model = AnomalyCLIPForAnomalySegmentation(AnomalyCLIPConfig(**clip_config, **head.fields))
    model.clip.load_state_dict(clip.state_dict())
    _load_head(model, head, path, clip_name_or_path)
    _check_token_embeddings(model, head, path, clip_name_or_path)
    return model


def _adaclip_model(head: OfficialHead, clip_name_or_path: str, class_names: list[str] | None, path: Path):
    from inference.loading import load_with_named_errors
    from modeling_clipada import AdaCLIPForAnomalySegmentation

    fields = dict(head.fields)
    num_layers = fields.pop("num_feature_layers")
    model = load_with_named_errors(
        AdaCLIPForAnomalySegmentation.from_clip, clip_name_or_path, class_names=class_names, **fields
    )
    if num_layers != len(model.config.feature_layers):
        raise OfficialCheckpointError(
            f"{path} has {num_layers} patch projections (patch_token_layer.head.*); the official code taps the 4 "
            f"layers L/4, L/2, 3L/4, L of the CLIP, which for {clip_name_or_path} are {model.config.feature_layers}"
        )
    _load_head(model, head, path, clip_name_or_path)
    return model


def _clip_fields(clip) -> dict:
    config = clip.config.to_dict()
    for key in ("architectures", "model_type", "transformers_version", "auto_map", "dtype"):
        config.pop(key, None)
    return config


def _load_head(model, head: OfficialHead, path: Path, clip_name_or_path: str) -> None:
    """Copies the mapped tensors into the model's head after checking that they are exactly its trainable tensors
    with its shapes (a mismatch names the official keys, our name and both shapes)."""
    ours = {name: tensor for name, tensor in model.state_dict().items() if not name.startswith("clip.")}
    missing = sorted(set(ours) - set(head.tensors))
    if missing:
        raise OfficialCheckpointError(f"{path}: the file has no tensors for {', '.join(missing)} of the model")
    for name, tensor in head.tensors.items():
        if name not in ours:
            raise OfficialCheckpointError(f"{path}: {', '.join(head.sources[name])} has no place in the model")
        if tensor.shape != ours[name].shape:
            raise OfficialCheckpointError(
                f"{path}: {', '.join(head.sources[name][:3])} give {name} of shape {tuple(tensor.shape)}, but on "
                f"{clip_name_or_path} it has shape {tuple(ours[name].shape)}: pair the file with the CLIP it was "
                "trained on"
            )
    model.load_state_dict(head.tensors, strict=False)


def _check_token_embeddings(model, head: OfficialHead, path: Path, clip_name_or_path: str) -> None:
    """AnomalyCLIP files hold the CLIP's token embeddings of their prompts (`token_prefix_*`, `token_suffix_*`): they
    must be the paired CLIP's (float16 rounding allowed), else the file was trained on another CLIP."""
    import torch

    embedding = model.clip.text_model.embeddings.token_embedding.weight.detach().float()
    num_vectors = head.fields["num_prompt_vectors"]
    for sign in ("pos", "neg"):
        row = head.checks["normal_token_ids_with_vectors" if sign == "pos" else "abnormal_token_ids_with_vectors"]
        for part, ids in (("prefix", row[:1]), ("suffix", row[1 + num_vectors :])):
            stored = head.checks[f"token_{part}_{sign}"].reshape(-1, embedding.shape[1])
            if stored.shape[0] != len(ids):
                raise OfficialCheckpointError(
                    f"{path}: token_{part}_{sign} holds {stored.shape[0]} token embeddings, its tokenized prompt "
                    f"{len(ids)}"
                )
            expected = embedding[ids.long()]
            difference = (stored - expected).abs().max().item()
            if not difference <= 1e-3 * expected.abs().max().item() + 1e-6 or not torch.isfinite(stored).all():
                raise OfficialCheckpointError(
                    f"{path}: token_{part}_{sign} differs from {clip_name_or_path}'s token embeddings by "
                    f"{difference:.3g}: the file was trained on another CLIP (the official one: {OFFICIAL_CLIP})"
                )


def write_checkpoint(model, output_dir: Path, args: argparse.Namespace, head: OfficialHead, sha256: str) -> None:
    """Writes the model, the processor, the CLIP tokenizer (when the CLIP has one) and the model card into a staging
    folder, then swaps it in place of `output_dir` (nothing is left half-written)."""
    from transformers import CLIPTokenizer

    from processing import CLIPADAImageProcessor

    with atomic_dir(output_dir) as staging:
        model.save_pretrained(staging)
        CLIPADAImageProcessor(size=args.image_size).save_pretrained(staging)
        try:
            CLIPTokenizer.from_pretrained(args.clip_model_name_or_path).save_pretrained(staging)
        except (OSError, ValueError):
            pass  # AnomalyCLIP needs none (its prompts are tokenised in the config); AdaCLIP's from_clip needed one
        (staging / "README.md").write_text(_model_card(args, head, sha256), encoding="utf-8")
        write_marker(staging, COMMAND)


def _model_card(args: argparse.Namespace, head: OfficialHead, sha256: str) -> str:
    title = {"anomalyclip": "AnomalyCLIP", "adaclip": "AdaCLIP"}[args.family]
    rows = "\n".join(
        f"| `{name}` | {tuple(tensor.shape)} | {', '.join(f'`{key}`' for key in head.sources[name][:4])}"
        f"{' ...' if len(head.sources[name]) > 4 else ''} |"
        for name, tensor in head.tensors.items()
    )
    unused = ", ".join(f"`{key}`" for key in head.unused) or "none"
    return f"""---
library_name: transformers
tags: [anomaly-detection, {args.family}, clipada]
---

# {title}, converted from the official weights

Converted by `clipada convert-official` from the official {title} code's weight file
({OFFICIAL_REPOSITORIES[args.family]}).

| | |
|---|---|
| source file | `{Path(args.file).name}` |
| source SHA-256 | `{sha256}` |
| CLIP backbone | `{args.clip_model_name_or_path}` |
| input size | {args.image_size} x {args.image_size} (square bicubic resize, as the official code) |

The official float16 rounding of the prompts is on (`official_fp16_prompts`), so the outputs are the official
code's. Tensors dropped because the official code builds them but never uses them: {unused}.

| our tensor | shape | from |
|---|---|---|
{rows}

```python
from transformers import AutoModel

model = AutoModel.from_pretrained("{args.output_dir}", trust_remote_code=True)
```

Before deciding OK/NG, calibrate the thresholds on normal images of your line: `clipada calibrate`.
"""


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    path, output_dir = Path(args.file), Path(args.output_dir)
    with usage_errors():  # a folder we may not write, an unreadable or unfit file, a missing CLIP
        sources = [path, Path(args.clip_model_name_or_path)]
        check_output_folder(
            output_dir, COMMAND, overwrite=args.overwrite_output_dir, sources=[s for s in sources if s.exists()]
        )
        model, head = convert(
            path, args.family, args.clip_model_name_or_path, args.class_names, args.prompt_depth, _test_time(args)
        )
        sha256 = file_sha256(path)
    with usage_errors(OSError):  # a read-only folder, a full disk: one line, nothing half-written
        write_checkpoint(model, output_dir, args, head, sha256)
    dropped = f"; dropped, never used by the official code: {', '.join(head.unused)}" if head.unused else ""
    print(f"converted {path} (SHA-256 {sha256[:12]}...) into {output_dir}{dropped}")
    return output_dir


def _test_time(args: argparse.Namespace) -> dict:
    """The test-time fields the user set for the family, refusing the other family's."""
    fields = {
        "anomalyclip": {"feature_layers": args.feature_layers, "dpam_start_layer": args.dpam_start_layer},
        "adaclip": {"hsf_num_clusters": args.hsf_num_clusters},
    }
    other = "adaclip" if args.family == "anomalyclip" else "anomalyclip"
    wrong = [f"--{name}" for name, value in fields[other].items() if value is not None]
    if wrong:
        raise ValueError(f"{', '.join(wrong)} apply to --family {other}, not {args.family}")
    chosen = fields[args.family]
    if chosen.get("hsf_num_clusters") is not None:
        chosen["hsf_num_patches"] = 5 * chosen["hsf_num_clusters"]  # the official code clusters 5 x k patches
    return chosen


def cli(argv: list[str] | None = None) -> None:
    """`clipada convert-official` (also `python -m training.convert_official`)."""
    main(argv)


if __name__ == "__main__":
    cli()
