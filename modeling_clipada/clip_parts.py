"""Pieces of a frozen transformers CLIP that every model family here uses: prompted text pass, checks, post-processing.

Example:
    ```python
    >>> text = encode_prompted_text(clip.text_model, clip.text_projection, inputs_embeds, end_positions)
    >>> anomaly_map = upsample_and_smooth(patch_map, size=(518, 518), sigma=4.0, border="symmetric")
    ```
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn
from transformers.masking_utils import create_causal_mask

# How the Gaussian treats the map's border: "reflect" mirrors about the edge pixel (torch's `F.pad` "reflect",
# `d c b | a b c d`; the edge repeated when the map is narrower than the kernel radius), "symmetric" mirrors
# about the edge itself (`c b a | a b c`, scipy.ndimage.gaussian_filter's default, which the peers' code uses).
BORDER_MODES = ("reflect", "symmetric")


def encode_prompted_text(
    text_model: nn.Module,
    text_projection: nn.Module,
    inputs_embeds: torch.Tensor,
    end_positions: torch.Tensor,
    deep_prompts: torch.Tensor | None = None,
) -> torch.Tensor:
    """`CLIPTextModel`'s forward on token embeddings, optionally with learnable tokens inserted inside the encoder.

    Args:
        text_model: `CLIPModel.text_model`.
        text_projection: `CLIPModel.text_projection`.
        inputs_embeds: `(batch_size, length, text_hidden_size)` token embeddings (learnable vectors already in
            place), before the position embeddings.
        end_positions: `(batch_size,)` index of each sequence's end-of-text token, where it is pooled. Positions
            after it never matter (causal attention), so shorter sequences may be padded with anything.
        deep_prompts: `(depth - 1, n, text_hidden_size)`, optional: before encoder layer k (k = 1..depth - 1,
            counted from 0) positions 1..n of every sequence are replaced by `deep_prompts[k - 1]`; or
            `(depth - 1, batch_size, n, text_hidden_size)`: tokens of their own for every sequence.

    Returns:
        `(batch_size, projection_dim)`, not normalised.
    """
    hidden_states = text_model.embeddings(inputs_embeds=inputs_embeds)
    causal_mask = create_causal_mask(
        config=text_model.config, inputs_embeds=hidden_states, attention_mask=None, cache=None
    )
    num_deep = 0 if deep_prompts is None else deep_prompts.shape[0]
    for index, layer in enumerate(text_model.encoder.layers):
        if 1 <= index <= num_deep:
            tokens = deep_prompts[index - 1].to(hidden_states.dtype)
            tokens = tokens.expand(hidden_states.shape[0], -1, -1)
            hidden_states = torch.cat([hidden_states[:, :1], tokens, hidden_states[:, 1 + tokens.shape[1] :]], dim=1)
        hidden_states = layer(hidden_states, causal_mask, is_causal=True)
    hidden_states = text_model.final_layer_norm(hidden_states)
    pooled = hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), end_positions]
    return text_projection(pooled)


def check_pixel_values(pixel_values: torch.Tensor, patch_size: int, dtype: torch.dtype) -> torch.Tensor:
    """Checks a batch of images and casts it to `dtype`.

    Args:
        pixel_values: `(batch_size, 3, H, W)`, floating point, non-empty, H and W multiples of `patch_size`.
        patch_size: The ViT patch size in pixels.
        dtype: The dtype of the model's head.

    Returns:
        `pixel_values` in `dtype`.

    Raises:
        ValueError: Naming `pixel_values` and its shape.
    """
    if not isinstance(pixel_values, torch.Tensor):
        raise ValueError(f"`pixel_values` must be a (batch, 3, height, width) tensor, got {type(pixel_values)}.")
    shape = tuple(pixel_values.shape)
    if pixel_values.ndim != 4 or shape[1] != 3 or 0 in shape:
        raise ValueError(f"`pixel_values` must be a non-empty (batch, 3, height, width) tensor, got shape {shape}.")
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"`pixel_values` must be floating point (CLIP-normalised), got {pixel_values.dtype} of shape {shape}."
        )
    if shape[-2] % patch_size or shape[-1] % patch_size:
        raise ValueError(
            f"`pixel_values` height and width must be multiples of the patch size {patch_size}, got shape {shape}."
        )
    return pixel_values.to(dtype)


def check_masks(labels: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Checks ground-truth masks: one per image, values in [0, 1].

    Args:
        labels: `(batch_size, H, W)` or `(batch_size, 1, H, W)`.
        batch_size: The number of images.
        device: Where the masks go.

    Returns:
        `(batch_size, H, W)` float masks (soft values kept).

    Raises:
        ValueError: `labels` of the wrong shape, with NaN, or with values outside [0, 1] (e.g. 0/255 masks).
    """
    labels = labels.to(device)
    if labels.ndim == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 3 or labels.shape[0] != batch_size:
        raise ValueError(f"`labels` must be (batch, H, W) or (batch, 1, H, W) masks, got {tuple(labels.shape)}.")
    labels = labels.float()
    low, high = (value.item() for value in labels.aminmax())
    if not 0 <= low <= high <= 1:  # also catches NaN, which fails every comparison
        raise ValueError(
            f"`labels` must be masks with values in [0, 1] (1 = anomalous), got values from {low} to {high} "
            "(divide 0/255 masks by 255)."
        )
    return labels


