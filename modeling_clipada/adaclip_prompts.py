"""AdaCLIP's prompts: the state x template sentences of each class name, and hybrid (static + dynamic) prompt tokens.

Example:
    ```python
    >>> sentences = prompt_sentences("metal_nut", NORMAL_STATES, ABNORMAL_STATES, PROMPT_TEMPLATES)
    >>> len(sentences), sentences[0], sentences[-1]
    (48, 'a bad photo of a metal_nut.', 'a cropped photo of the metal_nut with damage.')
    >>> tokens = hybrid_prompts(static, dynamic)   # (depth, n, C) + (batch, n, C) -> (depth, batch, n, C)
    ```
"""

import torch
import torch.nn.functional as F
from torch import nn

from .clip_parts import encode_prompted_text
from .configuration_adaclip import ABNORMAL_STATES, NORMAL_STATES, PROMPT_TEMPLATES  # the defaults, re-exported


def prompt_sentences(
    class_name: str, normal_states: list[str], abnormal_states: list[str], templates: list[str]
) -> list[str]:
    """Every state of a class name in every template: normal states first, state-major, as the official code orders.

    Args:
        class_name: The category, e.g. `"metal_nut"`; hyphens become spaces as in the official code.
        normal_states: Normal state phrases with one `{}`.
        abnormal_states: Abnormal state phrases with one `{}`.
        templates: Sentence templates with one `{}`.

    Returns:
        `(len(normal_states) + len(abnormal_states)) * len(templates)` sentences.
    """
    name = class_name.replace("-", " ")
    states = [*normal_states, *abnormal_states]
    return [template.format(state.format(name)) for state in states for template in templates]


def tokenize_sentences(sentences: list[str], tokenizer) -> list[list[int]]:
    """CLIP token ids of each sentence with the start and end tokens.

    Args:
        sentences: Plain text.
        tokenizer: A `CLIPTokenizer` (or any tokenizer with `bos_token_id` and `eos_token_id`).

    Returns:
        One list of ids per sentence.
    """
    ids = tokenizer(sentences, add_special_tokens=False)["input_ids"]
    return [[tokenizer.bos_token_id, *sentence, tokenizer.eos_token_id] for sentence in ids]


def hybrid_prompts(static: torch.Tensor | None, dynamic: torch.Tensor | None, depth: int) -> torch.Tensor:
    """The prompt tokens of every prompted layer: the static ones plus the image's dynamic ones, or either alone.

    The same dynamic tokens are added in every prompted layer, as in the official code.

    Args:
        static: `(depth, n, C)` learnable tokens, or None.
        dynamic: `(batch_size, n, C)` tokens generated from each image, or None.
        depth: Number of prompted layers (the first axis of the result).

    Returns:
        `(depth, n, C)` when only static tokens are given, else `(depth, batch_size, n, C)`.

    Raises:
        ValueError: Both are None.
    """
    if static is None and dynamic is None:
        raise ValueError("hybrid_prompts needs static or dynamic prompts.")
    if dynamic is None:
        return static
    if static is None:
        return dynamic.unsqueeze(0).expand(depth, -1, -1, -1)
    return static.unsqueeze(1) + dynamic.unsqueeze(0)


def state_ensemble_embeddings(
    text_model: nn.Module,
    text_projection: nn.Module,
    sentences: list[list[int]],
    num_normal: int,
    sentences_per_name: int,
    deep_prompts: torch.Tensor | None,
    min_length: int,
) -> torch.Tensor:
    """Each class name's normal and abnormal text embeddings, as the official state x template ensemble.

    Per state: the normalised mean of the normalised embeddings of its sentences.

    Args:
        text_model: `CLIPModel.text_model`.
        text_projection: `CLIPModel.text_projection`.
        sentences: Token ids (start and end included) of `sentences_per_name` sentences per class name, the
            `num_normal` normal ones first.
        num_normal: Normal sentences per class name.
        sentences_per_name: Sentences per class name.
        deep_prompts: Tokens for text layers 2..depth, `(depth - 1, n, C)` or `(depth - 1, len(sentences), n, C)`,
            or None (see `encode_prompted_text`).
        min_length: Sequences are zero-padded to at least this length (the prompts must fit after the start token).

    Returns:
        `(len(sentences) // sentences_per_name, 2, projection_dim)`, L2-normalised: `[:, 0]` normal, `[:, 1]` abnormal.
    """
    device = text_model.embeddings.token_embedding.weight.device
    length = max(min_length, *(len(token_ids) for token_ids in sentences))
    padded = torch.tensor([ids + [0] * (length - len(ids)) for ids in sentences], device=device)
    ends = torch.tensor([len(ids) - 1 for ids in sentences], device=device)
    inputs_embeds = text_model.embeddings.token_embedding(padded)
    text = encode_prompted_text(text_model, text_projection, inputs_embeds, ends, deep_prompts)
    text = F.normalize(text, dim=-1).view(-1, sentences_per_name, text.shape[-1])
    states = [text[:, :num_normal].mean(dim=1), text[:, num_normal:].mean(dim=1)]
    return F.normalize(torch.stack(states, dim=1), dim=-1)


__all__ = [
    "ABNORMAL_STATES",
    "NORMAL_STATES",
    "PROMPT_TEMPLATES",
    "hybrid_prompts",
    "prompt_sentences",
    "state_ensemble_embeddings",
    "tokenize_sentences",
]
