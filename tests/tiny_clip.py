"""Tiny random CLIP checkpoints and tokenizers for offline tests (transformers' ModelTester sizes).

Example:
    ```python
    >>> clip, tokenizer = make_tiny_clip(tmp_path)          # also saved to tmp_path as a CLIP checkpoint
    >>> model = CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer, num_refinements=1)
    ```
"""

import gzip
import json
import tempfile
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from training.smoke_clip import TINY_CLIP_SIZES, smoke_clip_config, write_character_tokenizer

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
IMAGE_SIZE = TINY_CLIP_SIZES["image_size"]
PATCH_SIZE = TINY_CLIP_SIZES["patch_size"]


def tiny_clip_config(num_vision_layers: int = 4) -> CLIPConfig:
    """CLIP with hidden width 32, 4 heads, 2 text layers, `num_vision_layers` vision layers, 32 px, patch 4."""
    return smoke_clip_config(**TINY_CLIP_SIZES, num_vision_layers=num_vision_layers)


def write_tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    """The project's character-level CLIP tokenizer (ids < 60, start 57, end 58)."""
    return write_character_tokenizer(folder)


def write_real_clip_tokenizer(folder: Path) -> CLIPTokenizer | None:
    """The real CLIP BPE tokenizer built from ../shared/clip-bpe, or None when that folder is absent."""
    bpe_file = SHARED_DIR / "clip-bpe" / "bpe_simple_vocab_16e6.txt.gz"
    if not bpe_file.is_file():
        return None
    lines = gzip.open(bpe_file, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(bytes_to_unicode().values())
    vocab_list = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(vocab_list)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(folder)


def make_tiny_clip(
    folder: Path | None = None, num_vision_layers: int = 4, seed: int = 0
) -> tuple[CLIPModel, CLIPTokenizer]:
    """A random tiny CLIPModel and its tokenizer; both saved to `folder` (a loadable CLIP checkpoint) when given."""
    torch.manual_seed(seed)
    clip = CLIPModel(tiny_clip_config(num_vision_layers)).eval()
    tokenizer_folder = folder if folder is not None else Path(tempfile.mkdtemp())
    tokenizer = write_tiny_tokenizer(tokenizer_folder)
    if folder is not None:
        clip.save_pretrained(folder)
    return clip, tokenizer
