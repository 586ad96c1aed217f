"""The trained-weight files of the official AnomalyCLIP and AdaCLIP code, read as tensors and mapped to our names.

AnomalyCLIP's `train.py` saves `{"prompt_learner": prompt_learner.state_dict()}`; AdaCLIP's trainer saves its
`save_dict` (every `clip_model.*` tensor of its learnable modules). Files are read with
`torch.load(weights_only=True)` only: a file that needs code to unpickle is refused. Every tensor of the file is
accounted for: mapped to one of ours, used for a check, or one of the few the official code builds but never uses
(listed in `OfficialHead.unused`); anything else is an error naming it, as is a missing one.

Example:
    ```python
    >>> state = read_official_file(Path("epoch_15.pth"))
    >>> head = anomalyclip_head(state, Path("epoch_15.pth"))
    >>> head.tensors["deep_prompts"].shape, head.fields["deep_prompt_depth"]
    (torch.Size([8, 4, 768]), 9)
    ```
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

FAMILIES = ("anomalyclip", "adaclip")


class OfficialCheckpointError(ValueError):
    """An official weight file that cannot be converted; the message names the file and the tensors."""


@dataclass
class OfficialHead:
    """What a file holds, in our terms.

    Attributes:
        tensors: Our parameter names -> float32 tensors (e.g. `deep_prompts` `(depth - 1, n, width)`).
        sources: Our parameter names -> the official keys they were made from (for errors and the model card).
        fields: Config fields the file fixes (prompt sizes, token ids, which branches exist).
        unused: Official keys the official code builds and saves but never uses in a forward pass; dropped.
        checks: Official keys used only to check the pairing (AnomalyCLIP's token embeddings of its prompts).
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)
    fields: dict = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    checks: dict[str, torch.Tensor] = field(default_factory=dict)


