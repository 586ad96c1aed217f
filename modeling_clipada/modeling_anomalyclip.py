"""AnomalyCLIP: zero-shot anomaly segmentation with object-agnostic learnable prompts on a frozen CLIP.

The method as the official code (github.com/zqhang/AnomalyCLIP) computes it; the comments in `forward` use these
step numbers:
1. text: two object-agnostic prompts, "[V_1..V_N] object." and "[W_1..W_N] damaged object.", with learnable
   deep tokens replacing positions 1..n at the input of text layers 2..depth, give a normal and an abnormal
   text embedding;
2. vision: from layer `dpam_start_layer` on, a second path sums the layers' value-value attention (DPAM) of the
   original path's states; the original path (CLIP's own attention and MLP) goes on unchanged and its class token,
   projected without the final layer norm, is the global embedding; the patch tokens of the DPAM path at
   `feature_layers`, layer-normed and projected, are the local embeddings;
3. similarities: cosine similarity / temperature, softmax over (normal, abnormal), per patch and for the image;
4. loss: cross-entropy of the image + per layer focal + dice(abnormal, mask) + dice(normal, 1 - mask);
5. post-processing: per layer (p_abnormal + 1 - p_normal) / 2, summed over layers, bilinear upsampling, Gaussian
   smoothing; the image score is the abnormal probability of the global embedding.

Example:
    ```python
    >>> from modeling_clipada import AnomalyCLIPForAnomalySegmentation
    >>> model = AnomalyCLIPForAnomalySegmentation.from_clip("openai/clip-vit-large-patch14-336")
    >>> outputs = model(pixel_values)        # pixel_values (B, 3, 518, 518), CLIP-normalised
    >>> outputs.anomaly_map.shape, outputs.pred_score.shape
    (torch.Size([B, 518, 518]), torch.Size([B]))
    ```
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, CLIPTokenizer
from transformers import initialization as init
from transformers.utils import ModelOutput

from .anomalyclip_loss import anomalyclip_loss
from .clip_parts import (
    binary_masks,
    check_pixel_values,
    encode_prompted_text,
    upsample_and_smooth,
)
from .configuration_anomalyclip import AnomalyCLIPConfig
from .decisions import apply_thresholds, normalize_scores, per_image_thresholds
from .pretrained import AnomalyDetectionPreTrainedModel
from .reference_memory import ReferenceMemory, fuse_maps, memory_patch_map, score_with_global


@dataclass
class AnomalyCLIPOutput(ModelOutput):
    """Output of [`AnomalyCLIPForAnomalySegmentation`]; (h, w) = (H / patch_size, W / patch_size) is the patch grid.

    Attributes:
        loss: `()`, only when `labels` are given: `ce + pixel_loss_weight * sum_layers(focal + 2 dice)`.
        logits: `(batch_size, 2)`, (normal, abnormal) logits of the global embedding (similarity / temperature).
        layer_logits: One `(batch_size, 2, h, w)` tensor per feature layer: (normal, abnormal) patch logits.
        anomaly_map: `(batch_size, H, W)`, the mean over feature layers of (p_abnormal + 1 - p_normal) / 2,
            upsampled bilinearly to the input resolution and smoothed; in [0, 1] (the official code sums the layers).
        pred_score: `(batch_size,)`, image anomaly score: the abnormal probability of the global embedding.
        pred_label: `(batch_size,)` bool, only with calibrated thresholds: `pred_score >= image_threshold`.
        pred_mask: `(batch_size, H, W)` bool, only with calibrated thresholds: `anomaly_map >= pixel_threshold`.
        pred_score_normalized: `(batch_size,)`, only with calibrated thresholds: `pred_score` mapped to [0, 1]
            with the image threshold at 0.5.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    layer_logits: tuple[torch.FloatTensor, ...] | None = None
    anomaly_map: torch.FloatTensor | None = None
    pred_score: torch.FloatTensor | None = None
    pred_label: torch.BoolTensor | None = None
    pred_mask: torch.BoolTensor | None = None
    pred_score_normalized: torch.FloatTensor | None = None