def binary_masks(labels: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """`check_masks`, then binarised at 0.5, as the peers' official code does: `(batch_size, H, W)` of 0 and 1."""
    return (check_masks(labels, batch_size, device) > 0.5).float()


def upsample_and_smooth(maps: torch.Tensor, size: tuple[int, int], sigma: float, border: str) -> torch.Tensor:
    """Bilinear upsampling (`align_corners=False`) of patch-grid maps, then Gaussian smoothing.

    Both steps are linear and separable, so they are applied as one `(H, h)` matrix on the rows and one `(W, w)`
    matrix on the columns: the map of upsampling then convolving, up to float rounding, at a fraction of the cost.

    Args:
        maps: `(batch_size, h, w)`.
        size: The output size `(H, W)`.
        sigma: Standard deviation of the Gaussian in pixels (radius `round(4 sigma)`); 0 skips the smoothing.
        border: One of `BORDER_MODES`.

    Returns:
        `(batch_size, H, W)`.
    """
    rows, columns = upsample_and_smooth_matrices(
        tuple(maps.shape[-2:]), tuple(size), float(sigma), maps.device, maps.dtype, border
    )
    return rows @ maps @ columns.T


def smooth_maps(maps: torch.Tensor, sigma: float, border: str) -> torch.Tensor:
    """Gaussian smoothing of maps already at their final size (`upsample_and_smooth` with nothing to upsample).

    Args:
        maps: `(batch_size, H, W)`.
        sigma: Standard deviation of the Gaussian in pixels (radius `round(4 sigma)`); 0 returns `maps` unchanged.
        border: One of `BORDER_MODES`.

    Returns:
        `(batch_size, H, W)`.
    """
    return upsample_and_smooth(maps, tuple(maps.shape[-2:]), sigma, border) if sigma > 0 else maps


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised Gaussian kernel (float64, CPU).

    Args:
        sigma: Standard deviation in pixels, > 0.

    Returns:
        `(2 * radius + 1,)` with radius `max(1, round(4 sigma))` (scipy's `truncate=4.0`).
    """
    radius = max(1, int(4.0 * sigma + 0.5))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def _pad_border(lines: torch.Tensor, radius: int, border: str, size: tuple[int, int]) -> torch.Tensor:
    """Pads `(cells, 1, length)` impulse responses by `radius` on both ends as `border` says.

    Args:
        lines: `(cells, 1, length)`.
        radius: The kernel radius.
        border: One of `BORDER_MODES`.
        size: The full output size `(H, W)`; "reflect" falls back to repeating the edge when `radius` is not
            below its smaller side (torch's reflection needs a narrower border).

    Returns:
        `(cells, 1, length + 2 * radius)`.
    """
    if border == "reflect":
        return F.pad(lines, (radius, radius), mode="reflect" if radius < min(size) else "replicate")
    if border != "symmetric":
        raise ValueError(f"`border` must be one of {BORDER_MODES}, got {border!r}.")
    length = lines.shape[-1]
    index = torch.arange(-radius, length + radius) % (2 * length)  # period 2L: a b c | c b a | a b c
    index = torch.where(index < length, index, 2 * length - 1 - index)
    return lines[..., index]


@functools.lru_cache(maxsize=32)
def upsample_and_smooth_matrices(
    grid: tuple[int, int],
    size: tuple[int, int],
    sigma: float,
    device: torch.device,
    dtype: torch.dtype,
    border: str = "reflect",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column matrices of bilinear upsampling followed by Gaussian smoothing with the given border.

    Built once per argument set by applying the two operators to unit impulses (in float64 on the CPU, then moved).

    Args:
        grid: The patch grid `(h, w)`.
        size: The output size `(H, W)`.
        sigma: Standard deviation of the Gaussian in pixels; 0 skips the smoothing.
        device: Where the matrices go.
        dtype: Their dtype.
        border: One of `BORDER_MODES`.

    Returns:
        `(rows, columns)` of shapes `(H, h)` and `(W, w)`.
    """
    kernel = gaussian_kernel(sigma) if sigma > 0 else None
    matrices = []
    for cells, length in zip(grid, size):
        identity = torch.eye(cells, dtype=torch.float64)[None, None]
        matrix = F.interpolate(identity, size=(length, cells), mode="bilinear", align_corners=False)[0, 0]
        if kernel is not None:
            impulses = _pad_border(matrix.T[:, None], kernel.numel() // 2, border, size)
            matrix = F.conv1d(impulses, kernel.view(1, 1, -1))[:, 0].T  # (length, cells)
        matrices.append(matrix.to(device=device, dtype=dtype).contiguous())
    return matrices[0], matrices[1]


__all__ = [
    "BORDER_MODES",
    "binary_masks",
    "check_masks",
    "check_pixel_values",
    "encode_prompted_text",
    "gaussian_kernel",
    "smooth_maps",
    "upsample_and_smooth",
    "upsample_and_smooth_matrices",
]