def read_official_file(path: Path) -> dict:
    """The file's content, loaded with `torch.load(weights_only=True)` (tensors and plain containers only).

    Raises:
        OfficialCheckpointError: The file is missing, is no PyTorch file, or needs code to unpickle.
    """
    if not path.is_file():
        raise OfficialCheckpointError(f"{path}: no such file")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"PK\x03\x04" and not magic.startswith(b"\x80"):  # torch.save's zip, or a legacy pickle
        raise OfficialCheckpointError(f"{path} is not a PyTorch weight file (neither a torch.save zip nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()
        detail = next((line for line in reason if "Unsupported global" in line), reason[0] if reason else "")
        raise OfficialCheckpointError(
            f"{path} needs code to unpickle ({detail.strip()[:200]}): refused, convert-official reads tensors only "
            "(torch.load weights_only=True)"
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OfficialCheckpointError(f"{path} is not a PyTorch weight file ({first[:200]})") from error


def official_family(state: object) -> str | None:
    """`"anomalyclip"` or `"adaclip"` from the file's layout, or None when it is neither."""
    if isinstance(state, dict) and isinstance(state.get("prompt_learner"), dict):
        return "anomalyclip"
    if isinstance(state, dict) and state and all(isinstance(key, str) for key in state):
        if any(key.startswith("clip_model.") for key in state):
            return "adaclip"
    return None


def check_family(state: object, family: str, path: Path) -> dict[str, torch.Tensor]:
    """The file's flat `{name: tensor}` dict, after checking that it is `family`'s.

    Raises:
        OfficialCheckpointError: The file is the other family's, or neither's, or holds something but tensors.
    """
    found = official_family(state)
    if found != family:
        what = f"an {_title(found)} file" if found else "neither an AnomalyCLIP nor an AdaCLIP weight file"
        layouts = "AnomalyCLIP: {'prompt_learner': {...}}; AdaCLIP: {'clip_model.*': tensor}"
        hint = f"; pass --family {found}" if found else f" (expected layouts: {layouts})"
        raise OfficialCheckpointError(f"{path} is {what}, not an {_title(family)} one{hint}")
    flat = state["prompt_learner"] if family == "anomalyclip" else state
    not_tensors = sorted(key for key, value in flat.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise OfficialCheckpointError(f"{path}: entries that are not tensors: {_show(not_tensors)}")
    return flat


def anomalyclip_head(state: dict[str, torch.Tensor], path: Path) -> OfficialHead:
    """AnomalyCLIP's prompt learner in our names.

    `ctx_pos` / `ctx_neg` `(1, 1, N, C)` -> `normal_prompt_vectors` / `abnormal_prompt_vectors` `(N, C)`;
    `compound_prompts_text.k` `(n, C)` -> `deep_prompts[k]`; `tokenized_prompts_*` give the prompt token ids;
    `token_prefix_*` / `token_suffix_*` (the CLIP's token embeddings of the prompts) are kept to check the backbone;
    `compound_prompt_projections.*` are never used by the official code and dropped.

    Raises:
        OfficialCheckpointError: A missing or left-over tensor, or a wrong shape, naming them.
    """
    head = OfficialHead()
    keys = set(state)
    deep_keys = _numbered(keys, r"compound_prompts_text\.(\d+)", path)
    required = {"ctx_pos", "ctx_neg", "tokenized_prompts_pos", "tokenized_prompts_neg"}
    required |= {f"token_{part}_{sign}" for part in ("prefix", "suffix") for sign in ("pos", "neg")}
    _require(keys, required, path)
    head.unused = sorted(key for key in keys if re.fullmatch(r"compound_prompt_projections\.\d+\.(weight|bias)", key))
    _no_left_overs(keys - required - set(deep_keys) - set(head.unused), path)

    vectors = {}
    for key, ours in (("ctx_pos", "normal_prompt_vectors"), ("ctx_neg", "abnormal_prompt_vectors")):
        tensor = _floating(state, key, path)
        if tensor.ndim != 4 or tensor.shape[:2] != (1, 1):
            raise OfficialCheckpointError(
                f"{path}: {key} must have shape (1, 1, N, C) (one class, one state, as the official prompt learner "
                f"builds it), got {tuple(tensor.shape)}"
            )
        vectors[ours] = tensor[0, 0]
        head.sources[ours] = [key]
    if vectors["normal_prompt_vectors"].shape != vectors["abnormal_prompt_vectors"].shape:
        raise OfficialCheckpointError(
            f"{path}: ctx_pos {tuple(state['ctx_pos'].shape)} and ctx_neg {tuple(state['ctx_neg'].shape)} must "
            "have the same shape"
        )
    head.tensors |= vectors
    num_vectors, width = vectors["normal_prompt_vectors"].shape
    deep = [_floating(state, key, path) for key in deep_keys]
    for key, tensor in zip(deep_keys, deep):
        if tensor.ndim != 2 or tensor.shape[1] != width or tensor.shape != deep[0].shape:
            raise OfficialCheckpointError(
                f"{path}: {key} must have shape (n, {width}) like every compound_prompts_text tensor, "
                f"got {tuple(tensor.shape)}"
            )
    length = deep[0].shape[0] if deep else 0
    head.tensors["deep_prompts"] = torch.stack(deep) if deep else torch.empty(0, 0, width)
    head.sources["deep_prompts"] = deep_keys
    head.fields = {
        "num_prompt_vectors": num_vectors,
        "deep_prompt_length": length,
        "deep_prompt_depth": len(deep) + 1,
    }
    for sign, ours in (("pos", "normal"), ("neg", "abnormal")):
        key = f"tokenized_prompts_{sign}"
        row = state[key]
        if row.dtype.is_floating_point or row.shape != (1, 1, row.shape[-1]):
            raise OfficialCheckpointError(f"{path}: {key} must be integer token ids of shape (1, 1, L)")
        row = row.flatten().tolist()
        end = max(range(len(row)), key=row.__getitem__)  # the official code pools at the argmax (the end token)
        if end <= num_vectors:
            raise OfficialCheckpointError(f"{path}: {key} has no words after its {num_vectors} prompt vectors")
        head.fields[f"{ours}_prompt_token_ids"] = [row[0], *row[1 + num_vectors : end + 1]]
        head.checks[f"{ours}_token_ids_with_vectors"] = torch.tensor(row)
        for part in ("prefix", "suffix"):
            head.checks[f"token_{part}_{sign}"] = _floating(state, f"token_{part}_{sign}", path)
    return head


def adaclip_head(state: dict[str, torch.Tensor], path: Path, prompt_depth: int | None = None) -> OfficialHead:
    """AdaCLIP's learnable modules in our names.

    `text_prompter.static_prompts.k` (k >= 1) -> `static_text_prompts[k - 1]` (the official layer-1 text prompt is
    never used and dropped); `visual_prompter.static_prompts.k` -> `static_visual_prompts[k]`; the `n` Linear layers
    of each dynamic prompt generator -> one Linear (their rows concatenated); `patch_token_layer.head.i` ->
    `patch_projections.i`; `cls_token_layer.head.0` -> `class_projection`.

    Args:
        state: The file's `{key: tensor}`.
        path: The file, for errors.
        prompt_depth: The prompt depth, needed only for a file without static prompts (official type "D").

    Raises:
        OfficialCheckpointError: A missing or left-over tensor, or a wrong shape, naming them.
    """
    prefix = "clip_model."
    outside = sorted(key for key in state if not key.startswith(prefix))
    if outside:
        raise OfficialCheckpointError(f"{path}: tensors left over (not under {prefix}): {_show(outside)}")
    keys = {key.removeprefix(prefix) for key in state}
    tensor_of = {key.removeprefix(prefix): value for key, value in state.items()}
    head = OfficialHead()
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return _floating(tensor_of, key, path, prefix)

    text_static = _numbered(keys, r"text_prompter\.static_prompts\.(\d+)", path, prefix)
    visual_static = _numbered(keys, r"visual_prompter\.static_prompts\.(\d+)", path, prefix)
    generators = {
        kind: _numbered(keys, rf"dynamic_{kind}_prompt_generator\.head\.(\d+)\.weight", path, prefix)
        for kind in ("text", "visual")
    }
    patches = _numbered(keys, r"patch_token_layer\.head\.(\d+)\.weight", path, prefix)
    _require(keys, {"cls_token_layer.head.0.weight", "cls_token_layer.head.0.bias"}, path, prefix)
    if not patches:
        _require(keys, {"patch_token_layer.head.0.weight"}, path, prefix)
    depths = {len(found) for found in (text_static, visual_static) if found}
    if len(depths) > 1:
        raise OfficialCheckpointError(
            f"{path}: {len(text_static)} text and {len(visual_static)} visual static prompts; the official code "
            "builds the same number (prompting_depth) for both"
        )
    static = bool(text_static or visual_static)
    dynamic = bool(generators["text"] or generators["visual"])
    if not static and not dynamic:
        raise OfficialCheckpointError(f"{path}: no prompts (no {prefix}*_prompter.* nor *_prompt_generator.* tensors)")
    depth = depths.pop() if depths else prompt_depth
    if depth is None:
        raise OfficialCheckpointError(
            f"{path} has dynamic prompts only (official type 'D'), which do not tell the prompt depth: pass "
            "--prompt_depth (the official default is 4)"
        )
    if text_static:
        head.unused.append(prefix + text_static[0])
        used.add(text_static[0])
        stacked = [take(key) for key in text_static[1:]]
        _same_shapes(text_static[1:], stacked, path, prefix)
        empty = torch.empty(0, *tensor_of[text_static[0]].shape)  # prompt depth 1: no text layer is prompted
        head.tensors["static_text_prompts"] = torch.stack(stacked) if stacked else empty
        head.sources["static_text_prompts"] = [prefix + key for key in text_static[1:]]
    if visual_static:
        stacked = [take(key) for key in visual_static]
        _same_shapes(visual_static, stacked, path, prefix)
        head.tensors["static_visual_prompts"] = torch.stack(stacked)
        head.sources["static_visual_prompts"] = [prefix + key for key in visual_static]
    lengths = {prompts.shape[-2] for prompts in head.tensors.values() if prompts is not None and prompts.ndim == 3}
    for kind, weights in generators.items():
        if not weights:
            continue
        ours = f"dynamic_{kind}_prompt_generator"
        biases = [key.replace(".weight", ".bias") for key in weights]
        _require(keys, set(biases), path, prefix)
        weight_tensors, bias_tensors = [take(key) for key in weights], [take(key) for key in biases]
        _same_shapes(weights, weight_tensors, path, prefix)
        _same_shapes(biases, bias_tensors, path, prefix)
        head.tensors[f"{ours}.weight"] = torch.cat(weight_tensors)
        head.tensors[f"{ours}.bias"] = torch.cat(bias_tensors)
        head.sources[f"{ours}.weight"] = [prefix + key for key in weights]
        head.sources[f"{ours}.bias"] = [prefix + key for key in biases]
        lengths.add(len(weights))
    if len(lengths) > 1:
        raise OfficialCheckpointError(
            f"{path}: the prompts disagree on their length (prompting_length): {sorted(lengths)}"
        )
    for index, key in enumerate(patches):
        for part in ("weight", "bias"):
            name = key.replace(".weight", f".{part}")
            _require(keys, {name}, path, prefix)
            head.tensors[f"patch_projections.{index}.{part}"] = take(name)
            head.sources[f"patch_projections.{index}.{part}"] = [prefix + name]
    for part in ("weight", "bias"):
        head.tensors[f"class_projection.{part}"] = take(f"cls_token_layer.head.0.{part}")
        head.sources[f"class_projection.{part}"] = [f"{prefix}cls_token_layer.head.0.{part}"]
    _no_left_overs({prefix + key for key in keys - used}, path)
    head.fields = {
        "prompt_length": lengths.pop(),
        "prompt_depth": depth,
        "static_prompts": static,
        "dynamic_prompts": dynamic,
        "text_prompts": bool(text_static or generators["text"]),
        "visual_prompts": bool(visual_static or generators["visual"]),
        "num_feature_layers": len(patches),
    }
    return head


# ---------------------------------------------------------------------- helpers


def _title(family: str | None) -> str:
    return {"anomalyclip": "AnomalyCLIP", "adaclip": "AdaCLIP"}.get(family, str(family))


def _show(names, limit: int = 8) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _numbered(keys: set[str], pattern: str, path: Path, prefix: str = "") -> list[str]:
    """The keys matching `pattern` (one `(\\d+)` group), ordered by number; the numbers must be 0..k-1."""
    found = {int(match.group(1)): key for key in keys if (match := re.fullmatch(pattern, key))}
    missing = [pattern.replace(r"(\d+)", str(index)).replace("\\", "") for index in range(max(found, default=-1) + 1)]
    missing = [prefix + name for index, name in enumerate(missing) if index not in found]
    if missing:
        raise OfficialCheckpointError(f"{path}: missing tensors: {_show(missing)}")
    return [found[index] for index in sorted(found)]


def _require(keys: set[str], required: set[str], path: Path, prefix: str = "") -> None:
    missing = sorted(prefix + key for key in required - keys)
    if missing:
        raise OfficialCheckpointError(f"{path}: missing tensors: {_show(missing)}")


def _no_left_overs(left: set[str], path: Path) -> None:
    if left:
        raise OfficialCheckpointError(
            f"{path}: tensors left over (no place in the model, not known as unused): {_show(left)}"
        )


def _floating(state: dict[str, torch.Tensor], key: str, path: Path, prefix: str = "") -> torch.Tensor:
    tensor = state[key]
    if not tensor.dtype.is_floating_point:
        raise OfficialCheckpointError(f"{path}: {prefix}{key} must be floating point, got {tensor.dtype}")
    return tensor.detach().to(torch.float32)


def _same_shapes(keys: list[str], tensors: list[torch.Tensor], path: Path, prefix: str) -> None:
    for key, tensor in zip(keys, tensors):
        if tensor.shape != tensors[0].shape:
            raise OfficialCheckpointError(
                f"{path}: {prefix}{key} has shape {tuple(tensor.shape)}, {prefix}{keys[0]} "
                f"{tuple(tensors[0].shape)}; they must match"
            )


__all__ = [
    "FAMILIES",
    "OfficialCheckpointError",
    "OfficialHead",
    "adaclip_head",
    "anomalyclip_head",
    "check_family",
    "official_family",
    "read_official_file",
]