class AnomalyCLIPPreTrainedModel(AnomalyDetectionPreTrainedModel):
    """Config class and head initialisation of AnomalyCLIP; strict loading and saving as every family's."""

    config_class = AnomalyCLIPConfig
    config: AnomalyCLIPConfig

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        """Initialises the prompts as the official code does (normal, std 0.02); never overwrites loaded tensors."""
        if isinstance(module, AnomalyCLIPForAnomalySegmentation):
            for parameter in (module.normal_prompt_vectors, module.abnormal_prompt_vectors, module.deep_prompts):
                init.normal_(parameter, std=0.02)


class AnomalyCLIPForAnomalySegmentation(AnomalyCLIPPreTrainedModel):
    """A frozen CLIP with AnomalyCLIP's trainable prompts: two object-agnostic prompts and deep text tokens.

    Build it from a pre-trained CLIP with [`from_clip`]; reload a trained one with `from_pretrained`.

    Args:
        config: The frozen CLIP's and the head's configuration.
    """

    def __init__(self, config: AnomalyCLIPConfig):
        super().__init__(config)
        config.validate_head()
        self.clip = CLIPModel(config)
        self.clip.requires_grad_(False)
        width = config.text_config.hidden_size
        self.normal_prompt_vectors = nn.Parameter(torch.empty(config.num_prompt_vectors, width))
        self.abnormal_prompt_vectors = nn.Parameter(torch.empty(config.num_prompt_vectors, width))
        self.deep_prompts = nn.Parameter(torch.empty(config.deep_prompt_depth - 1, config.deep_prompt_length, width))
        # few-shot memory of the DPAM patch embeddings (empty unless `fit_reference` filled it)
        self.reference_memory = ReferenceMemory(
            config.reference_memory_sizes, len(config.feature_layers), config.projection_dim
        )
        self.post_init()

    @classmethod
    def from_clip(
        cls, model_or_path: "str | CLIPModel", tokenizer: CLIPTokenizer | None = None, **config_overrides
    ) -> "AnomalyCLIPForAnomalySegmentation":
        """Builds AnomalyCLIP around a pre-trained CLIP: copies its weights and tokenises the two prompts.

        Args:
            model_or_path: A Hub id (the published setting: `"openai/clip-vit-large-patch14-336"`), a local folder
                with a CLIP checkpoint, or a `CLIPModel` instance.
            tokenizer: The CLIP tokenizer; loaded from `model_or_path` when it is a path or id. Required when
                `model_or_path` is an instance.
            **config_overrides: [`AnomalyCLIPConfig`] head fields (`feature_layers=[6, 12, 18, 24]`, ...).

        Returns:
            The model with CLIP's weights, freshly initialised prompts, and the prompt token ids filled.

        Raises:
            ValueError: `model_or_path` is an instance and `tokenizer` is missing, or a head field is invalid.
        """
        if isinstance(model_or_path, CLIPModel):
            clip = model_or_path
            if tokenizer is None:
                raise ValueError("`tokenizer` is required when `from_clip` is given a CLIPModel instance.")
        else:
            clip = CLIPModel.from_pretrained(model_or_path)
            tokenizer = tokenizer or CLIPTokenizer.from_pretrained(model_or_path)
        clip_config = clip.config.to_dict()
        for key in ("architectures", "model_type", "transformers_version", "auto_map", "dtype"):
            clip_config.pop(key, None)
        token_ids = {}
        for name in ("normal_prompt", "abnormal_prompt"):
            text = config_overrides.get(name, getattr(AnomalyCLIPConfig, name))
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            token_ids[f"{name}_token_ids"] = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
        model = cls(AnomalyCLIPConfig(**{**clip_config, **config_overrides}, **token_ids))
        model.clip.load_state_dict(clip.state_dict())
        return model.to(clip.dtype)

    # ------------------------------------------------------------------ step 1: the two text embeddings

    def text_embeddings(self) -> torch.Tensor:
        """The normal and abnormal prompts' text embeddings.

        Returns:
            `(2, projection_dim)`, L2-normalised: row 0 normal, row 1 abnormal.

        Raises:
            ValueError: The prompt token ids are not set.
        """
        config = self.config
        if config.normal_prompt_token_ids is None:
            raise ValueError(
                "`config.normal_prompt_token_ids` is not set: build the model with "
                "`AnomalyCLIPForAnomalySegmentation.from_clip` (which tokenises the prompts), or set "
                "`normal_prompt_token_ids` and `abnormal_prompt_token_ids`."
            )
        token_embedding = self.clip.text_model.embeddings.token_embedding
        sequences = []
        for token_ids, vectors in (
            (config.normal_prompt_token_ids, self.normal_prompt_vectors),
            (config.abnormal_prompt_token_ids, self.abnormal_prompt_vectors),
        ):
            embeds = token_embedding(torch.tensor(token_ids, device=vectors.device))
            sequences.append(torch.cat([embeds[:1], vectors.to(embeds.dtype), embeds[1:]]))
        lengths = torch.tensor([len(sequence) for sequence in sequences], device=sequences[0].device)
        # pad to one length; positions after the end token never reach it (causal attention)
        inputs_embeds = nn.utils.rnn.pad_sequence(sequences, batch_first=True)
        deep_prompts = self.deep_prompts
        if config.official_fp16_prompts:
            deep_prompts = official_fp16_copies(deep_prompts, len(sequences))
        text = encode_prompted_text(
            self.clip.text_model, self.clip.text_projection, inputs_embeds, lengths - 1, deep_prompts
        )
        return F.normalize(text, dim=-1)

    # ------------------------------------------------------------------ step 2: global and DPAM patch embeddings

    def image_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The global embedding (original path) and the patch embeddings of every feature layer (DPAM path).

        Args:
            pixel_values: `(batch_size, 3, H, W)`, CLIP-normalised images.

        Returns:
            `(global_embedding, patch_embeddings)`: `(batch_size, projection_dim)` and one
            `(batch_size, h * w, projection_dim)` per feature layer, none normalised.
        """
        vision_model = self.clip.vision_model
        hidden_states = vision_model.pre_layrnorm(self._embed_patches(pixel_values))
        dpam_states = None
        taps = []
        for index, layer in enumerate(vision_model.encoder.layers, start=1):
            if index >= self.config.dpam_start_layer:
                base = hidden_states if dpam_states is None else dpam_states
                dpam_states = base + value_value_attention(layer, hidden_states)
            hidden_states = layer(hidden_states, None)
            if index in self.config.feature_layers:
                taps.append(hidden_states if dpam_states is None else dpam_states)
        # as the official code: the class token is projected without `post_layernorm`, the patch tokens with it
        global_embedding = self.clip.visual_projection(hidden_states[:, 0])
        patch_embeddings = [self.clip.visual_projection(vision_model.post_layernorm(tap[:, 1:])) for tap in taps]
        return global_embedding, patch_embeddings

    def reference_features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """What the reference memory stores and compares: the DPAM patch embeddings of every feature layer,
        L2-normalised (as the patches are compared with the text).

        Args:
            pixel_values: `(batch_size, 3, H, W)`, CLIP-normalised.

        Returns:
            One `(batch_size, h * w, projection_dim)` per feature layer.
        """
        pixel_values = check_pixel_values(pixel_values, self.config.vision_config.patch_size, self.deep_prompts.dtype)
        with torch.no_grad():
            return [F.normalize(patches, dim=-1) for patches in self.image_features(pixel_values)[1]]

    def _embed_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch and class embeddings plus positions; the position grid is resized bilinearly to the input's grid.

        transformers' `interpolate_pos_encoding` resizes bicubically; the official code bilinearly
        (`align_corners=False`), which this follows.

        Args:
            pixel_values: `(batch_size, 3, H, W)`.

        Returns:
            `(batch_size, 1 + h * w, vision_hidden_size)`.
        """
        embeddings = self.clip.vision_model.embeddings
        patches = embeddings.patch_embedding(pixel_values.to(embeddings.patch_embedding.weight.dtype))
        height, width = patches.shape[-2:]
        patches = patches.flatten(2).transpose(1, 2)
        class_token = embeddings.class_embedding.expand(patches.shape[0], 1, -1)
        positions = embeddings.position_embedding.weight
        side = round((positions.shape[0] - 1) ** 0.5)
        patch_positions = positions[1:]
        if (height, width) != (side, side):
            grid = patch_positions.reshape(1, side, side, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
            patch_positions = grid.permute(0, 2, 3, 1).reshape(height * width, -1)
        return torch.cat([class_token, patches], dim=1) + torch.cat([positions[:1], patch_positions])

    # ------------------------------------------------------------------ forward: steps 1 to 5

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        categories: list[str | None] | None = None,
        decide: bool = True,
    ) -> AnomalyCLIPOutput:
        """Anomaly maps and image scores of a batch, the loss when masks are given, decisions when calibrated.

        Args:
            pixel_values: `(batch_size, 3, H, W)`, CLIP-normalised images (518 x 518 in the published setting);
                H and W multiples of the patch size.
            labels: `(batch_size, H, W)` or `(batch_size, 1, H, W)`, optional. Ground-truth masks at the input
                resolution with values in [0, 1], binarised at 0.5 as the official code does; an image is
                anomalous when its mask is. When given, `loss` is returned.
            categories: One category name (or None) per image, optional: an image whose category has its own
                calibrated thresholds (`config.category_thresholds`) is decided with those.
            decide: With calibrated thresholds, also return `pred_label`, `pred_mask` and `pred_score_normalized`
                (default). False leaves them None, for callers that decide per image themselves (`clipada predict`
                turns a NaN score into that image's ERROR row instead of an exception for the whole batch).

        Returns:
            [`AnomalyCLIPOutput`], whose `loss` is `None` without `labels`, and whose decisions are `None` without
            calibrated thresholds or with `decide=False`.

        Raises:
            ValueError: `pixel_values` or `labels` of the wrong shape, dtype or value range.
            NonFiniteScoreError: A `ValueError`: with decisions, a score or map value is NaN or infinite (a damaged
                model or input), which decides nothing.
        """
        config = self.config
        pixel_values = check_pixel_values(pixel_values, config.vision_config.patch_size, self.deep_prompts.dtype)
        batch_size, _, height, width = pixel_values.shape
        grid = (height // config.vision_config.patch_size, width // config.vision_config.patch_size)

        # step 1: the normal and abnormal text embeddings (the only part with a gradient)
        text = self.text_embeddings()

        # step 2: the frozen vision tower, original path and DPAM path
        with torch.no_grad():
            global_embedding, patch_embeddings = self.image_features(pixel_values)

        # step 3: cosine similarities / temperature, for the image and for every patch of every feature layer
        temperature = config.similarity_temperature
        logits = (F.normalize(global_embedding, dim=-1) @ text.T).float() / temperature
        layer_logits = tuple(
            ((F.normalize(patches, dim=-1) @ text.T).float() / temperature)
            .transpose(1, 2)
            .reshape(batch_size, 2, *grid)
            for patches in patch_embeddings
        )
        layer_probabilities = [layer.softmax(dim=1) for layer in layer_logits]

        # step 4: the loss on the maps upsampled to the masks' resolution
        loss = None
        if labels is not None:
            masks = binary_masks(labels, batch_size, self.deep_prompts.device)
            upsampled = [
                F.interpolate(probabilities, size=(height, width), mode="bilinear", align_corners=False)
                for probabilities in layer_probabilities
            ]
            loss = anomalyclip_loss(logits, upsampled, masks, config.pixel_loss_weight)

        # step 5: the pixel anomaly map and the image score
        # the mean over the layers, so that every family's map is a probability (the official code sums them: the
        # same map times len(feature_layers), identical with its default single layer)
        patch_map = sum((p[:, 1] + 1 - p[:, 0]) / 2 for p in layer_probabilities) / len(layer_probabilities)
        anomaly_map = upsample_and_smooth(patch_map, (height, width), config.smoothing_sigma, border="symmetric")
        pred_score = logits.softmax(dim=-1)[:, 1]
        if len(self.reference_memory):  # few-shot: fused with the reference memory's map
            features = [F.normalize(patches, dim=-1) for patches in patch_embeddings]
            scale = config.reference_distance_scale
            memory_map = memory_patch_map(self.reference_memory, features, categories, grid, scale)
            memory_map = upsample_and_smooth(
                memory_map.to(anomaly_map.dtype), (height, width), config.smoothing_sigma, border="symmetric"
            )
            anomaly_map = fuse_maps(anomaly_map, memory_map, config.reference_fusion)
            pred_score = score_with_global(pred_score, memory_map)
        outputs = AnomalyCLIPOutput(
            loss=loss, logits=logits, layer_logits=layer_logits, anomaly_map=anomaly_map, pred_score=pred_score
        )
        if config.has_thresholds and decide:
            image_threshold, pixel_threshold = per_image_thresholds(self.config, categories, batch_size)
            outputs.pred_label, outputs.pred_mask = apply_thresholds(
                anomaly_map, pred_score, image_threshold, pixel_threshold
            )
            outputs.pred_score_normalized = normalize_scores(pred_score, image_threshold)
        return outputs

    def train(self, mode: bool = True) -> "AnomalyCLIPForAnomalySegmentation":
        """Sets the head's training mode; the frozen CLIP stays in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self


def official_fp16_copies(deep_prompts: torch.Tensor, num_sequences: int) -> torch.Tensor:
    """The deep tokens as the official text layers insert them: one copy per sequence, rounded to float16 and back.

    The official code expands the tokens over the sequences, then casts them (`.half()`): every copy's value is
    rounded, and in the backward pass every copy's gradient is rounded to float16 before the copies are summed.

    Args:
        deep_prompts: `(depth - 1, n, width)`.
        num_sequences: How many sequences the tokens go into.

    Returns:
        `(depth - 1, num_sequences, n, width)`, in `deep_prompts`' dtype.
    """
    copies = deep_prompts[:, None].expand(-1, num_sequences, -1, -1)
    return copies.to(torch.float16).to(deep_prompts.dtype)


def value_value_attention(layer: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """DPAM's attention of one CLIP encoder layer: softmax(v v^T * scale) v through the layer's own projections.

    Args:
        layer: A `CLIPEncoderLayer`.
        hidden_states: `(batch_size, tokens, hidden_size)`, the layer's input (before `layer_norm1`).

    Returns:
        `(batch_size, tokens, hidden_size)`, after the output projection (to be added to the residual).
    """
    attention = layer.self_attn
    batch_size, tokens, _ = hidden_states.shape
    values = attention.v_proj(layer.layer_norm1(hidden_states))
    values = values.view(batch_size, tokens, attention.num_heads, attention.head_dim).transpose(1, 2)
    mixed = F.scaled_dot_product_attention(values, values, values, scale=attention.scale)
    return attention.out_proj(mixed.transpose(1, 2).reshape(batch_size, tokens, -1))


__all__ = ["AnomalyCLIPForAnomalySegmentation", "AnomalyCLIPOutput", "AnomalyCLIPPreTrainedModel"]
