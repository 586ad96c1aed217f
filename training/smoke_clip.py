"""A small random-weight CLIP and a character-level CLIP tokenizer, written locally: the offline smoke model.

Nothing here is pretrained. It lets the whole pipeline (from_clip, training, evaluation, saving) run on a machine
with no network; real work starts from `openai/clip-vit-base-patch16`.

Example:
    ```python
    >>> folder = build_smoke_clip("outputs/smoke_clip")   # loadable like a Hub CLIP checkpoint
    >>> model = CLIPADAForAnomalySegmentation.from_clip(str(folder))
    ```
"""

import json
import string
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

START_TOKEN_ID = 57
END_TOKEN_ID = 58


def write_character_tokenizer(folder: str | Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer without merges: 26 letters, 26 word-final letters, a few signs, start/end (ids < 60)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    letters = string.ascii_lowercase
    tokens = [*letters, *(letter + "</w>" for letter in letters), "</w>", "!", ".", ",", "-"]
    vocab = {token: index for index, token in enumerate(tokens)}
    vocab["<|startoftext|>"] = START_TOKEN_ID
    vocab["<|endoftext|>"] = END_TOKEN_ID
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder)


# Sizes of transformers' CLIP ModelTester: the smallest CLIP every code path accepts (tests, `--tiny` benchmarks).
TINY_CLIP_SIZES = {"hidden_size": 32, "intermediate_size": 37, "projection_dim": 16, "image_size": 32, "patch_size": 4}


def smoke_clip_config(
    hidden_size: int = 64,
    num_vision_layers: int = 4,
    image_size: int = 96,
    patch_size: int = 8,
    intermediate_size: int | None = None,
    projection_dim: int | None = None,
) -> CLIPConfig:
    """A small CLIP configuration sized for the character tokenizer (vocabulary 60, 77 positions).

    Args:
        hidden_size: Width of both towers (4 attention heads).
        num_vision_layers: Vision encoder depth (the text encoder has 2 layers).
        image_size, patch_size: Vision input size and patch size in pixels.
        intermediate_size: MLP width, default `4 * hidden_size`.
        projection_dim: Joint embedding width, default `hidden_size`.

    Example:
        ```python
        >>> tiny = smoke_clip_config(**TINY_CLIP_SIZES)  # 32 wide, 32 px images, patch 4
        ```
    """
    common = {
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 4 * hidden_size,
        "num_attention_heads": 4,
        "projection_dim": projection_dim or hidden_size,
    }
    return CLIPConfig(
        text_config=dict(
            common,
            num_hidden_layers=2,
            vocab_size=60,
            max_position_embeddings=77,
            bos_token_id=START_TOKEN_ID,
            eos_token_id=END_TOKEN_ID,
            pad_token_id=END_TOKEN_ID,
        ),
        vision_config=dict(common, num_hidden_layers=num_vision_layers, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim or hidden_size,
    )


def build_smoke_clip(folder: str | Path, seed: int = 0, **config_kwargs) -> Path:
    """Saves a random CLIPModel and the character tokenizer to `folder`; returns it."""
    folder = Path(folder)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        CLIPModel(smoke_clip_config(**config_kwargs)).save_pretrained(folder)
    finally:
        torch.random.set_rng_state(generator_state)
    write_character_tokenizer(folder)
    return folder


__all__ = ["TINY_CLIP_SIZES", "build_smoke_clip", "smoke_clip_config", "write_character_tokenizer"]
